"""Which of the connector's decisions cost the rebuilds on bench/vllm_scheduler_replay.py's
simulated clock: each block a session's step computes again is charged to what last took
it out of retention.

    VENV/bin/python bench/vllm_rebuild_causes.py --model-dir DIR --seeds 0,1,2,3,4 \
        --policies ttl --sessions 10 --token-scale 0.1 --time-scale 2 --max-tool-s 7200 \
        --kv-fraction 0.15 --step-s 0.025 --token-s 0.00065

`--breakdown` says how much of an arm's busy time is rebuild; this says why. A retained
session loses blocks in six ways, each a decision of the connector or its gate:

- `shrink`: at a step's finish the gate's admitted contexts outgrew the blocks and it
  demoted the most recently admitted paused session (`SessionGate._shrink`); the connector
  releases the demoted session's blocks to vLLM's LRU;
- `expired`: a paused session's pause ran past its workflow's observed quantile
  (`SessionGate.expire`, before an admission probe);
- `shrink:kept`: as `shrink`, with the connector's `keep_demoted`: the demoted session's
  blocks were kept, then released (first, before the policy's choice) when memory was needed;
- `pressure:admit`, `pressure:headroom`, `pressure:preempt`: the connector released retained
  blocks in the policy's order for a waiting request's allocation, for the next step's
  decode blocks, or instead of a preemption (`_release_until`'s reasons).

When a session's next step is allocated, the full blocks of its previous context that vLLM's
prefix lookup no longer found are its rebuilt blocks, charged to the cause of its releases
since that finish (several different ones: `mixed`; none: `unreleased`, which LRU eviction of
a block it never retained, e.g. a step that rode along, explains). Shrink demotions are also
counted by how the demoted session had been admitted (`SessionGate.admitted_by`'s reasons;
`direct`: at its first probe, without waiting).
The replay itself is bench/vllm_scheduler_replay.py's `replay`, unchanged: the counting only
wraps the connector's methods, so every figure equals that script's for the same arguments.
"""

from __future__ import annotations

import contextlib
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CAUSES = ("shrink", "shrink:kept", "expired", "pressure:admit", "pressure:headroom",
          "pressure:preempt", "mixed", "unreleased")


class RebuildCauses:
    """The bookkeeping, free of vLLM: releases per session since its last finish, and the
    blocks its next step did not find again, charged to them."""

    def __init__(self) -> None:
        self.released: Counter[str] = Counter()  # cause -> blocks released
        self.rebuilt: Counter[str] = Counter()  # cause -> blocks computed again
        self.demoted_by: Counter[str] = Counter()  # admission reason of shrink-demoted
        self._since: dict[str, set[str]] = {}  # session -> causes since its last finish
        self._context: dict[str, int] = {}  # session -> full blocks at its last finish
        self._admitted: dict[str, str] = {}  # session -> how the gate admitted it last

    def finished(self, sid: str, context_blocks: int) -> None:
        """A step of `sid` finished with `context_blocks` full blocks of context."""
        self._context[sid] = context_blocks
        self._since[sid] = set()

    def release(self, sid: str, cause: str, blocks: int) -> None:
        """`blocks` retained blocks of `sid` went back to vLLM for `cause`."""
        if blocks > 0:
            self.released[cause] += blocks
            self._since.setdefault(sid, set()).add(cause)

    def admitted(self, sid: str, reason: str) -> None:
        self._admitted[sid] = reason

    def demoted(self, sid: str) -> None:
        """The gate's shrink demoted `sid`."""
        self.demoted_by[self._admitted.get(sid, "unknown")] += 1

    def allocated(self, sid: str, hit_blocks: int) -> None:
        """`sid`'s next step is allocated with `hit_blocks` full blocks found in the prefix
        cache: what its last context had beyond them is rebuilt."""
        had = self._context.pop(sid, None)
        if had is None:
            return
        miss = max(0, had - hit_blocks)
        causes = self._since.pop(sid, set())
        if miss:
            cause = (next(iter(causes)) if len(causes) == 1
                     else "mixed" if causes else "unreleased")
            self.rebuilt[cause] += miss

    def row(self, seed: int) -> str:
        """One markdown row: rebuilt blocks in total and by cause (released beside them),
        and the shrink's demotions by admission reason."""
        total = sum(self.rebuilt.values())
        cells = [f"{self.rebuilt[c]} ({self.released[c]})" if c in self.released
                 else str(self.rebuilt[c]) for c in CAUSES]
        demoted = ", ".join(f"{k} {v}" for k, v in sorted(self.demoted_by.items())) or "-"
        return f"| {seed} | {total} | " + " | ".join(cells) + f" | {demoted} |"


