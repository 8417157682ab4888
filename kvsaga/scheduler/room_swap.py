"""Room as a swap (`readmit_charge` "room_ranked" / "room_overdue", `--fit` round 29, issue
10): a demoted session's step refused by the working-set gate is admitted again on the
pool's check alone (as under "room") only where the demotions its admission would make the
shrink carry out fall on sessions the scheduler itself would give up first.

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from it by concept: it
reads the scheduler's admitted sessions (`sessions`, `_committed`, `_tenant_blocks`), its
shrink (`Demotions._demotion_order`, `shrink_on`, `shrink_after`, Agent Fair Share's
shares), its admission order's key (`AdmissionOrder.remaining_cost`, `session_cost`,
`aging_s`, `admission_order`, `readmit_order`) and pause predictions (`_expected_pause`).

Why (docs/scheduler.md, "Round 29"). Round 28's "room_fits" admits on room only where the
demoted session's whole own context fits beside the admitted working sets; once admitted it
is charged that context plus its growth, which takes the working sets over the tiers, and the
next shrink (`Demotions._shrink`, at a finish) demotes other paused sessions: a cascade (web
seed 104 1x 50%: demotions 45 -> 56, mean TCT 15.8 -> 23.6 s). Admitting on room is then a
swap: this session's step runs now, the shrink's victims wait to be admitted again later.
The swap pays where the victims are sessions the scheduler would have served after this one
anyway. So the rule simulates that shrink: the admitted sessions' load (the shrink's measure,
`shrink_on`: working sets, or contexts) with this session charged as admission would charge
it (its whole own context, less the prefix it shares, plus its predicted growth; under
"contexts" the context alone), and the paused sessions the shrink would demote, in its own
order (`_demotion_order`, with `shrink_after` and the AFS shares applied as there), until the
load is within the tiers. The step is admitted on room only when that shrink brings the load
within the tiers (all or none: a shrink that cannot would leave the overshoot to later
finishes, on sessions not paused now) and every victim

- "room_ranked": ranks strictly behind the demoted session in the admission order (the key
  `admission_order.order_key` sorts the waiting steps by: ln of the predicted remaining work
  plus queueing time over `aging_s`; smaller first). The demoted step's key is its own as it
  waits (`remaining_cost`, queued at its arrival, or at its session's first queueing under
  `readmit_order` "session_age"); a victim's is the key its next step would get, queued at
  its predicted return (its pause's start plus `_expected_pause`; its session's first
  queueing under "session_age") and costed on its context (`session_cost`, as the shrink's
  "least_work" order costs an admitted session). Under the "fifo" order and `readmit_order`
  "first" (demoted steps by queueing time) the key is the queueing time alone. So the swap
  never demotes a session the order would have admitted first had both waited.
- "room_overdue": is already past its predicted return (paused at least `_expected_pause`):
  the issue's "a session that stays away far longer than predicted may be demoted" read at
  1x its pause instead of the deadline's `demote_factor`, only where it buys a re-admission.

Else the charge is "uncached", as for every room value. Checked where "room_fits" is (after
the gate refused and sessions past their deadlines were demoted, before any session is
demoted to make room); nothing is demoted here: the victims are the shrink's to demote, at
the next finish, with the state then. The room deficits told to a policy
(`room_deficit`, `paused_room_deficit`) stay the "uncached" charge's under both values.

Time: a victim's key does not change with time (its predicted return is fixed for a pause),
so "room_ranked" adds no timer. "room_overdue" does: a paused admitted session becomes overdue
at its predicted return, so while a demoted session's step waits, the earliest such return
still to come bounds a refusal (`refusal_until`) and wakes an idle simulator (`wake_time`):
the engine and the simulator then decide alike.

Outcome (`--fit` round 29, fit seeds 101-106): both lift bfcl 1x 25% (1.58x -> 1.65x) and lose
at every other fit point; their non-thrash checks reject both (web seed 103 1x p95 +24% /
+22%: where a refused demoted step is admitted again within a fraction of a second anyway, a
swap saves little and costs each victim its context), and the calibrated AFS veto would too.
Opt-in; docs/scheduler.md, "Round 29", has the figures and the commands.

The priced values, "room_priced" (`--fit` round 30) through "room_returns_queue_leave"
(round 36), the default "room_returns_queue_demoted"'s pricing among them: whether the wait
a swap saves the step pays for what it costs its victims; in `kvsaga.scheduler.swap_pricing`
(`SwapPricing`, a base of `RoomSwap`; split from this module in session 35, unchanged, its
names re-exported here). "room_returns_queue_corrected" (session 32, `--fit` round 37; not
chosen) and "room_returns_queue_steps" (session 33, `--fit` round 38): the gain forecast
corrected by its own observed error, or read off the predicted step finishes, returns and
leaves; both in `kvsaga.scheduler.room_forecast` (`RoomForecast`, a base of `SwapPricing`).
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from kvsaga.scheduler.admission_order import order_key
from kvsaga.scheduler.room_forecast import (
    READMIT_ROOM_RETURNS_QUEUE_CLEARED,
    READMIT_ROOM_RETURNS_QUEUE_CORRECTED,
    READMIT_ROOM_RETURNS_QUEUE_DEMOTED,
    READMIT_ROOM_RETURNS_QUEUE_SHRINK,
    READMIT_ROOM_RETURNS_QUEUE_STEPS,
)
from kvsaga.scheduler.swap_pricing import (  # the priced values (re-exported)
    PRICED_MARGIN,  # noqa: F401
    READMIT_ROOM_PRICED,
    READMIT_ROOM_RETURNS,
    READMIT_ROOM_RETURNS_FAIR,
    READMIT_ROOM_RETURNS_QUEUE,
    READMIT_ROOM_RETURNS_QUEUE_LEAVE,
    READMIT_ROOM_RETURNS_QUEUE_SEEN,
    READMIT_ROOM_RETURNS_STAY,
    SwapPricing,
)
from kvsaga.scheduler.working_set import working_set_blocks

READMIT_ROOM_RANKED = "room_ranked"
READMIT_ROOM_OVERDUE = "room_overdue"
READMIT_ROOM_SWAP = (READMIT_ROOM_RANKED, READMIT_ROOM_OVERDUE, READMIT_ROOM_PRICED,
                     READMIT_ROOM_RETURNS, READMIT_ROOM_RETURNS_FAIR, READMIT_ROOM_RETURNS_STAY,
                     READMIT_ROOM_RETURNS_QUEUE, READMIT_ROOM_RETURNS_QUEUE_SEEN,
                     READMIT_ROOM_RETURNS_QUEUE_LEAVE, READMIT_ROOM_RETURNS_QUEUE_CORRECTED,
                     READMIT_ROOM_RETURNS_QUEUE_STEPS, READMIT_ROOM_RETURNS_QUEUE_SHRINK,
                     READMIT_ROOM_RETURNS_QUEUE_CLEARED, READMIT_ROOM_RETURNS_QUEUE_DEMOTED)
READMIT_ROOM_RETURNS_QUEUES = (READMIT_ROOM_RETURNS_QUEUE, READMIT_ROOM_RETURNS_QUEUE_SEEN,
                               READMIT_ROOM_RETURNS_QUEUE_LEAVE,
                               READMIT_ROOM_RETURNS_QUEUE_CORRECTED,
                               READMIT_ROOM_RETURNS_QUEUE_STEPS,
                               READMIT_ROOM_RETURNS_QUEUE_SHRINK,
                               READMIT_ROOM_RETURNS_QUEUE_CLEARED,
                               READMIT_ROOM_RETURNS_QUEUE_DEMOTED)


class RoomSwap(SwapPricing):
    """"room_ranked" / "room_overdue" (see the module docstring); the priced values' rules
    are `SwapPricing`'s."""

    def _init_room_swap(self) -> None:
        self._init_room_forecast()

    def _swap_victims(self, req: Any, lookup: Any, now: float) -> list[str] | None:
        """The paused admitted sessions the shrink would demote, in its order, once demoted
        `req`'s session is admitted again at the charge admission gives it (its whole own
        context, `lookup`'s GPU hits less the prefix it shares counted as its own); [] when
        the load stays within the tiers; None when the shrink could not bring it within
        (too few paused sessions it may demote). Read only."""
        return self._swap_shrink(req, lookup, now)[0]

    def _swap_shrink(self, req: Any, lookup: Any, now: float, freed: float = 0.0,
                     skip: Collection[str] = ()) -> tuple[list[str] | None, float]:
        """`_swap_victims`'s answer and the overshoot its admission makes: the blocks (of
        the shrink's measure) by which the load would exceed the tiers before any victim
        is demoted (<= 0 when it stays within). "room_returns_queue_shrink": the shrink
        read with `freed` blocks off the load and the sessions in `skip` not paused
        (`RoomForecast._victims_at_shrink`); the overshoot returned is the swap's own."""
        bs = self.manager.block_size
        sid = req.session_id
        whole = req.num_tokens - min(lookup.gpu_hit_blocks * bs, self._shared_tokens(sid))
        limit = self.overcommit * self.capacity
        new = self._working_set(req.workflow, whole, 0)  # `_admitted` -> `_set_blocks`
        if self.shrink_on == "contexts":
            load = self._context_blocks() + working_set_blocks(whole, 0.0, 0.0, bs)
        else:
            load = self._committed + new
        frees = self._shrink_frees
        over = load - limit
        load -= freed
        if load <= limit:
            return [], over
        shares = self._shares(limit, req.tenant)
        held = dict(self._tenant_blocks)
        held[req.tenant] = held.get(req.tenant, 0) + new
        order = self._demotion_order(self.sessions)
        victims: list[str] = []
        for v in order:
            info = self.sessions[v]
            if info.active or v in skip:
                continue
            if shares is not None and held.get(info.tenant, 0) <= shares[info.tenant]:
                continue  # AFS: the shrink takes only tenants above their shares
            if self.shrink_after and not self._away_long(v, now):
                continue
            victims.append(v)
            load -= frees(info)
            held[info.tenant] = held.get(info.tenant, 0) - info.blocks
            if load <= limit:
                return victims, over
        return None, over

    def _shrink_frees(self, info: Any) -> int:
        """Blocks (of the shrink's measure, `shrink_on`) that demoting admitted session
        `info` takes off the load: its working set, or under "contexts" its own context."""
        if self.shrink_on == "contexts":
            return -(-max(info.context - info.shared, 0) // self.manager.block_size)
        return info.blocks

    def _return_at(self, sid: str) -> float | None:
        """When paused admitted session `sid` is predicted back: its pause's start plus its
        expected pause (`_expected_pause`); None if it is not paused here."""
        s = self.manager.sessions.get(sid)
        if s is None or s.paused_at is None:
            return None
        return s.paused_at + self._expected_pause(s)

    def _order_key(self, cost: float, since: float) -> float:
        """The admission order's key (smaller first) of a step costed `cost` queued at
        `since`: queueing time alone under "fifo" and `readmit_order` "first"."""
        if self.admission_order == "fifo" or self.readmit_order == "first":
            return since
        return order_key(cost, since, self.aging_s)

    def _ranks_below(self, req: Any, victim: str) -> bool:
        """"room_ranked": whether admitted, paused `victim`'s next step, queued at its
        predicted return, would sort strictly behind `req` (a demoted session's waiting
        step) in the admission order."""
        back = self._return_at(victim)
        if back is None:
            return False
        info = self.sessions[victim]
        mine = self._aged_since(req.session_id, req.arrival)
        theirs = self._aged_since(victim, back)
        return (self._order_key(self.session_cost(victim, info.workflow, info.context), theirs)
                > self._order_key(self.remaining_cost(req), mine))

    def _overdue(self, victim: str, now: float) -> bool:
        """"room_overdue": whether admitted, paused `victim` is past its predicted return."""
        back = self._return_at(victim)
        return back is not None and now >= back

    def _readmits_swap(self, req: Any, lookup: Any, now: float) -> bool:
        """Whether `req`, a demoted session's waiting step whose lookup is `lookup`, is
        admitted again on the pool's check alone under "room_ranked" / "room_overdue": the
        shrink that its admission makes (`_swap_victims`) brings the load within the tiers
        and demotes only sessions ranked behind it / past their predicted returns. False
        under any other value and for a session not demoted."""
        charge = self.readmit_charge
        if charge not in READMIT_ROOM_SWAP or req.session_id not in self._deferred:
            return False
        victims, over = self._swap_shrink(req, lookup, now)
        if victims is None:
            return False
        if charge == READMIT_ROOM_RANKED:
            return all(self._ranks_below(req, v) for v in victims)
        if charge == READMIT_ROOM_PRICED:
            return self._swap_pays(req, lookup, victims)
        if charge in (READMIT_ROOM_RETURNS, READMIT_ROOM_RETURNS_STAY):
            return self._swap_pays(req, lookup, victims, over, now)
        if charge in READMIT_ROOM_RETURNS_QUEUES:
            return self._swap_pays_queue(req, lookup, victims, over, now)
        if charge == READMIT_ROOM_RETURNS_FAIR:
            # "room_returns"'s rule first (it records the return as "room_returns" does,
            # so with one tenant the two values decide alike), then the fairness check.
            return (self._swap_pays(req, lookup, victims, over, now)
                    and self._fair_victims(req, victims))
        return all(self._overdue(v, now) for v in victims)

    def _overdue_next(self, now: float) -> float:
        """"room_overdue", while a demoted session's step waits to be admitted again: the
        earliest predicted return after `now` of a paused admitted session (when the rule
        may admit where it refused); inf otherwise."""
        if self.readmit_charge != READMIT_ROOM_OVERDUE or not self._demoted_waiting_any():
            return math.inf
        t = math.inf
        for sid, info in self.sessions.items():
            if info.active:
                continue
            back = self._return_at(sid)
            if back is not None and back > now:
                t = min(t, back)
        return t

    def _swap_reads_clock(self) -> bool:
        """Whether the swap's test reads the time itself: the "room_returns" values price
        victims and the shortage by forecasts taken at `now` (leaves, returns, waits), so a
        refusal may turn into a swap with no event between. No bound on when is kept, so
        `refusal_until` holds no refusal while a demoted step waits under them: a
        simulator's decode runs then ask again every step, as its reference path does
        (before session 33 they held the refusal, and the fast path's results differed
        from the reference's: bfcl 1x 25% seed 101, mean TCT 13.79 s against 15.76 s)."""
        return self.readmit_charge in READMIT_ROOM_SWAP and self.readmit_charge.startswith(
            READMIT_ROOM_RETURNS)

    def _demoted_waiting_any(self) -> bool:
        return any(r.session_id in self._deferred for q in self._pending.values() for r in q)
