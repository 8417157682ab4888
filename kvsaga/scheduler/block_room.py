"""The block-level check of the `workflow` scheduler: whether the pool can take a waiting
step now (its first chunk, and with steps running its whole prompt and some decode headroom
beside theirs), after the session-level gate (`kvsaga.scheduler.working_set_gate`) for a
session not admitted yet.

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from it by concept: it
reads the pool, the running steps and `reserve_decode_tokens`, and records why a step was
held back (`kvsaga.scheduler.wait_causes`).
"""

from __future__ import annotations

from typing import Any

from kvsaga.manager import KVCacheManager, StepLookup
from kvsaga.scheduler.base import check_choice

# One block more of headroom in the reserve check for a step that reuses its session's
# retained partial tail. Until session 41 `StepLookup.blocks_to_admit` counted that tail's
# block twice (as cached and as not hit); every `--fit` round of this scheduler ran with the
# extra block in this check, and without it the workflow scheduler recomputed 1.8x the
# tokens on tests/sim's thrash trace (77,011 -> 138,478; fcfs+lru 226,936). The pool check
# above, which admits a first chunk, reads the corrected count; this check keeps the
# headroom the fitted rules were measured with, as a named slack rather than a miscount,
# until a refit weighs it.
RETAINED_TAIL_SLACK = 1

# What the host tier adds to the room for the admitted working sets (`tiers_room`):
# "none" (the GPU tier's blocks alone), "beyond_gpu" (the host's blocks beyond the GPU's:
# max(GPU, host)) or "all" (GPU + host). Why "beyond_gpu" (session 57, issue 10): the host
# tier is inclusive (a block loaded back keeps its host copy, and every GPU victim is
# offered one), so the two tiers are only sure to hold max(GPU, host) distinct blocks. Under
# "all", the rule until then, a 2G tier beside 4G of GPU made workflow+lru recompute 213,942
# tokens against 126,209 without it (the swe trace of docs/scheduler.md, "The host tier's
# room"): the gate admitted sessions whose running steps evicted the paused contexts, and
# the host tier dropped them before they came back. On the fit seeds with tiers of 0.5x to
# 4x the GPU's, "all" recomputed more than no tier in 41 of 216 (seed, point, size) cases,
# "beyond_gpu" in 3 (bench/scheduling_host.py; the numbers are in that section).
HOST_ROOMS = ("none", "beyond_gpu", "all")
HOST_ROOM = "beyond_gpu"


def tiers_room(manager: KVCacheManager, host_room: str) -> int:
    """Blocks the admitted working sets may fill (`capacity`) under `host_room` (one of
    `HOST_ROOMS`; anything else raises ValueError naming it)."""
    rule = check_choice("host_room", host_room, HOST_ROOMS)
    gpu, host = manager.num_gpu_blocks, manager.num_host_blocks
    if rule == "all":
        return gpu + host
    return max(gpu, host) if rule == "beyond_gpu" else gpu


class BlockRoom:
    """The pool's room for a waiting step (see the module docstring)."""

    def _fits(self, req: Any, lookup: StepLookup, end: int, now: float) -> bool:
        available = self.manager.pool.num_available
        self._pool_need = lookup.blocks_to_admit(end)
        if self._pool_need > available:
            self._held_back("pool")
            return False
        if req.session_id not in self.sessions and not self._session_fits(req, lookup, now):
            return False
        if self.running and self.reserve_decode_tokens:
            # The whole prompt and some decode headroom, for it and for every running step:
            # admitting what the pool cannot carry to completion only defers a preemption.
            # With nothing running the first chunk suffices (progress is guaranteed).
            full = lookup.blocks_to_admit(self._reserve_target(req, req.num_tokens))
            full += RETAINED_TAIL_SLACK if lookup.tail_tokens else 0
            if full + self._running_reserve() > available:
                self._held_back("reserve")
                return False
        return True

    def _reserve_target(self, req: Any, context: int) -> int:
        """Tokens a step holds after `reserve_decode_tokens` more decode tokens (never past
        its output limit)."""
        last = req.max_num_tokens - 1  # the last output is not fed back
        return max(context, min(context + self.reserve_decode_tokens, last))

    def _running_reserve(self) -> int:
        """Blocks the running steps will take soon: the rest of each prompt and its next
        `reserve_decode_tokens` decode tokens."""
        bs = self.manager.block_size
        sessions = self.manager.sessions
        total = 0
        for r in self.running:
            held = len(sessions[r.session_id].block_ids)
            total += max(0, -(-self._reserve_target(r, r.num_tokens) // bs) - held)
        return total
