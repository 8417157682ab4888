"""What the connector's session gate did to each session on bench/vllm_scheduler_replay.py's
simulated clock: every admission (and why), demotion and step finish, in time order.

    VENV/bin/python bench/vllm_gate_timeline.py --model-dir DIR --seeds 0 \
        --policies ttl+sched --sessions 10 --token-scale 0.1 --time-scale 2 \
        --max-tool-s 7200 --kv-fraction 0.15 --step-s 0.025 --token-s 0.00065

`--breakdown` says how long an arm's tasks waited and `vllm_rebuild_causes.py` which
releases cost rebuilds; this says when, per session, so two arms (or settings, through
`--connector-extra`) can be read side by side to the first decision where they part. One
line per session: `T:EVENT(TOKENS)` with EVENT `A` + the admission reason (`direct`: at its
first probe; `fit`, `room`, `waited`, `idle`, `max_wait`: `SessionGate.admitted_by`'s),
`demote` (the shrink, an expiry or a deadline; TOKENS: the context it held) or `f` (a step
finished; TOKENS: the context then). The replay is vllm_scheduler_replay's `replay`,
unchanged: the recording only wraps the gate's methods.
"""

from __future__ import annotations

import contextlib
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class GateTimeline:
    """The gate's events per session (plain bookkeeping, free of vLLM)."""

    def __init__(self) -> None:
        self.events: dict[str, list[tuple[float, str, int]]] = defaultdict(list)
        self.now = 0.0  # the clock of the latest call that gave one

    def add(self, sid: str | None, event: str, tokens: int) -> None:
        if sid is not None:
            self.events[sid].append((self.now, event, tokens))

    def row(self, seed: int) -> str:
        lines = [f"seed {seed}:"]
        for sid in sorted(self.events, key=lambda s: (len(s), s)):
            lines.append(f"  {sid} " + " ".join(f"{t:.1f}:{e}({n})"
                                                for t, e, n in self.events[sid]))
        return "\n".join(lines)


@contextlib.contextmanager
def recording(rec: GateTimeline) -> Iterator[None]:
    """Wrap SessionGate's `expire`, `admit`, `_demote` and `finished` to feed `rec` (restored
    after). `expire` sets the clock too: the connector asks it before `admit`, so an expiry's
    demotion would otherwise carry the previous call's time."""
    from kvsaga.integrations.vllm.gate import SessionGate

    saved = {n: getattr(SessionGate, n) for n in ("expire", "admit", "_demote", "finished")}

    def expire(self, now: float, *a: Any, **kw: Any) -> list[str]:
        rec.now = now
        return saved["expire"](self, now, *a, **kw)

    def admit(self, sid: str, workflow: str, num_tokens: int, *a: Any, **kw: Any) -> bool:
        rec.now = a[1] if len(a) > 1 else kw["now"]
        was, before = sid in self.sessions, dict(self.admitted_by)
        ok = saved["admit"](self, sid, workflow, num_tokens, *a, **kw)
        if ok and not was:
            new = [r for r, n in self.admitted_by.items() if n != before.get(r, 0)]
            rec.add(sid, "A" + (new[0] if new else "direct"), num_tokens)
        return ok

    def demote(self, sid: str) -> None:
        rec.add(sid, "demote", self.sessions[sid].context)
        saved["_demote"](self, sid)

    def finished(self, request_id: str, sid: str | None, context_tokens: int, now: float,
                 *a: Any) -> list[str]:
        rec.now = now
        out = saved["finished"](self, request_id, sid, context_tokens, now, *a)
        rec.add(sid, "f", context_tokens)
        return out

    try:
        SessionGate.expire, SessionGate.admit = expire, admit
        SessionGate._demote, SessionGate.finished = demote, finished
        yield
    finally:
        for name, fn in saved.items():
            setattr(SessionGate, name, fn)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.append(str(ROOT / "bench"))
    import vllm_scheduler_replay as replay_mod

    return replay_mod.rows_per_seed(
        argv, "The session gate's decisions per session, connector arm {arm}, "
        "--connector-extra {extra}:", "(T:EVENT(TOKENS); A+reason: admitted, demote, "
        "f: a step finished)", GateTimeline, recording)


if __name__ == "__main__":
    raise SystemExit(main())
