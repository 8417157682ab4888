"""Where `LLMEngine.step()` spends its time: by kind of step and by phase, cumulatively.

A step is one of four kinds, by the chunks it ran: "decode" (every chunk generates past the
prompt), "prefill" (none does), "mixed" (both), "empty" (the scheduler ran nothing: every
request waited for admission or for blocks). Its wall time splits into four phases:
"schedule" (the manager's tick and the scheduler's decision), "transfer" (starting and
waiting for host-tier copies), "forward" (the model runner: forward pass and sampling) and
"output" (detokenizing, stop checks, finishing requests).

The counters only grow; read them twice and subtract to get an interval's split
(kvsaga-serve exports them on /metrics as `kvsaga:engine_*`). Durations are wall seconds
from `time.perf_counter`, whatever clock the engine schedules by.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("decode", "prefill", "mixed", "empty")
PHASES = ("schedule", "transfer", "forward", "output")


def step_kind(num_decode: int, num_prefill: int) -> str:
    """The kind of a step that ran `num_decode` decode chunks and `num_prefill` prefill
    chunks."""
    if num_decode < 0 or num_prefill < 0:
        raise ValueError(f"chunk counts must be >= 0, got {num_decode} and {num_prefill}")
    if num_decode and num_prefill:
        return "mixed"
    if num_decode:
        return "decode"
    return "prefill" if num_prefill else "empty"


@dataclass(frozen=True, slots=True)
class StepTimes:
    """Cumulative figures per kind: `steps`, `seqs` (chunks run, so `seqs / steps` is the
    mean batch), `tokens` (tokens computed) and `seconds[kind][phase]`."""

    steps: dict[str, int]
    seqs: dict[str, int]
    tokens: dict[str, int]
    seconds: dict[str, dict[str, float]]

    def total_seconds(self, kind: str | None = None) -> float:
        """Wall seconds in steps of `kind` (all kinds if None)."""
        kinds = KINDS if kind is None else (kind,)
        return sum(sum(self.seconds[k].values()) for k in kinds)

    def minus(self, before: StepTimes) -> StepTimes:
        """The figures accumulated since `before` (an earlier reading of the same engine)."""
        return StepTimes(
            {k: self.steps[k] - before.steps[k] for k in KINDS},
            {k: self.seqs[k] - before.seqs[k] for k in KINDS},
            {k: self.tokens[k] - before.tokens[k] for k in KINDS},
            {k: {p: self.seconds[k][p] - before.seconds[k][p] for p in PHASES} for k in KINDS},
        )


@dataclass(slots=True)
class StepClock:
    """The engine's accumulator; `record` once per step, `read` for a frozen copy."""

    steps: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    seqs: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    tokens: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    seconds: dict[str, dict[str, float]] = field(
        default_factory=lambda: {k: dict.fromkeys(PHASES, 0.0) for k in KINDS})

    def record(self, kind: str, seqs: int, tokens: int, schedule: float, transfer: float,
               forward: float, output: float) -> None:
        if kind not in self.steps:
            raise ValueError(f"unknown step kind {kind!r}; expected one of {KINDS}")
        self.steps[kind] += 1
        self.seqs[kind] += seqs
        self.tokens[kind] += tokens
        s = self.seconds[kind]
        s["schedule"] += schedule
        s["transfer"] += transfer
        s["forward"] += forward
        s["output"] += output

    def read(self) -> StepTimes:
        return StepTimes(dict(self.steps), dict(self.seqs), dict(self.tokens),
                         {k: dict(v) for k, v in self.seconds.items()})
