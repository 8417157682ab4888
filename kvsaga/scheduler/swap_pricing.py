"""The priced swaps (`readmit_charge` "room_priced", "room_returns*", "room_returns_queue*",
issue 10, `--fit` rounds 30-36): `RoomSwap`'s swap of a refused, demoted step for the shrink's
victims, made only where what it saves the step pays for what it costs the victims, each
value pricing the two sides its own way.

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), a base of `RoomSwap`
(kvsaga/scheduler/room_swap.py, which finds the victims, `_swap_shrink`, and asks the
value's rule, `_readmits_swap`) and itself based on `RoomForecast` (the gain forecasts).
Split from room_swap.py by concept in session 35 (it had reached the 600-line limit),
unchanged: room_swap.py keeps the victims and the unpriced rules ("room_ranked",
"room_overdue") and re-exports every name defined here. It reads `RoomSwap`'s pause
predictions and admission keys (`_return_at`, `_order_key`, `_shrink_frees`), the admitted
sessions (`sessions`), the waiting queues (`_pending`) and the working sets admitting a
waiting step charges (`WorkingSetGate._working_set`), the admission order's costs
(`remaining_cost`, `session_cost`, `_aged_since`), the learned re-admission waits and
returns (`_readmit_waits`, `_observe_return`, `_return_lost`, `_return_count`), the leave
forecast (`LeaveForecast._leave_wait_s`), Agent Fair Share's deficits (`_fair`) and the
eviction policy's prices (`manager.policy.cost`).

"room_priced" (`--fit` round 30): the swap made only where the wait it saves pays for the
recomputation it causes. The wait saved is the mean wait of a demoted session's step to be
admitted again, from its arrival to its admission, over the re-admissions so far on this
trace (`LeaveForecast._readmit_waits`; none yet, no swap); the recomputation is each victim's
own context times the share of a demoted session's context its return found no longer cached
(learned as the "cost" charges learn it, `_observe_return`; 1 before any return), at the
eviction policy's prices (`_victims_recompute_s`); the swap is made where the wait exceeds
`PRICED_MARGIN` times that. No timer: the price changes only at admissions and finishes.
Outcome (fit seeds 101-106): it separates web seed 103 1x (learned wait 0.10 s against a
price of 0.45 s: no swap, the default's run) and lifts bfcl 1x 25% 1.58x -> 1.69x, but loses
every other fit point and fails the non-thrash check (swe seed 103 1x p95 +6.1%) and the AFS
veto: under pressure the learned wait is long and its victims then wait as long themselves
(web 1x 25% seed 102: demotions 62 -> 139, mean TCT 17.3 -> 33.7 s). Opt-in; docs/scheduler.md,
"Round 30".

"room_returns" (`--fit` round 31): "room_priced" with each victim predicted back (`_return_at`)
before the shortage the swap covers is predicted to clear (`_shortage_clears_at`: round 23's
leave forecast, `LeaveForecast._leave_wait_s`, for the blocks the load would be over the
tiers before the shrink, in the shrink's measure; inf before any step cycle was seen) charged
the learned wait on top of its recomputation: it would itself wait to be admitted again. A
victim back at or after the clearing costs its recomputation alone. With `PRICED_MARGIN` 2
one victim back early refuses the swap (n victims' waits against the one wait saved). No
timer: the clearing time never moves earlier as time alone passes. Outcome (fit seeds
101-106): chosen by the fit and its non-thrash check (smallest gain 1.58x -> 1.63x; bfcl 1x
25% 1.58x -> 1.70x, swe 1x and web 1x 25% about unchanged, a few points lower elsewhere),
rejected by the calibrated AFS veto (mean d log ratio +0.0463 > 0.0270; goal cases 15 -> 15).
Opt-in; docs/scheduler.md, "Round 31".

"room_returns_fair" (`--fit` round 32): "room_returns" that also refuses a swap whose victims
include a session of a tenant other than the admitted step's while that tenant is at or below
its fair share by Agent Fair Share's own measure, the deficit the admission order picks
tenants by (`FairShare.deficits`; a tenant not backlogged keeps none and counts as exactly at
its share): `_fair_victims`. No new constant; with one tenant it decides as "room_returns".
Outcome (fit seeds 101-106; AFS fit seeds 102-109): every fit figure equal to "room_returns"'s
(the fit seeds are single-tenant), so the fit chose "room_returns" (listed first) again; the
calibrated AFS veto rejects it (mean d log ratio +0.0423 > 0.0270; round 31 +0.0463): it
changes only two noisy 25% cases, and the noisy 50% loss is unchanged, as that loss is
through the noisy mix's heavy tenant's run alone on half the GPU (one tenant, where the rule
cannot act), not through the shared run. Opt-in; docs/scheduler.md, "Round 32".

"room_returns_stay" (`--fit` round 33): "room_returns" with the clearing forecast read
without its clamp. Round 23's leave forecast predicts each admitted session to leave at its
last finish plus its expected remaining steps times the learned cycle, clamped to `now`: a
session still admitted past that prediction is predicted to leave now. Under pressure most
of the admitted sessions with a step queued or running are past it, so the forecast said
the shortage clears at the swap's own time at 166 of 183 swaps of the noisy mix's heavy
tenant alone on half the GPU (AFS fit seeds 102-109; overdue active sessions covered
1.8-4.3x the overshoot there) and at 89 of 121 at bfcl 1x 25% (fit seeds 101-106): every
victim not yet past its own predicted return was then "back after the clearing", charged
its recomputation alone, and the rule's test never bit (`bench/scheduling_swap_alone.py`).
Here a session past its predicted leave is predicted to stay its expected remaining steps
from `now` (`LeaveForecast._leave_at`'s `restart`: the prediction started again when the
session is found still there); a paused one still leaves by its demotion deadline if that
comes first. No new constant; still never earlier at a later `now`, so no timer.
Outcome (fit seeds 101-106; AFS fit seeds 102-109): with the clamp gone it makes few swaps
(1-12 a seed in the heavy tenant's run alone, 2-6 at bfcl 1x 25%) and round 31's bfcl gain
goes with them (bfcl 1x 25% 1.56x against the default's 1.58x, its smallest gain), so the
fit does not choose it, though it passes its non-thrash check and the calibrated AFS veto
(mean d log ratio -0.0245, goal cases 15 -> 18). Opt-in; docs/scheduler.md, "Round 33".

"room_returns_queue" (`--fit` round 34; **the default since session 31**): the swap priced by
forecasts on both sides, both from round 33's restarted leave forecast. What a swap costs a
victim is its wait on its return plus its recomputation: at round 31's swaps the demoted
victims waited a median 6.6-15.6 s after returns a few tenths of a second out in the heavy
tenant's run alone, 0.41-1.92 s at bfcl 1x 25% (`bench/scheduling_swap_alone.py`). So the
gain is the refused step's own forecast wait for the room it lacks (`_swap_gain_s`), the
cost each victim's forecast wait on its return (`_victim_wait_s`: the load after the swap,
plus the room of the waiting steps that sort ahead of its next step by the admission key,
plus its own, predicted gone from the tiers, less its time away) plus `PRICED_MARGIN` times
its recomputation; the swap is made where the gain exceeds the cost (`_swap_pays_queue`;
refused while the forecast is unknown). No learned wait, no new constant. Outcome (fit seeds
101-106; AFS fit seeds 102-109): chosen by the fit (smallest gain 1.58x -> 1.62x, bfcl 1x 25%
1.58x -> 1.73x), its non-thrash check none worse, the calibrated AFS veto passes it (mean d
log ratio -0.0181, goal cases 15 -> 16). On fresh seeds 151, 152 (run once after): mixed
(bfcl 1x 25% 1.46x -> 1.22x and 1.70x -> 1.80x against the previous default, "uncached").
docs/scheduler.md, "Round 34".

"room_returns_queue_seen" (`--fit` round 35): "room_returns_queue" with the gain at most the
mean wait to be admitted again seen so far (`_readmit_waits`; none seen, no swap): where the
pool clears fast (bfcl 1x 50%, 2x 50%) the forecast gain read 1.3-2.6 s against seen waits of
0.1-0.6 s. Outcome (fit seeds): swe, web and bfcl 2x 50% back near the old default's, but
bfcl 1x 25% 1.73x -> 1.60x: not chosen. Opt-in; docs/scheduler.md, "Round 34".

"room_returns_queue_leave" (session 32, `--fit` round 36): "room_returns_queue" whose
forecast of a victim's wait on its return lets the steps queued ahead of it leave too
(`_victim_wait_leave_s`). Round 34's forecast charges each step sorting ahead of the victim
its room (its working set on its prompt) until the victim is admitted, as if it stayed for
ever: where a few steps wait ahead, the admitted sessions' leaves alone never cover their
room and the victim's wait reads inf (no swap). Here the queue ahead and then the victim
are admitted one by one in the key's order, each once the room it charges is free; the room
frees as the admitted sessions leave (the same restarted leave forecast, the victims left
out) and as each step admitted in the forecast leaves its expected stay after its admission
(`_stay_s`: its expected remaining steps times its workflow's learned cycle, `_leave_at`
anchored at the admission). With no stay finite it is round 34's forecast exactly. No new
constant. Outcome (fit seeds 101-106; AFS fit seeds 102-109): every figure equal to the
default's; at the default's swaps it changed 5,235 of 15,049 forecasts and no decision (the
steps ahead stay 4-15 s, medians, longer than the gain): not chosen. Opt-in;
docs/scheduler.md, "Round 36".
"""

