"""Lagging load reports for the cluster simulator (`ClusterSimulator(report_period_s=P)`,
`kvsaga sim --report-period P`): each simulated GPU reports to the router as a serving
replica does, a copy of its state taken every `P` seconds and stamped with the time it was
taken (`ReplicaStats.taken_at`), not its live state at every read.

Why: under Ray Serve the router reads each replica's report every `stats_period_s` (0.5 s),
so a steal can pass the router's room test on a report taken before the thief filled up,
and the import is then refused; and every decision weighs queues and memory up to a period
old. With live reports (the default, `None`) neither happens in the simulator. The default
stays live so that the figures recorded in bench/RESULTS.md stay comparable with new runs
(docs/simulator.md, "Several GPUs").

How: a report read at time `t` is the GPU's state at its last report tick at or before `t`
(`tick_at`). A GPU's ticks are `P` apart, each GPU with its own phase (`report_phase`:
deterministic, no RNG, so that the GPUs do not all refresh at once and runs stay
reproducible). Since a GPU's state at a tick is its state before its first change after
that tick, the GPU keeps it then (`LaggingReports.before_change`), and a GPU that has not
changed since the tick reports its current state, stamped with the tick (`read`).
Separate from kvsaga/sim/cluster.py, which runs the GPUs behind the router: this module is
only what the router is shown.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from kvsaga._validate import is_number
from kvsaga.routing import ReplicaStats

# The fractional part of the golden ratio: multiples of it modulo 1 spread the GPUs' report
# phases evenly over a period however many GPUs there are.
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def check_report_period(value, name: str = "report_period_s") -> float | None:
    """`value` as a report period in seconds: None or 0 (live reports, the default), or a
    finite number > 0. Raises ValueError naming `name` (a flag, on the command line)."""
    if value is None:
        return None
    if isinstance(value, bool) or not is_number(value) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number of seconds >= 0 (0: live "
                         f"reports), got {value!r}")
    return float(value) or None


def report_phase(index: int, period: float) -> float:
    """The offset in [0, period) of GPU `index`'s report ticks."""
    return (index * _GOLDEN) % 1.0 * period


class LaggingReports:
    """One GPU's reports: snapshots of its state (`ReplicaStats` stamped `taken_at`, with
    `session_tokens` copied, not a live view), oldest first, kept only while a read may
    still need them."""

    __slots__ = ("period", "phase", "_snapshots", "_changed_at")

    def __init__(self, period: float, phase: float) -> None:
        self.period = period
        self.phase = phase
        self._snapshots: list[ReplicaStats] = []
        # The latest time the GPU's state changed (-inf: never). Changes come in time order
        # but for the loop's look-ahead (a routing may act at a later time than a GPU's
        # next action), so this is their max: a snapshot then errs on the old side.
        self._changed_at = -math.inf

    def tick_at(self, t: float) -> float:
        """The GPU's last report tick at or before `t`."""
        return self.phase + math.floor((t - self.phase) / self.period) * self.period

    def before_change(self, t: float, now: float, build: Callable[[float], ReplicaStats]) -> None:
        """The GPU's state is about to change at `t` (`now`: the router's clock). If a tick
        passed since its last change, the state as it stands is the state at that tick: it
        is kept, `build(tick)`, for the reads of that tick to come."""
        self._keep_tick(self.tick_at(t), build)
        self._changed_at = max(self._changed_at, t)
        self._forget_before(self.tick_at(now))

    def read(self, now: float, build: Callable[[float], ReplicaStats]) -> ReplicaStats:
        """The report the router reads at `now`: the state at the GPU's last tick at or
        before `now`. Reads come at the router's clock, which never steps back, so older
        snapshots are dropped."""
        tick = self.tick_at(now)
        self._keep_tick(tick, build)
        self._forget_before(tick)
        return self._snapshots[0]

    def _keep_tick(self, tick: float, build: Callable[[float], ReplicaStats]) -> None:
        """Keep the state at `tick` if the GPU has not changed since and it is not kept."""
        if self._changed_at <= tick and (not self._snapshots
                                         or self._snapshots[-1].taken_at < tick):
            self._snapshots.append(build(tick))

    def _forget_before(self, tick: float) -> None:
        """Drop the snapshots no read at `tick` or later needs: all before the latest one
        taken at or before `tick`."""
        snaps = self._snapshots
        drop = 0
        while drop + 1 < len(snaps) and snaps[drop + 1].taken_at <= tick:
            drop += 1
        del snaps[:drop]