HEADER = ("| seed | rebuilt blocks | " + " | ".join(CAUSES) + " | shrink demotions by admission |\n"
          "|---:|---:|" + "---:|" * len(CAUSES) + "---|")


@contextlib.contextmanager
def counting(causes: RebuildCauses) -> Iterator[None]:
    """Wrap KVSagaConnector's and SessionGate's methods to feed `causes` (restored after)."""
    from kvsaga.integrations.vllm import connector as conn
    from kvsaga.integrations.vllm import gate as gate_mod

    cls, gcls = conn.KVSagaConnector, gate_mod.SessionGate
    saved = {name: getattr(cls, name) for name in (
        "_release_until", "_release_session", "get_num_new_matched_tokens",
        "request_finished", "_retain", "_end_session", "update_state_after_alloc",
        "reset_cache")}
    gsaved = {name: getattr(gcls, name) for name in ("admit", "_demote", "_shrink")}
    context: list[str | None] = [None]  # the cause a `_release_session` call stands for
    shrinking = [False]

    def with_cause(name: str, cause: str | None):
        def wrapped(self, *a, **kw):
            outer, context[0] = context[0], cause
            try:
                return saved[name](self, *a, **kw)
            finally:
                context[0] = outer
        return wrapped

    def release_until(self, free_wanted: int, now: float, reason: str) -> int:
        before = {sid: len(b) for sid, b in self.holds.items()}
        kept = set(self._demoted)  # `keep_demoted`: these go first, whatever the reason
        out = saved["_release_until"](self, free_wanted, now, reason)
        for sid, n in before.items():
            causes.release(sid, "shrink:kept" if sid in kept else f"pressure:{reason}",
                           n - len(self.holds.get(sid, ())))
        return out

    def release_session(self, sid: str) -> None:
        if context[0] is not None:
            causes.release(sid, context[0], len(self.holds.get(sid, ())))
        saved["_release_session"](self, sid)

    def matched(self, request: Any, num_computed_tokens: int):
        out = with_cause("get_num_new_matched_tokens", "expired")(
            self, request, num_computed_tokens)
        info = self._steps.get(request.request_id)
        if out[0] is not None and info is not None:
            causes.allocated(info.session_id, num_computed_tokens // self.block_size)
        return out

    def finished(self, request: Any, block_ids: list[int]):
        info = self._step(request)
        if info is not None and not info.hint.last_step:
            causes.finished(info.session_id, request.num_tokens // self.block_size)
        return with_cause("request_finished", "shrink")(self, request, block_ids)

    def admit(self, sid: str, *a, **kw) -> bool:
        before, was = dict(self.admitted_by), sid in self.sessions
        ok = gsaved["admit"](self, sid, *a, **kw)
        if ok and not was:
            new = [r for r, n in self.admitted_by.items() if n != before.get(r, 0)]
            causes.admitted(sid, new[0] if new else "direct")
        return ok

    def shrink(self) -> list[str]:
        shrinking[0] = True
        try:
            return gsaved["_shrink"](self)
        finally:
            shrinking[0] = False

    def demote(self, sid: str) -> None:
        if shrinking[0]:
            causes.demoted(sid)
        gsaved["_demote"](self, sid)

    patches = {"_release_until": release_until, "_release_session": release_session,
               "get_num_new_matched_tokens": matched, "request_finished": finished,
               "_retain": with_cause("_retain", None),  # its own re-retention: no loss
               "_end_session": with_cause("_end_session", None),
               "update_state_after_alloc": with_cause("update_state_after_alloc", None),
               "reset_cache": with_cause("reset_cache", None)}
    try:
        for name, fn in patches.items():
            setattr(cls, name, fn)
        gcls.admit, gcls._demote, gcls._shrink = admit, demote, shrink
        yield
    finally:
        for name, fn in saved.items():
            setattr(cls, name, fn)
        for name, fn in gsaved.items():
            setattr(gcls, name, fn)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.append(str(ROOT / "bench"))
    import vllm_scheduler_replay as replay_mod

    return replay_mod.rows_per_seed(
        argv, "Rebuilt blocks of the connector arm {arm} by what released them (released "
        "blocks beside each cause):", HEADER, RebuildCauses, counting)


if __name__ == "__main__":
    raise SystemExit(main())