from __future__ import annotations

import math
from typing import Any

from kvsaga.policy.cost import PrefillCost
from kvsaga.scheduler.room_forecast import (
    READMIT_ROOM_RETURNS_QUEUE_CORRECTED,
    READMIT_ROOM_RETURNS_QUEUE_STEPS,
    RoomForecast,
)

# "room_priced" (`--fit` round 30): the swap only where the wait it saves is worth its price.
READMIT_ROOM_PRICED = "room_priced"
# "room_returns" (`--fit` round 31): "room_priced" with each victim predicted back before the
# shortage clears charged its own wait to be admitted again too.
READMIT_ROOM_RETURNS = "room_returns"
# "room_returns_fair" (`--fit` round 32): "room_returns" refusing a swap with a victim of
# another tenant at or below its fair share (Agent Fair Share's deficit, `_fair_victims`).
READMIT_ROOM_RETURNS_FAIR = "room_returns_fair"
# "room_returns_stay" (`--fit` round 33): "room_returns" whose clearing forecast predicts an
# admitted session still there past its predicted leave to stay its remaining steps from now
# (`LeaveForecast._leave_at`'s `restart`), not to leave now.
READMIT_ROOM_RETURNS_STAY = "room_returns_stay"
# "room_returns_queue" (`--fit` round 34): the swap priced by forecasts on both sides, from
# the same leave forecast as "room_returns_stay"'s: the step's own wait for the room it
# lacks, against each victim's wait on its return (the queue it meets: the waiting steps
# that sort ahead of it, and the room they and it need, `_victim_wait_s`) plus
# `PRICED_MARGIN` times the victims' recomputation.
READMIT_ROOM_RETURNS_QUEUE = "room_returns_queue"
# "room_returns_queue_seen" (session 31, after round 34): "room_returns_queue" with the gain
# bounded by the mean wait a demoted step has been seen to wait to be admitted again
# (`_readmit_waits`, round 30's gain): no swap before one was seen.
READMIT_ROOM_RETURNS_QUEUE_SEEN = "room_returns_queue_seen"
# "room_returns_queue_leave" (session 32, `--fit` round 36): "room_returns_queue" whose
# victim-wait forecast lets the steps queued ahead of a victim leave again: each is admitted
# in the queue's order as room frees and leaves its expected remaining steps times its
# workflow's learned cycle later, by the same leave forecast (`_victim_wait_leave_s`).
READMIT_ROOM_RETURNS_QUEUE_LEAVE = "room_returns_queue_leave"
# "room_priced": the wait a swap saves must exceed this many times the victims' expected
# recomputation. Set before round 30 ran, not fitted: a victim's recomputation is paid
# twice, by the victim's own step (its prefill) and by the steps decoding beside that
# prefill (round 25's decode stall); and it separates the fit seeds' bound-gap readings
# (`bench/scheduling_bound_gap.py`, the default): wait to be admitted again per demotion
# against recomputation per demotion 1.6x at web seed 103 1x 50% (0.36 s / 0.23 s, where
# round 29's swaps thrashed) and about 20x at bfcl seed 101 1x 25% (2.96 s / 0.15 s).
PRICED_MARGIN = 2.0


