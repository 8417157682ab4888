"""What the connector's session gate learns as a step's growth, split in two, per seed, on
bench/vllm_scheduler_replay.py's simulated clock: growth from one finish to the next (the
tool's observation plus the reply: what `growth_charge` "step" charges every admitted
session a step) against the reply alone (from the step's prompt to its finish: what
"remaining" charges a session whose step is queued or running).

    VENV/bin/python bench/vllm_growth_split.py --model-dir DIR --seeds 0,1,2,3,4 \
        --policies ttl --sessions 10 --token-scale 0.1 --time-scale 2 --max-tool-s 7200 \
        --kv-fraction 0.15 --step-s 0.025 --token-s 0.00065 \
        [--connector-extra '{"gate_args": {"growth_charge": "remaining"}}']

Why: the gate's growth tables keep moving means, which say nothing of the spread; this
records every sample `GateGrowth.finished` is given and prints their medians and means, and
the gate's admissions by reason (the replay's `admitted_*` counters), so a change of the
charge can be read as what it changes in admission. The replay is the script's `replay`,
unchanged: the recording only wraps `GateGrowth.finished` and `SessionGate.__init__`.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

HEADER = ("| seed | steps seen | step growth median | step growth mean | replies seen "
          "| reply median | reply mean | reply / step, medians | gate admissions |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---|")


class GrowthSplit:
    """The samples of one replay: finish-to-finish growth and the reply, in tokens."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.replies: list[int] = []
        self.admitted: dict[str, int] = {}

    def finished(self, prompt: int, context: int, last_finish: int | None) -> None:
        """The same samples `GateGrowth.finished` feeds its two tables."""
        if last_finish is not None:
            self.steps.append(context - last_finish)
        self.replies.append(max(context - prompt, 0))

    def row(self, seed: int) -> str:
        if not self.steps or not self.replies:
            raise ValueError(f"seed {seed}: the gate saw no finished step to split "
                             f"(is the arm a connector arm with its gate?)")
        sm, rm = statistics.median(self.steps), statistics.median(self.replies)
        ratio = f"{rm / sm:.2f}" if sm else "-"
        admitted = ", ".join(f"{k} {v}" for k, v in sorted(self.admitted.items())) or "-"
        return (f"| {seed} | {len(self.steps)} | {sm:g} | {statistics.fmean(self.steps):.1f} "
                f"| {len(self.replies)} | {rm:g} | {statistics.fmean(self.replies):.1f} "
                f"| {ratio} | {admitted} |")


@contextlib.contextmanager
def recording(split: GrowthSplit) -> Iterator[None]:
    """Feed `split` from the gate's growth samples and its admissions (restored after)."""
    from kvsaga.integrations.vllm import gate as gate_mod
    from kvsaga.integrations.vllm import gate_growth

    gcls, growth_cls = gate_mod.SessionGate, gate_growth.GateGrowth
    saved_finished, saved_init = growth_cls.finished, gcls.__init__
    gates: list[Any] = []

    def finished(self, workflow: str, prompt: int, context: int,
                 last_finish: int | None) -> None:
        split.finished(prompt, context, last_finish)
        saved_finished(self, workflow, prompt, context, last_finish)

    def init(self, *a, **kw) -> None:
        saved_init(self, *a, **kw)
        gates.append(self)

    growth_cls.finished, gcls.__init__ = finished, init
    try:
        yield
    finally:
        growth_cls.finished, gcls.__init__ = saved_finished, saved_init
        for g in gates:
            for reason, n in g.admitted_by.items():
                split.admitted[reason] = split.admitted.get(reason, 0) + n


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(ROOT))
    sys.path.append(str(ROOT / "bench"))
    import vllm_scheduler_replay as replay_mod

    return replay_mod.rows_per_seed(
        argv, "The gate's growth samples of the connector arm {arm} (connector extra "
        "{extra}), in tokens:", HEADER, GrowthSplit, recording)


if __name__ == "__main__":
    raise SystemExit(main())
