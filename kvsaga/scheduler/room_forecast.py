"""Forecasts of the gain of a swap (`readmit_charge` "room_returns_queue*", issue 10): how long
a refused, demoted step would wait for the room it lacks, and what the scheduler learns about
that forecast's error. Split from `kvsaga.scheduler.room_swap` (the swap's rule) by concept.

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), a base of `SwapPricing` (so of
`RoomSwap`). It reads the admitted sessions (`sessions`: each one's working set `blocks`,
context, `active`, `on_prompt`, `steps`, `tool`), the leave forecast (`LeaveForecast._leave_at`,
`_leave_wait_s`), the pause predictions (`RoomSwap._return_at`), the working-set charges
(`WorkingSetGate._working_set`, `_reply_tokens`, `_own_blocks`) and observes each step's
admission, finish and each session's leave (`_step_admitted`, `_step_done`, `_session_left`,
passed on). It also holds round 36's victim-side forecast ("room_returns_queue_leave",
`_victim_wait_leave_s`, `_stay_s`; reads `SwapPricing._victim_key`, `_waiting_steps`,
`RoomSwap._shrink_frees`), moved here from `room_swap` in session 33, unchanged.

"room_returns_queue_corrected" (session 32, `--fit` round 37): the gain times the
scheduler's own observed error of it (`_gain_factor`): every step priced and refused records
each pricing's (time, forecast gain); when the step is admitted otherwise than by a swap, the
mean over its pricings of ln(actual wait / forecast) is one observation of its workflow; a
step later swapped in is censored. The factor is exp(sum / (n + 1)), its workflow's until it
has one, else the pooled one; 1 before any. Not chosen (docs/scheduler.md, "Round 37").

"room_returns_queue_steps" (session 33, `--fit` round 38): the gain forecast read off what
frees the room, not off whole leaves alone. Why (RESULTS "Scheduling", session 33; fit seeds
101-106): round 37's probe (`bench/scheduling_gain_error.py`) found the default's gain
(`RoomSwap._swap_gain_s`: the seconds until `over` blocks of admitted sessions' own
contexts are predicted gone, a whole session leaving at a time) overstated 1.5-10x (medians)
where the overshoot is under 5% of the tiers and understated (0.67-0.91) above 20%. The load
the gate compares with the tiers is the admitted working sets (`_committed`): an admitted
session with a step queued or running is charged its context plus its step's predicted
growth, a paused one its context alone. So every step's finish frees its growth charge less
the reply it adds (`WorkflowScheduler.finish`: the session paused, charged its new context),
long before its session leaves; a small overshoot clears at the first such finish. And every
paused session's next step, queued at its return, takes its growth charge back
(`_queue_charge`) until that step's finish: under a large overshoot those returns eat the
room the leaves free. `_release_wait_s` forecasts the load's path from those events, per
admitted session:

- a step queued or running finishes at its admission plus its workflow's mean step time
  (admission to finish, learned on the trace: `_step_times`; now plus that for one still
  queued or past it), freeing its charge less its context after the finish (its context
  plus the mean reply, `_reply_tokens`); its session leaves at the restarted leave forecast
  (`_leave_at`, at least that finish), freeing the rest;
- a paused session returns at its predicted return (`_return_at`, if before its leave),
  taking its next step's growth charge (its queued working set, `_working_set`, less its
  context), which that step's finish, a step time later, frees again; it leaves (by its
  demotion deadline if sooner, as `_leave_at` reads it) freeing its context.

The wait is the first time the freed blocks, summed in time order, reach the overshoot (an
order statistic over those events, not a mean): 0 where it is not positive; inf where the
forecast never frees it or before any step cycle was seen. Before any step's time was seen,
or under `shrink_on` "contexts" (a measure that the growth does not enter), it is the
default's gain. No constant. Both executors learn the step times on their own clocks.

"room_returns_queue_shrink" (session 33, `--fit` round 39): the default's gain, and the
victims priced are those the shrink is forecast to demote, not those it would demote now.
Why (`bench/scheduling_swap_alone.py --point bfcl,1,0.25`, fit seeds, at the default's
swaps): of the victims the rule prices, 44-70% a seed came back before any demotion. The
swap demotes nobody itself: the shrink runs at the next step's finish, when that finish has
freed its growth charge and the paused sessions back by then are active (the shrink skips
them). `_victims_at_shrink` reads the shrink then, from the same forecast events. No
constant.

"room_returns_queue_cleared" (session 33, `--fit` round 40): round 39's victims, and a swap
whose overshoot the shrink at the next predicted finish cannot clear is refused. Why (round
39 at web 1x 25%, `bench/scheduling_swap_alone.py --swaps`, seeds 102, 106): swaps of
400-703-block overshoots whose victims come back at once left the load over the tiers with
nobody demoted; that overshoot is paid in evictions of cached blocks that neither side of
the rule prices. Where the shrink forecast at the next finish (`_victims_at_shrink`: the
load less the forecast events up to then, the sessions back by then skipped) runs out of
paused sessions to demote before the load is within the tiers, round 39 fell back to the
victims now; here the swap is refused (`_priced_victims` returns None). Unchanged where
the forecast is unknown (no step time seen; `shrink_on` "contexts"). No constant.

"room_returns_queue_demoted" (session 33, `--fit` round 41): "room_returns_queue_cleared"
with the forecast shrink's load cleared by the step finishes' growth frees and the
demotions alone, no predicted leave counted (`_release_events`' `leaves` off). Why (round
40 at web 1x 25%, seeds 102 and 106, /tmp/s40/t1probe.py in RESULTS): at the swaps of
345-703-block overshoots the forecast events cleared the overshoot by the next finish
mostly through the predicted leave, 0.06-0.24 s out, of one long paused session (16-36
steps, 437-829 blocks; its expected remaining steps near 0), which did not leave; so round
40's refusal never bit there. A leave is the forecast's least certain event; a finish
always frees its growth charge and the shrink's demotions are the scheduler's own. No
constant. Chosen by
round 41's fit, its non-thrash check and the calibrated AFS veto pass it, but **not the
default**: rounds 39-41's values read the forecast at `now` (the next finish, the returns
by then), so (by inference) a refusal can turn into a swap as time alone passes, and they bound no
refusal (`refusal_until`) for it: the simulator's fast path (decode runs) then differs
from its reference (`Simulator(reference=True)`; tests/scheduler/test_admission_order.py's
fast-path test fails with any of them as the default), and the fit's figures are the fast
path's (on the reference path it ranks ahead of the default too, and the default's own
fast path differs at bfcl: RESULTS, rounds 40 and 41). The lead's call.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

from kvsaga.scheduler.leave_forecast import _Means
from kvsaga.scheduler.working_set import working_set_blocks

# "room_returns_queue_corrected" (session 32, `--fit` round 37): "room_returns_queue" with the
# gain times the scheduler's own observed error of it, shrunk toward 1 (`_gain_factor`).
READMIT_ROOM_RETURNS_QUEUE_CORRECTED = "room_returns_queue_corrected"
# "room_returns_queue_steps" (session 33, `--fit` round 38): "room_returns_queue" whose gain is
# the wait until the predicted step finishes and leaves free the overshoot, the paused
# sessions' returns taking their growth back (`_release_wait_s`).
READMIT_ROOM_RETURNS_QUEUE_STEPS = "room_returns_queue_steps"
# "room_returns_queue_shrink" (session 33, `--fit` round 39): "room_returns_queue" whose
# victims are the ones the shrink is forecast to demote at the next predicted step finish
# (`_victims_at_shrink`), not the ones it would demote now.
READMIT_ROOM_RETURNS_QUEUE_SHRINK = "room_returns_queue_shrink"
# "room_returns_queue_cleared" (session 33, `--fit` round 40): "room_returns_queue_shrink"
# refusing a swap whose overshoot the forecast shrink at the next finish cannot clear
# (`_priced_victims`).
READMIT_ROOM_RETURNS_QUEUE_CLEARED = "room_returns_queue_cleared"
# "room_returns_queue_demoted" (session 33, `--fit` round 41): "room_returns_queue_cleared"
# with no predicted leave counted toward clearing the overshoot by the next finish.
READMIT_ROOM_RETURNS_QUEUE_DEMOTED = "room_returns_queue_demoted"


class RoomForecast:
    """The swap's gain forecasts and what is learned for them (see the module docstring)."""

    def _init_room_forecast(self) -> None:
        # "room_returns_queue_corrected": per waiting step refused by the priced swap, the
        # request and its pricings' (time, forecast gain); per workflow and pooled, the
        # observed ln(actual wait / forecast gain) (`_gain_factor`).
        self._gain_priced: dict[str, tuple[Any, list[tuple[float, float]]]] = {}
        self._gain_errors = _Means()
        # "room_returns_queue_steps": each admitted step's admission time, by session, and
        # per workflow (pooled until its own) the seconds from a step's admission to its
        # finish.
        self._step_start: dict[str, float] = {}
        self._step_times = _Means()

    # -- observing (passed on) ------------------------------------------------------------
    def _step_admitted(self, req: Any, now: float) -> None:
        """A refused step priced by the swap (`_gain_priced`), admitted now otherwise than
        by a swap (a swap drops its record first), gives one observation of the gain
        forecast's error: the mean over its pricings of ln(the wait it had from the
        pricing to now / the gain forecast then); pricings at `now` itself are left out
        (no wait to compare). Every step admitted: its admission time (`_step_start`)."""
        rec = self._gain_priced.pop(req.session_id, None)
        if rec is not None and rec[0] is req:
            logs = [math.log((now - t) / g) for t, g in rec[1] if now > t]
            if logs:
                self._gain_errors.observe(req.workflow, sum(logs) / len(logs))
        self._step_start[req.session_id] = now
        super()._step_admitted(req, now)

    def _step_done(self, req: Any, ended: bool, now: float) -> None:
        """A step that ran finished: its time from its admission to `_step_times`."""
        start = self._step_start.pop(req.session_id, None)
        if start is not None:
            self._step_times.observe(req.workflow, now - start)
        super()._step_done(req, ended, now)

    def _session_left(self, sid: str) -> None:
        self._gain_priced.pop(sid, None)
        self._step_start.pop(sid, None)
        super()._session_left(sid)

    # -- "room_returns_queue_corrected" ---------------------------------------------------
    def _gain_factor(self, workflow: str) -> float:
        """"room_returns_queue_corrected": the factor the gain forecast is multiplied by:
        exp(sum / (n + 1)) over the observed ln(actual / forecast) of `workflow` (the
        pooled ones until it has its own; 1 before any): their geometric mean shrunk toward
        no correction by one pseudo-observation of none."""
        s = self._gain_errors.sums.get(workflow) or self._gain_errors.sums.get(None)
        return 1.0 if not s else math.exp(s[0] / (s[1] + 1))

    # -- "room_returns_queue_steps" -------------------------------------------------------
    def _release_events(self, now: float,
                        leaves: bool = True) -> list[tuple[float, int]] | None:
        """The admitted sessions' forecast changes to the load, as (time, blocks freed;
        negative: taken) pairs, unsorted (see the module docstring); None before any step
        time was seen; times inf where a session's leave is unknown. Without `leaves`
        ("room_returns_queue_demoted") the leaves' frees are left out."""
        bs = self.manager.block_size
        out: list[tuple[float, int]] = []
        for sid, info in self.sessions.items():
            step_s = self._step_times.mean(info.workflow)
            if step_s is None:
                return None
            leave = self._leave_at(sid, info, now, True)
            own = max(info.context - info.shared, 0)
            if info.active:
                fin = self._finish_at(sid, info, step_s, now)
                reply = self._reply_tokens(info.workflow, info.tool, 0.0) or 0.0
                after = min(working_set_blocks(own + reply, 0.0, 0.0, bs), info.blocks)
                out.append((fin, info.blocks - after))
                if leaves:
                    out.append((max(leave, fin), after))
                continue
            back = self._return_at(sid)
            if back is not None and back < leave:
                grow = max(self._working_set(info.workflow, own, info.steps, info.tool,
                                             "queued") - info.blocks, 0)
                back = max(back, now)
                out.append((back, -grow))
                out.append((max(back + step_s, now), grow))
            if leaves:
                out.append((leave, info.blocks))
        return out

    def _finish_at(self, sid: str, info: Any, step_s: float, now: float) -> float:
        """When admitted, active session `sid`'s step is forecast to finish: its admission
        plus `step_s`, or `now` plus that for a step still queued or past its expected
        finish (restarted, as `_leave_at` restarts a leave)."""
        start = self._step_start.get(sid)
        fin = now + step_s if start is None or not info.on_prompt else start + step_s
        return now + step_s if fin < now else fin

    def _priced_victims(self, req: Any, lookup: Any, victims: list[str],
                        now: float) -> list[str] | None:
        """The victims `_swap_pays_queue` prices for the swap that admits demoted `req`
        (`victims`: the shrink's answer now): those; round 39's (`_victims_at_shrink`) under
        "room_returns_queue_shrink"; under "room_returns_queue_cleared" those too, but None
        (the swap refused) where the shrink forecast at the next finish cannot bring the
        load within the tiers: the overshoot no predicted demotion clears."""
        charge = self.readmit_charge
        if charge == READMIT_ROOM_RETURNS_QUEUE_SHRINK:
            return self._victims_at_shrink(req, lookup, victims, now)
        if charge == READMIT_ROOM_RETURNS_QUEUE_CLEARED:
            return self._victims_at_shrink(req, lookup, victims, now, strict=True)
        if charge == READMIT_ROOM_RETURNS_QUEUE_DEMOTED:
            return self._victims_at_shrink(req, lookup, victims, now, strict=True,
                                           leaves=False)
        return victims

    def _victims_at_shrink(self, req: Any, lookup: Any, victims: list[str],
                           now: float, strict: bool = False,
                           leaves: bool = True) -> list[str] | None:
        """"room_returns_queue_shrink": the sessions the shrink is forecast to demote for
        the swap that admits demoted `req` (`lookup` its lookup; `victims` the shrink's
        answer now). The swap demotes nobody itself: the shrink runs at the next step's
        finish (`WorkflowScheduler.finish`), the first of the active sessions' and of
        `req`'s own step forecast (`_finish_at`); by then the load has changed by the
        forecast events up to that time (`_release_events`: that finish's growth freed,
        returns' growth taken), and the paused sessions back by then are active, which the
        shrink skips. So: the shrink's answer (`_swap_shrink`) with those blocks off the
        load and those sessions skipped; [] where the load is then within the tiers;
        `victims` where that shrink could not bring it within, before any step time was
        seen and under `shrink_on` "contexts". With `strict`, None (not `victims`) where
        that shrink could not ("room_returns_queue_cleared"); without `leaves`, the
        forecast's leaves not counted ("room_returns_queue_demoted")."""
        if self.shrink_on == "contexts":
            events = None
        else:
            events = self._release_events(now) if leaves else self._release_events(now, False)
        step_s = self._step_times.mean(req.workflow)
        if events is None or step_s is None:
            return victims
        t1 = now + step_s
        for sid, info in self.sessions.items():
            if info.active:
                t1 = min(t1, self._finish_at(sid, info, self._step_times.mean(info.workflow),
                                             now))
        freed = sum(blocks for t, blocks in events if t <= t1)
        back = set()
        for sid in self.sessions:
            r = self._return_at(sid)
            if r is not None and r <= t1:
                back.add(sid)
        got, _ = self._swap_shrink(req, lookup, now, freed, back)
        if got is None and not strict:
            return victims
        return got

    def _release_wait_s(self, over: float, now: float) -> float:
        """"room_returns_queue_steps": the seconds until the load is forecast to have freed
        `over` blocks (`_release_events` summed in time order, frees before takes at one
        time; the first time the sum reaches `over`); 0 for `over` <= 0; inf where it never
        does. The default's gain (`_swap_gain_s`) before any step time was seen and under
        `shrink_on` "contexts"."""
        if over <= 0:
            return 0.0
        events = None if self.shrink_on == "contexts" else self._release_events(now)
        if events is None:
            return self._swap_gain_s(over, now)
        freed = 0
        for t, blocks in sorted(events, key=lambda e: (e[0], -e[1])):
            if not math.isfinite(t):
                break
            freed += blocks
            if freed >= over:
                return max(t - now, 0.0)
        return math.inf

    # -- "room_returns_queue_leave" (round 36): the victim side --------------------------
    def _stay_s(self, sid: str, workflow: str) -> float:
        """"room_returns_queue_leave": the seconds session `sid` of `workflow`, admitted now,
        is expected to stay: its expected remaining steps (`SessionLengths.remaining`, with
        the graph's mean length as one prior session, as `_leave_at` reads it; its steps
        done counted as `session_cost` counts them) times its workflow's learned step cycle
        (`_cycles`; inf before any was seen). `_leave_at` anchored at the admission."""
        cycle = self._cycles.mean(workflow)
        if cycle is None:
            return math.inf
        s = self.manager.sessions.get(sid)
        done = s.num_steps if s is not None else 0
        graph = self._graph()
        prior = graph.mean_steps(workflow) if graph is not None else done + 1.0
        return self._lengths.remaining(workflow, done, prior) * cycle

    def _victim_wait_leave_s(self, req: Any, victim: str, victims: list[str], over: float,
                             now: float,
                             ahead: list[tuple[float, int, float]] | None = None) -> float:
        """"room_returns_queue_leave": `_victim_wait_s` with the steps queued ahead of the
        victim leaving too. Under "room_returns_queue" a step ahead is charged its room until
        the victim is admitted, as if it stayed for ever. Here the queue ahead (the waiting
        steps with a smaller admission key, in key order) and then the victim are admitted
        one by one, each once the room it charges is free; the room frees as the admitted
        sessions leave (`_leave_at` with the restart, the victims left out, as there) and as
        each step admitted here leaves, its expected stay (`_stay_s`) after its admission.
        The victim's wait is its admission less its return, at least 0; 0 where the room is
        there at once; inf where it never frees. With every stay inf it equals
        `_victim_wait_s` (the same room, freed by the same sessions). `ahead`: the waiting
        steps' (key, charge, stay), `_waiting_steps`, when already read."""
        back, key = self._victim_key(victim, now)
        info = self.sessions[victim]
        if ahead is None:
            ahead = self._waiting_steps(req, victims)
        queue = sorted((k, b, stay) for k, b, stay in ahead if k < key)
        own = self._shrink_frees(info)
        free = sum(self._shrink_frees(self.sessions[v]) for v in victims) - over
        if free >= sum(b for _, b, _ in queue) + own:
            return 0.0
        skip = set(victims)
        leaves = [(self._leave_at(sid, i, now, True), self._own_blocks(i))
                  for sid, i in self.sessions.items() if sid not in skip]
        heapq.heapify(leaves)
        t = now
        for _, blocks, stay in [*queue, (key, own, None)]:
            while free < blocks:
                if not leaves:
                    return math.inf
                at, freed = heapq.heappop(leaves)
                t, free = max(t, at), free + freed
            if stay is None:
                return max(t - back, 0.0)
            free -= blocks
            heapq.heappush(leaves, (t + stay, blocks))
        return math.inf  # not reached: the victim is the queue's last
