"""When each admitted session's context is expected to leave the tiers: the wait side of the
`readmit_charge` "cost_leave" and "cost_leave_waits" trades (`WorkflowScheduler`), and, for
"cost_leave_waits", what a demoted session's wait to be admitted again costs on the churn
side.

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from the gate
(`kvsaga.scheduler.working_set_gate`) by concept: the gate decides whether a returning
demoted session is held for its whole context; this module predicts how long that hold
lasts. It reads the admitted sessions (`sessions`), the admission order's session-length
table and step counts (`_lengths`, `_steps_seen`, `_started`: `kvsaga.scheduler.
admission_order`), the Agent Execution Graph's mean length (`_graph`) and the demotion
marks (`_deferred`); it observes each step's admission and finish through
`_step_admitted` / `_step_done` / `_session_left` and passes them on.

The prediction, per admitted session (`_leave_at`): its context leaves when the session
ends, at its last finish (its first queueing before any) plus its expected remaining steps
(the admission order's mean residual length of its workflow's finished sessions, with the
graph's mean length as one prior session: `SessionLengths.remaining`) times its workflow's
learned step cycle (seconds from one finish of a session to its next: the tool pause, the
waits and the step; pooled over workflows until its own is seen); a paused session leaves
by its demotion deadline (`demote_at`, when `_demote` frees it for a waiting session that
does not fit) if that comes first. The wait for `over` blocks (`_leave_wait_s`) is when
enough admitted sessions' own contexts, in the predicted order, have left. No constant:
before any cycle is seen the wait is unknown (inf), so nothing is held.

Why (RESULTS "Scheduling", `--fit` rounds 20-23; fit seeds 101-106): holding a returning
demoted session for its whole context ends the re-admission churn where the pool binds
(round 10's "full": swe 1x 25% 1.77x -> 1.91x) and costs a wait of unknown length
elsewhere; round 22 priced the trade, and its wait (from the demotion deadlines, or from
the run's mean rate of ends) was the weak half: a mean over the run, where the wait is the
time to the next ends, spread over 0.05-33 s at swe seed 101. The churn priced as
recomputation alone (about a second a return or less) understates what a demotion costs
its victim: under "cost_leave_waits" each victim also pays the mean wait of a demoted
session to be admitted again, learned on the trace (`_readmit_wait_s`). Both opt-in: round
23 ranked "cost_leave" first (one p95 miss against two; web 1x 25% 2.39x -> 2.57x; bfcl 1x
25% unchanged at 1.40x) and the fit's non-thrash check rejected both (assistant 1x 25%: seed
104 tasks/h -2.5%, seed 105 SLO attainment 1.00 -> 0.90; there the holds raised the
re-admission waits while the demotions went on).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import Any

from kvsaga.policy.bounded import TRACKED_KINDS, TRACKED_WORKFLOWS, touch

READMIT_COST_LEAVE = "cost_leave"  # the wait from per-session leave predictions
READMIT_COST_LEAVE_WAITS = "cost_leave_waits"  # ... and the victims' re-admission waits
READMIT_LEAVE = (READMIT_COST_LEAVE, READMIT_COST_LEAVE_WAITS)


class _Means:
    """Per key and pooled (None), a running sum and count; the mean of a key falls back to
    the pooled one until the key has its own."""

    def __init__(self) -> None:
        self.sums: dict[Any, list[float]] = {}

    def observe(self, key: Any, value: float) -> None:
        for k in ((None,) if key is None else (key, None)):
            # Bounded: the most recently updated keys (a workflow, or a pair with a tool;
            # kvsaga/policy/bounded.py); the pooled None, updated every time, stays.
            s = touch(self.sums, k, lambda: [0.0, 0], TRACKED_WORKFLOWS + TRACKED_KINDS)
            s[0] += value
            s[1] += 1

    def mean(self, key: Any) -> float | None:
        s = self.sums.get(key) or self.sums.get(None)
        return None if not s else s[0] / s[1]


class LeaveForecast:
    """Per-session leave predictions and learned waits (see the module docstring)."""

    def _init_leave_forecast(self) -> None:
        self._last_finish: dict[str, float] = {}  # live session -> its last step's finish
        self._cycles = _Means()  # per workflow: seconds from a finish to the next finish
        self._readmit_waits = _Means()  # seconds a demoted session waited to be readmitted

    # -- observing (passed on to `AdmissionOrder`) ----------------------------------------
    def _step_admitted(self, req: Any, now: float) -> None:
        sid = req.session_id
        if sid in self._deferred and sid not in self.sessions:  # a demoted one, readmitted
            self._readmit_waits.observe(None, now - req.arrival)
        super()._step_admitted(req, now)

    def _step_done(self, req: Any, ended: bool, now: float) -> None:
        sid = req.session_id
        last = self._last_finish.pop(sid, None)
        if last is not None:
            self._cycles.observe(req.workflow, now - last)
        if not ended:
            self._last_finish[sid] = now
        super()._step_done(req, ended, now)

    def _session_left(self, sid: str) -> None:
        self._last_finish.pop(sid, None)
        super()._session_left(sid)

    # -- predicting -----------------------------------------------------------------------
    def _leave_at(self, sid: str, info: Any, now: float, restart: bool = False) -> float:
        """When admitted session `sid` (`info`) is expected to leave the tiers (>= now; inf
        before any step cycle was seen): see the module docstring. A session still admitted
        past its predicted end is predicted to leave now (the clamp); with `restart`
        (`readmit_charge` "room_returns_stay", `kvsaga.scheduler.room_swap`) its
        prediction restarts at `now` instead: its expected remaining steps, one learned
        cycle each, from now. Either way never earlier at a later `now`."""
        cycle = self._cycles.mean(info.workflow)
        if cycle is None:
            return math.inf
        done = self._steps_seen.get(sid, 0)
        graph = self._graph()
        prior = graph.mean_steps(info.workflow) if graph is not None else done + 1.0
        left = self._lengths.remaining(info.workflow, done, prior)
        anchor = self._last_finish.get(sid, self._started.get(sid, now))
        end = anchor + left * cycle
        if end < now:
            end = now + left * cycle if restart else now
        if not info.active:
            end = min(end, max(info.demote_at, now))
        return end

    def _leave_wait_s(self, over: float, now: float, restart: bool = False,
                      skip: Collection[str] = ()) -> float:
        """Seconds until `over` blocks of admitted sessions' own contexts are expected to
        have left the tiers (`_leave_at`, soonest first, `restart` passed on), the
        sessions in `skip` left out (`room_returns_queue`: a swap's victims, whose room
        is counted as freed already); inf when they never free that."""
        times = sorted((self._leave_at(sid, i, now, restart), self._own_blocks(i))
                       for sid, i in self.sessions.items() if sid not in skip)
        freed = 0
        for t, blocks in times:
            freed += blocks
            if freed >= over:
                return t - now
        return math.inf

    def _readmit_wait_s(self) -> float:
        """The mean wait of a demoted session to be admitted again, so far (0 before any)."""
        return self._readmit_waits.mean(None) or 0.0

    def _victims(self, paused: Sequence[str], over: float) -> int:
        """How many paused sessions the shrink demotes first (`_demotion_order`) until
        their own contexts free `over` blocks (as `_churn_s` counts them)."""
        freed = n = 0
        for sid in self._demotion_order(paused):
            if freed >= over:
                break
            freed += self._own_blocks(self.sessions[sid])
            n += 1
        return n

    def _leave_trade(self, paused: Sequence[str], over: float, now: float) -> bool:
        """Under "cost_leave" / "cost_leave_waits": whether the churn that admitting a
        returning session `over` blocks beyond the tiers is expected to cause (the
        victims' recomputation, `_churn_s`; under "cost_leave_waits" plus each victim's
        expected wait to be admitted again) exceeds the returning session's expected wait
        for that room (`_leave_wait_s`)."""
        churn = self._churn_s(paused, over)
        if self.readmit_charge == READMIT_COST_LEAVE_WAITS:
            churn += self._victims(paused, over) * self._readmit_wait_s()
        return churn > self._leave_wait_s(over, now)
