"""The session gate's yield to waiting sessions ranked ahead (`admission_order`
"predicted"): whether a session admissible now waits for ones ranked ahead of it.

A mixin of `SessionGate` (gate.py), split from it by concept. It reads the gate's admitted
sessions, its parameters, `_reason` and `_fits_with`, and the ranking of its `order`
(`gate_order.WaitingOrder`).

A probe walks the sessions ranked ahead of it, and most of them, in a long queue, cannot get
in. The prefix of the ranking whose sessions were all found unable to get in (before any was
let in) is kept between probes in `order.skip` with what it was found under, and a later probe
starts past it while that still holds (review s51, diffvgate finding 1: each yielding probe
walked them all, O(W) a probe and O(W^2) a step). Being unable to get in only gets more
certain as what a session is judged under shrinks, so the prefix holds while:
- the admitted sessions, their growth and the gate's parameters are the same (`_stamp`);
- no entry up to its last was ranked or replaced (`WaitingOrder._rank` drops it);
- vLLM's free blocks for them (`spare_blocks` + the probed step's allocation) are no more,
  or unknown (the room rule is not tried);
- the waiting sessions' total wait is no longer and the recompute price `token_s` no lower,
  or the reservation rule cannot fire (`reserve_wait_factor` None, `token_s` None or <= 0);
- none of them has waited `max_wait_s`. (Idleness is ruled out before the walk.)"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from kvsaga.integrations.vllm.gate_sessions import Admitted as _Admitted
from kvsaga.integrations.vllm.gate_sessions import alloc

if TYPE_CHECKING:
    from kvsaga.integrations.vllm.gate_order import Waiting


class GateYields:
    """Yielding to the waiting sessions ranked ahead (see the module docstring)."""

    def _yields(self, sid: str, new: _Admitted, mine: Waiting, now: float,
                spare_blocks: int | None, token_s: float | None) -> bool:
        """Whether `new` (session `sid`, admissible now) waits for sessions ranked ahead of it
        (`admission_order` "predicted", `gate_order`): those admissible now, let in greedily
        in rank order, would leave it no longer admissible. vLLM's free blocks for each are
        `spare_blocks` (`new`'s) corrected by the two steps' allocations, and each let in
        takes its allocation and a running request's block from the rest."""
        if self._admissible_anyway(mine.since, now):
            return False
        growth = self._growth.mean
        self.order.rank(growth)  # (drops a kept prefix that an entry ranked since changed)
        free = None if spare_blocks is None else spare_blocks + alloc(new, self.block_size)
        reserve = (self.reserve_wait_factor is not None and token_s is not None and token_s > 0)
        waited = self._waiting_since.waited(now) if reserve else None
        ctx = (self._stamp(), self.capacity, self.block_size, self.horizon_steps,
               self.room_admit, self.room_steps, self.room_fit_steps, self.shrink_horizon_steps,
               self.reserve_wait_factor, self.reserve_fit_steps)
        after, first_since = self._kept_prefix(ctx, free, reserve, token_s, waited, now)
        added: list[str] = []
        spare = spare_blocks
        judged = True  # (every entry so far was judged with none let in: the prefix goes on)
        try:
            for entry, w in self.order.ahead_entries(sid, mine, growth, after):
                if w is None:  # (`sid`'s own earlier entry: not judged, so the prefix ends)
                    judged = False
                    continue
                y = _Admitted(w.workflow, w.num_tokens, min(w.shared, w.num_tokens), now)
                y_spare = None if spare is None else spare + alloc(new, self.block_size) - \
                    alloc(y, self.block_size)
                y_fits = not self.sessions or self._fits_with(y)
                if self._reason(y, w.since, now, y_spare, token_s, y_fits) is None:
                    if judged:
                        after, first_since = entry, min(first_since, w.since)
                    continue
                judged = False
                added.append(f"\0ahead{len(added)}")  # never a session id vLLM sends
                self.sessions[added[-1]] = y
                if spare is not None:
                    spare -= alloc(y, self.block_size) + 1
                # each let in only makes `new` less admissible (idleness and max_wait, ruled
                # out above, ignore it): known at the first that shuts it out (s51 vgate 2)
                if self._reason(new, mine.since, now, spare, token_s,
                                self._fits_with(new)) is None:
                    return True
            return False
        finally:
            for key in added:
                del self.sessions[key]
            # (the stamp after the let-in sessions are gone again: the state they were judged in)
            ctx = (self._stamp(),) + ctx[1:]
            self.order.skip = None if after is None else (
                after, ctx, free, token_s if reserve else None, waited, first_since)

    def _kept_prefix(self, ctx: tuple, free: int | None, reserve: bool, token_s: float | None,
                     waited: float | None, now: float) -> tuple[tuple | None, float]:
        """The last entry of the kept prefix that still holds now (None: none) and the
        earliest wait's start among its sessions (see the module docstring)."""
        kept = self.order.skip
        if kept is None:
            return None, math.inf
        after, k_ctx, k_free, k_token_s, k_waited, k_since = kept
        if (k_ctx != ctx or (free is not None and (k_free is None or free > k_free))
                or (reserve and (k_token_s is None or token_s < k_token_s or waited > k_waited))
                or now - k_since >= self.max_wait_s):
            return None, math.inf
        return after, k_since
