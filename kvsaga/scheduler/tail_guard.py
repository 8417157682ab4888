"""The tail guard of the `workflow` scheduler (`WorkflowScheduler(tail_wait_factor=...)`; off,
0, by default, opt-in: `--fit` round 9 chose 3, reverted because at web 4x load on half the
GPU it multiplies the p95 it targets by up to 3x, `bench/scheduling_fit.py --tail-guard-check`):
a bound on each session's total wait for admission, relative to its workflow's own time,
on top of the fixed bound of any single wait (`max_wait_s`, the reserve in
`kvsaga.scheduler.admission_order`).

Why (issue 10, thirteenth session, on the fit seeds 101-106; bench/RESULTS.md "Scheduling
(simulated)" has the figures): under the "predicted" admission order a new session, whose
context is small, is predicted cheaper than a demoted one, whose context is long, so new
sessions are admitted at once and the shrink makes room for them by demoting paused
sessions. The sessions that make the p95 TCT are those demoted two to five times, whose
waits to be admitted again add up to several times their own unloaded TCT, while no single
wait comes near `max_wait_s` (120 s), the only bound there was. A bound per wait cannot
see that; a bound on the sum can, and it has to scale with the workflow's time (a bfcl
session takes seconds, a swe one a minute or more).

The rule. For each workflow the guard learns D, the mean over its finished sessions of
their time in the system less their waits for admission (their service and tool time as
this scheduler served it). A session's budget is `factor` x D; each time one of its steps
queues for admission (a new session, or a demoted one's next step), that step's deadline
is its queueing time plus what is left of the budget (at most `max_wait_s`: the old bound
is kept). Until a session of the workflow has finished there is no budget and the deadline
is the old one, arrival + `max_wait_s`; with `factor` 0 the guard is off and every
deadline is that one. The reserve holds admission for the waiting session with the
earliest deadline once that deadline has passed (no backfill, no other tenant, no other
order; `admission_order`'s docstring), so no session waits past its deadline plus the
reserves of the sessions with earlier deadlines still waiting plus the time the admitted
sessions take to leave or fit it beside them; and as every deadline is at most
arrival + `max_wait_s`, the old bound holds as it was.

Deadlines are fixed when a step queues (what was learned later does not move them), so the
reserve's start is known in advance (`reserve_at`), as the simulator's wake-up and the
engine's refusal bound need. Only signals both executors have are read: the steps' queueing
and admission times and the sessions' ends, all through the scheduler's own calls.
"""

from __future__ import annotations

import math

from kvsaga.policy.bounded import TRACKED_WORKFLOWS, touch
from kvsaga.scheduler.base import check_float

MAX_LIVE = 1 << 20  # sessions tracked at once (a bound on memory; beyond it, no budget)


class WaitBudgets:
    """Each live session's start and summed admission waits, and each workflow's learned
    time in the system less those waits (see the module docstring)."""

    def __init__(self, factor: float, max_wait_s: float) -> None:
        self.factor = check_float("tail_wait_factor", factor, 0.0)
        if math.isinf(self.factor):
            raise ValueError("scheduler parameter tail_wait_factor must be finite, got inf")
        self.max_wait_s = max_wait_s
        self._start: dict[str, float] = {}  # live session -> its first step's queueing time
        self._waited: dict[str, float] = {}  # live session -> its admission waits so far
        self._served: dict[str, tuple[int, float]] = {}  # workflow -> (sessions, summed s)

    def served_s(self, workflow: str) -> float | None:
        """D: the workflow's mean time in the system less admission waits (None: no session
        of it finished yet)."""
        n, total = self._served.get(workflow, (0, 0.0))
        return total / n if n else None

    def deadline(self, session_id: str, workflow: str, arrival: float) -> float:
        """When the reserve may hold for a step of the session queued at `arrival`:
        arrival + the session's budget left, at most arrival + `max_wait_s`."""
        d = self.served_s(workflow) if self.factor else None
        if d is None:
            return arrival + self.max_wait_s
        left = max(0.0, self.factor * d - self._waited.get(session_id, 0.0))
        return arrival + min(self.max_wait_s, left)

    def admitted(self, session_id: str, arrival: float, now: float) -> None:
        """A step of the session queued at `arrival` was admitted at `now` (a session
        admission: a new session, or a demoted one admitted again). Off: nothing kept."""
        if not self.factor:
            return
        if session_id not in self._start:
            if len(self._start) >= MAX_LIVE:
                return
            self._start[session_id] = arrival
        self._waited[session_id] = self._waited.get(session_id, 0.0) + max(0.0, now - arrival)

    def ended(self, session_id: str, workflow: str, now: float) -> None:
        """The session ended at `now`: learn its time less its waits (off: nothing)."""
        if not self.factor:
            return
        start = self._start.pop(session_id, None)
        waited = self._waited.pop(session_id, 0.0)
        if start is not None:
            # (the TRACKED_WORKFLOWS most recently ended workflows: kvsaga/policy/bounded.py)
            n, total = touch(self._served, workflow, lambda: (0, 0.0), TRACKED_WORKFLOWS)
            self._served[workflow] = (n + 1, total + max(0.0, now - start - waited))

    def forget(self, session_id: str) -> None:
        """The session left without ending here (nothing is learned from it)."""
        self._start.pop(session_id, None)
        self._waited.pop(session_id, None)