class SwapPricing(RoomForecast):
    """Whether a priced swap pays (see the module docstring)."""

    def _swap_pays(self, req: Any, lookup: Any, victims: list[str],
                   over: float | None = None, now: float | None = None) -> bool:
        """"room_priced": whether the wait the swap saves `req` (a demoted session's step,
        `lookup` its lookup), the mean wait of a demoted session's step to be admitted
        again observed so far on this trace (`_readmit_waits`, every value records it),
        exceeds `PRICED_MARGIN` times the recomputation the swap causes its `victims`
        (`_victims_recompute_s`). Refused before any such wait was observed (nothing to
        price the saving with).

        "room_returns" (`over`, the swap's overshoot, and `now` given): each victim
        predicted back (`_return_at`) before the shortage is predicted to clear
        (`_shortage_clears_at`) is charged that learned wait on top, as it will itself
        wait to be admitted again; one predicted back at or after it costs its
        recomputation alone. With `PRICED_MARGIN` >= 1 one such victim refuses the swap."""
        self._observe_return(req, lookup.gpu_hit_blocks * self.manager.block_size)
        wait = self._readmit_waits.mean(None)
        if wait is None:
            return False
        price = self._victims_recompute_s(victims)
        if over is not None and now is not None:
            clears = self._shortage_clears_at(over, now)
            for v in victims:
                back = self._return_at(v)
                if back is None or back < clears:
                    price += wait
        return wait > PRICED_MARGIN * price

    def _swap_gain_s(self, over: float, now: float) -> float:
        """"room_returns_queue": the wait the swap saves the demoted step, forecast: the
        seconds until the `over` blocks its admission lacks are predicted to have left the
        tiers (round 33's clearing, `_leave_wait_s` with the restart; inf before any step
        cycle was seen)."""
        return self._leave_wait_s(max(over, 0.0), now, True)

    def _victim_wait_s(self, req: Any, victim: str, victims: list[str], over: float,
                       now: float, ahead: list[tuple[float, int]] | None = None) -> float:
        """"room_returns_queue": the wait admitted, paused `victim`, demoted by the swap
        that admits `req` (with `victims`, overshoot `over`), is forecast to meet on its
        return, from its predicted return (`_return_at`) to its admission again. Its next
        step queues at its return among the steps waiting now (`_pending`, `req` and the
        victims' own left out) and sorts behind those with a smaller admission key
        (`_order_key`; its own key that of its next step queued at its return and costed
        on its context, as "room_ranked" costs it; under `readmit_order` "first" only the
        demoted steps waiting go ahead of it). It is admitted once the room it and the
        steps ahead need has left the tiers: the load after the swap (the overshoot less
        what the victims free, `_shrink_frees`) plus the steps ahead's charges (their
        working sets on their prompts) plus its own, beyond the tiers, in blocks; when
        that is predicted gone is the leave forecast of the sessions admitted after the
        swap (`_leave_wait_s` with the restart, the victims left out). 0 where the room is
        there at once or before its return; inf before any step cycle was seen. `ahead`:
        the waiting steps' (key, charge) pairs, `_waiting_keys`, when already read."""
        back, key = self._victim_key(victim, now)
        info = self.sessions[victim]
        if ahead is None:
            ahead = self._waiting_keys(req, victims)
        queued = sum(blocks for k, blocks in ahead if k < key)
        freed = sum(self._shrink_frees(self.sessions[v]) for v in victims)
        need = over - freed + queued + self._shrink_frees(info)
        if need <= 0:
            return 0.0
        clears = now + self._leave_wait_s(need, now, True, skip=victims)
        return max(clears - back, 0.0)

    def _waiting_keys(self, req: Any, victims: list[str]) -> list[tuple[float, int]]:
        """"room_returns_queue": each step waiting for admission (every tenant's queue;
        `req` and the victims' steps left out) as its admission key (`_order_key`, as it
        waits; under `readmit_order` "first" a new session's is inf, as every demoted step
        goes ahead of it) and the blocks admitting it charges (its working set on its
        prompt, `_working_set`)."""
        return [(k, b) for k, b, _ in self._waiting_steps(req, victims, False)]

    def _waiting_steps(self, req: Any, victims: list[str],
                       stays: bool = True) -> list[tuple[float, int, float]]:
        """`_waiting_keys`' (key, blocks) of each waiting step and, with `stays`, the
        seconds its session is expected to stay once admitted (`_stay_s`; else 0)."""
        out = []
        skip = set(victims)
        first = self.admission_order != "fifo" and self.readmit_order == "first"
        for q in self._pending.values():
            for r in q:
                if r is req or r.session_id in skip:
                    continue
                if first and not r.resumed:
                    key = math.inf
                else:
                    since = self._aged_since(r.session_id, r.arrival)
                    key = self._order_key(self.remaining_cost(r), since)
                out.append((key, self._working_set(r.workflow, r.num_tokens, 0),
                            self._stay_s(r.session_id, r.workflow) if stays else 0.0))
        return out

    def _victim_key(self, victim: str, now: float) -> tuple[float, float]:
        """A victim's forecast return (now if none) and the admission key its step will
        sort by on that return (its session cost; since its return, or its session's start
        under `readmit_order` "session_age")."""
        back = self._return_at(victim)
        if back is None:
            back = now
        info = self.sessions[victim]
        since = self._aged_since(victim, back)
        return back, self._order_key(self.session_cost(victim, info.workflow, info.context),
                                     since)

    def _swap_pays_queue(self, req: Any, lookup: Any, victims: list[str], over: float,
                         now: float) -> bool:
        """"room_returns_queue": whether the wait the swap saves `req` (`_swap_gain_s`)
        exceeds what it costs its victims: the sum of their forecast waits on return
        (`_victim_wait_s`) plus `PRICED_MARGIN` times their expected recomputation
        (`_victims_recompute_s`, paid by the victim's prefill and again by the steps
        decoding beside it, as "room_priced" prices it). Both waits are read off the same
        leave forecast (round 33's restart), so its error falls on both sides. Refused
        where the gain is unknown (inf: no step cycle seen) or no larger than the cost.

        "room_returns_queue_seen": the gain is at most the mean wait of a demoted step to
        be admitted again seen so far (`_readmit_waits`, round 30's measure of it; none
        seen yet, no swap). Why: where the pool clears fast the forecast gain overstates
        what a swap saves (bfcl 1x 50% and 2x 50%, fit seeds, round 34's swaps: forecast
        gain medians 1.3-2.6 s against seen waits 0.1-0.6 s).

        "room_returns_queue_corrected": the gain times `_gain_factor` (the forecast's own
        error observed so far on this trace). Every value records the refused pricings
        (`_gain_priced`) and learns the error at their admissions (`_step_admitted`)."""
        self._observe_return(req, lookup.gpu_hit_blocks * self.manager.block_size)
        if self.readmit_charge == READMIT_ROOM_RETURNS_QUEUE_STEPS:
            gain = self._release_wait_s(over, now)
        else:
            gain = self._swap_gain_s(over, now)
        priced = self._priced_victims(req, lookup, victims, now)
        got = priced is not None and self._swap_pays_gain(req, priced, over, now, gain)
        sid = req.session_id
        if got:
            self._gain_priced.pop(sid, None)  # censored: the swap cuts its wait short
        elif math.isfinite(gain) and gain > 0.0:
            rec = self._gain_priced.get(sid)
            if rec is None or rec[0] is not req:
                rec = self._gain_priced[sid] = (req, [])
            rec[1].append((now, gain))
        return got

    def _swap_pays_gain(self, req: Any, victims: list[str], over: float, now: float,
                        gain: float) -> bool:
        """`_swap_pays_queue`'s rule for the forecast `gain`."""
        if self.readmit_charge == READMIT_ROOM_RETURNS_QUEUE_CORRECTED:
            gain *= self._gain_factor(req.workflow)
        if self.readmit_charge == READMIT_ROOM_RETURNS_QUEUE_SEEN:
            seen = self._readmit_waits.mean(None)
            if seen is None:
                return False
            gain = min(gain, seen)
        if not math.isfinite(gain):
            return False
        cost = PRICED_MARGIN * self._victims_recompute_s(victims)
        if self.readmit_charge == READMIT_ROOM_RETURNS_QUEUE_LEAVE:
            steps = self._waiting_steps(req, victims)
            wait = (self._victim_wait_leave_s(req, v, victims, over, now, steps)
                    for v in victims)
        else:
            ahead = self._waiting_keys(req, victims)
            wait = (self._victim_wait_s(req, v, victims, over, now, ahead) for v in victims)
        for w in wait:
            cost += w
            if cost >= gain:
                return False
        return gain > cost

    def _fair_victims(self, req: Any, victims: list[str]) -> bool:
        """"room_returns_fair": whether every victim of a tenant other than `req`'s is of a
        tenant above its fair share by Agent Fair Share's own measure, the deficit the
        admission order picks tenants by (`FairShare.deficits`, `_candidate`'s
        `next_tenant`): a backlogged tenant with a negative deficit was admitted more than
        its weighted share. A tenant at or below its share (deficit >= 0), or not
        backlogged (no deficit kept: counted as 0, exactly at its share), refuses the
        swap. Victims of `req`'s own tenant never do, so with one tenant this is always
        true and the value decides as "room_returns"."""
        d = self._fair.deficits
        for v in victims:
            t = self.sessions[v].tenant
            if t != req.tenant and d.get(t, 0.0) >= 0.0:
                return False
        return True

    def _shortage_clears_at(self, over: float, now: float) -> float:
        """"room_returns": when the shortage a swap would cover is predicted to clear
        without it: when `over` blocks of admitted sessions' own contexts are predicted to
        have left the tiers (round 23's leave forecast, `LeaveForecast._leave_wait_s`;
        inf before any step cycle was seen). Never earlier at a later `now` (each
        session's predicted leave is a max/min with `now`, so non-decreasing in it): a
        refusal stays a refusal while time alone passes, and the rule needs no timer.
        "room_returns_stay": a session past its predicted leave is predicted to stay its
        expected remaining steps from `now` (`_leave_at`'s `restart`; still non-decreasing
        in `now`: at the predicted leave its prediction jumps later, never earlier)."""
        restart = self.readmit_charge == READMIT_ROOM_RETURNS_STAY
        return now + self._leave_wait_s(max(over, 0.0), now, restart)

    def _victims_recompute_s(self, victims: list[str]) -> float:
        """Seconds of recomputation expected from demoting `victims` (admitted, paused):
        each one's own context (past the prefix it shares), the mean share of it a demoted
        session's return found no longer cached (`_observe_return`, learned on the trace;
        all of it before any return), recomputed after the part kept, at the eviction
        policy's prices (its cost model's `recompute_s`, else the default `PrefillCost`),
        as `_churn_s` prices the "cost" charges' churn."""
        cost = getattr(self.manager.policy, "cost", None)
        if not hasattr(cost, "recompute_s"):
            cost = PrefillCost()
        lost = self._return_lost / self._return_count if self._return_count else 1.0
        total = 0.0
        for v in victims:
            info = self.sessions[v]
            n = round(lost * max(info.context - info.shared, 0))
            total += cost.recompute_s(n, info.context - n)
        return total
