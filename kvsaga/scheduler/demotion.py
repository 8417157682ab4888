"""Demotions of the `workflow` scheduler's admitted sessions: the shrink when the admitted
working sets outgrow the tiers, the pause deadline of a session away far longer than
predicted, and the memory half of Agent Fair Share (a tenant within its share reclaims room
from tenants above theirs; the bound is stated in `kvsaga.scheduler.fair_share`).

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from it by concept: it
reads and updates the scheduler's admitted sessions (`sessions`, `_committed`,
`_tenant_blocks`), its demotion marks (`_deferred`, `_times_demoted`, `_demote_at`) and its
parameters (`overcommit`, `shrink_order`, `shrink_aging`); nothing else uses it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from kvsaga.scheduler.working_set import shrink

# `WorkflowScheduler(undo_demotion=...)`'s values besides True and False (`_undo_demotion`).
UNDO_UNUSED = "unused"
UNDO_UNCLAIMED = "unclaimed"
UNDO_DEMOTIONS = (True, False, UNDO_UNUSED, UNDO_UNCLAIMED)
# A waiting session's blocks to find room for, given the admitted sessions about to be
# demoted (`WorkingSetGate._session_fits`'s `need`).
Need = Callable[[Sequence[str]], int]


class Demotions:
    """Which admitted sessions are demoted, and when (see the module docstring)."""

    def _shrink(self, now: float) -> None:
        """While the admitted working sets outgrow the tiers (contexts grew more than
        predicted), demote paused sessions in `shrink_order`: "latest_back", those expected
        back last first (their memory would idle longest, and their next step is the least
        urgent), or "smallest", the smallest working sets first (the fewest blocks lost
        to recompute); their next steps wait for room instead of evicting the contexts of
        sessions about to resume. (Most recently admitted first did worse on seed 101, the
        earlier single-seed `--fit`.) Aging:
        sessions demoted `shrink_aging` times already go after all others, or the same
        long-tool sessions are demoted at every pause and make the p95 TCT (seed 101, bfcl
        1x 25%: p95 48.7 -> 45.0 s with aging 2; 1 and 3 were worse). With two or more
        tenants, only paused sessions of tenants above their shares are demoted (the shares
        sum to the limit, so an excess is some tenant's): a tenant within its share is not
        shrunk for another's growth. When the tenants above their shares have no paused
        session (all active), nothing is demoted and the commitment stays above the limit
        until one of their steps finishes (tests/scheduler/test_share_shrink.py). Sessions
        whose waits to be admitted again sum to `shrink_exempt_s` are left out too
        (`_demotion_order`): when every paused candidate is such a session, nothing is
        demoted either, and the commitment stays above the limit until a finish, idle
        admission or a pause deadline (which still demotes them, as do Agent Fair Share's
        reclaim and the tail guard's, those last: `_reclaim_share`, `_reclaim_due`; and,
        under `shrink_exempt_until` "contexts", this shrink once the contexts alone
        outgrow the limit: `_shrink_exempt`).

        What "outgrow" reads is `shrink_on`: "working_sets" (the default: the charged
        working sets, the active sessions' predicted growth included) or "contexts" (the
        admitted sessions' own contexts alone, `_context_blocks`): why the second exists,
        on the fit seeds at bfcl 1x 25% 33-64% of the demotions followed a paused session's
        next step queueing (its predicted growth charged again) while no step's context
        ever outgrew its predicted working set (`bench/scheduling_overflow.py bfcl 1 0.25
        101,...,106`): the shrink demoted for growth that did not come, and each demoted
        session waited to be admitted again (RESULTS "Scheduling")."""
        limit = self.overcommit * self.capacity
        if self.shrink_on == "contexts":
            def over() -> bool:
                return self._context_blocks() > limit
        else:
            def over() -> bool:
                return self._committed > limit
        if over():
            shares = self._shares(limit)
            held = self._tenant_blocks

            def demotable(a) -> bool:  # AFS: only tenants above their shares are shrunk
                return not a.active and (shares is None or held.get(a.tenant, 0) > shares[a.tenant])
            sids = self._demotion_order(self.sessions)
            if self.shrink_after:
                sids = [sid for sid in sids if self._away_long(sid, now)]
            shrink(self.sessions, sids, over, demotable,
                   lambda sid: self._demote_session(sid, now))
            if self.shrink_exempt_until == "contexts":
                self._shrink_exempt(limit, demotable, now)

    def _shrink_exempt(self, limit: float, demotable, now: float) -> None:
        """`shrink_exempt_until` "contexts": once the admitted contexts alone (no predicted
        growth) outgrow the tiers, the shrink demotes the sessions `shrink_exempt_s` left
        out too, in `_demotion_order` among themselves (`demotable` as in `_shrink`),
        until the contexts fit. The exemption spares a session a demotion for growth that
        is only predicted; past this point the policy would evict admitted sessions'
        blocks instead, recomputed when they come back.

        Why (session 57, issue 10): the exemption at 20 s failed the calibrated AFS veto
        through the denominators, not the shared runs: each noisy-mix heavy tenant alone
        on half the GPU (4x load, sustained) had 10-25 of its 32 sessions exempt; the
        shrink, left only those, kept the commitment above the tiers after 37-248 of its
        ~500 calls (2-11 with the rule off), at noisy seed 103 25% with the contexts
        themselves above the tiers at 159 of 181, and the run's recomputed tokens rose
        289k -> 782k (TCT alone 59.7 -> 89.4 s; the light tenant's shared runs moved by
        at most 0.24 s; docs/scheduling_fit_history.md, "Session 57")."""
        waited, bound = self._waited_again, self.shrink_exempt_s
        if not waited or self._context_blocks() <= limit:
            return
        sids = [sid for sid in self._demotion_order(self.sessions, exempt=False)
                if waited.get(sid, 0.0) >= bound]
        if self.shrink_after:
            sids = [sid for sid in sids if self._away_long(sid, now)]
        shrink(self.sessions, sids, lambda: self._context_blocks() > limit, demotable,
               lambda sid: self._demote_session(sid, now))

    def _away_long(self, sid: str, now: float) -> bool:
        """`shrink_after`: whether the admitted session `sid`, paused, has been away at
        least `shrink_after` x its expected pause (`_expected_pause`), so the shrink may
        demote it; one whose step has just finished has not (0 s). Why: the shrink demotes
        on the prediction that a session is back last, and the prediction alone can be
        wrong by far (live seed 111: a session demoted as its step finished was back 0.006 s
        later; RESULTS "Issue 13: kvsaga-serve's demotions on the live replay"); the issue's
        rule demotes "a session that stays away far longer than predicted". Sessions not
        demotable yet keep the commitment above the tiers until a later finish's shrink
        (new sessions wait meanwhile)."""
        s = self.manager.sessions.get(sid)
        if s is None or s.paused_at is None:
            return True
        return now - s.paused_at >= self.shrink_after * self._expected_pause(s)

    def _demotion_order(self, sids, exempt: bool = True) -> list[str]:
        """Admitted sessions `sids` in the order they are demoted: `shrink_order`, those
        demoted `shrink_aging` times already last; those whose waits to be admitted again
        sum to `shrink_exempt_s` or more left out (never demoted by the shrink again), or
        with `exempt` False ordered after all the others. The shrink and its simulations
        (the room swap's, the leave forecast's, the gate's churn) leave them out; Agent Fair
        Share's reclaim and the tail guard's (`_reclaim_share`, `_reclaim_due`) order them
        last instead: those reclaims make room a tenant within its share (or a session
        past its deadline) is owed, and leaving the exempt sessions out refused it for
        another tenant's paused sessions (review s56 diffdemote: a within-share session
        waited 363 s, not 0 s; tests/scheduler/test_shrink_exempt_share.py).

        The exemption (session 56, issue 10): at bfcl 1x 25% the sessions over the p95 TCT
        waited 24-84 s in all to be admitted again, summed over 2-6 demotions, every one
        of them the shrink's (seed 102); the count aging only orders a session demoted
        twice after the others, and a third and fourth demotion still fell on it (the
        shrink takes aged sessions once the others do not free enough: 67 of 210 demotions
        there), each costing another wait for room as big as its context. A bound on each
        wait does not bound their sum; leaving out of the shrink a session that has
        already waited `shrink_exempt_s` does. The shrink then demotes the others, or
        leaves the commitment above the tiers until a finish (as when no paused session
        is demotable). Opt-in (default `inf`): at 20 s it failed the calibrated AFS veto
        (the two-tenant mixes' max slowdown ratio up in 19 of 32 cases, the noisy mix most:
        mean d log ratio +0.116 against at most 0.0231; the cause is not traced), though on
        the single-tenant fit seeds (101-106) at 20 s: p95 gains up at 5 of the 9 fit
        points (swe 2x 50% 2.57x -> 2.86x, swe 1x 25% 1.72x -> 1.89x), the geomean of the
        mean gains 2.272 -> 2.281, no non-thrash figure worse by the fit's slack
        (docs/scheduling_fit_history.md, "Session 56, third lane"). Ordering such a
        session last instead (as the count aging does) changed nothing at 20 s and lowered
        bfcl 1x 25% at 10 s.

        "least_work": the least predicted remaining work first, by the admission order's
        own key (`AdmissionOrder.session_cost`: expected steps left x the context held over
        them), so under the predicted and gittins orders (not fifo, which admits by arrival)
        the session demoted is the one the order admits again soonest: it
        comes back within its pause (about a second at bfcl) and sorts ahead of the longer
        sessions waiting, most of its context still cached. Why: at bfcl 1x 25% on the fit
        seeds (101-106) a session's TCT beyond its unloaded time is mostly waits to be
        admitted again after demotions (1.6-14.4 s a session), and "latest_back" demotes
        whichever paused session is expected back last, whatever it costs to bring back:
        in a probe on those seeds (RESULTS "Scheduling", eighteenth session) "least_work"
        cut that wait and raised the mean TCT gain there, where "most work first" (the
        order's consistent preemption) did not."""
        aged = self.shrink_aging or math.inf
        times = self._times_demoted
        info = self.sessions
        waited, bound = self._waited_again, self.shrink_exempt_s
        if waited and exempt:
            sids = [sid for sid in sids if waited.get(sid, 0.0) < bound]
        if self.shrink_order == "smallest":
            def key(sid):
                return times.get(sid, 0) >= aged, info[sid].blocks
        elif self.shrink_order == "least_work":
            def key(sid):
                i = info[sid]
                return times.get(sid, 0) >= aged, self.session_cost(sid, i.workflow,
                                                                    i.context)
        else:
            def key(sid):
                return times.get(sid, 0) >= aged, -info[sid].demote_at
        if waited and not exempt:  # the exempt ones last, in the same order among themselves
            return sorted(sids, key=lambda sid: (waited.get(sid, 0.0) >= bound, key(sid)))
        return sorted(sids, key=key)

    def _forget(self, sid: str) -> None:
        self._num_forgotten += 1  # the admitted sets changed (`refusal_until` reads it)
        info = self.sessions.pop(sid)
        self._committed -= info.blocks
        self._context_total -= info.ctx
        self._committed_var -= info.var
        self._paused_extra -= info.extra
        left = self._tenant_blocks[info.tenant] - info.blocks
        if left:
            self._tenant_blocks[info.tenant] = left
        else:
            del self._tenant_blocks[info.tenant]
        self._deferred.discard(sid)

    def _demote_session(self, sid: str, now: float) -> None:
        """Demote a paused admitted session, and tell the policy that its blocks are needed
        only after it is admitted again (`EvictionPolicy.session_deferred`). Under
        `undo_demotion` its admitted record is kept until then (`_undo_demotion`)."""
        info = self.sessions.get(sid)
        self._forget(sid)
        self.num_demotions += 1
        self._times_demoted[sid] = self._times_demoted.get(sid, 0) + 1
        self._set_deferred(sid, True, now)
        if self.undo_demotion and info is not None and sid in self._deferred:
            self._undoable[sid] = info, self.num_session_admissions

    def _set_deferred(self, sid: str, deferred: bool, now: float) -> None:
        s = self.manager.sessions.get(sid)
        if s is None:
            return
        if deferred:
            self._deferred.add(sid)
        else:
            self._deferred.discard(sid)
            self._undoable.pop(sid, None)
            self._returns_seen.pop(sid, None)
        self.manager.policy.session_deferred(s, deferred, now)

    def _expected_pause(self, s) -> float:
        """Seconds the session's pause is expected to last: its hint, else the Agent
        Execution Graph's prediction (the median pause of its tool), else the default."""
        hint = s.hint
        if hint is not None and hint.expected_s is not None:
            return hint.expected_s
        graph = self._graph()
        if graph is not None:
            return graph.predict(s.workflow, hint.tool if hint else None, 0.0).expected_s
        return self.default_pause_s

    def _drop_demotion(self, sid: str) -> None:
        """The session left (`forget_session`): its demotion marks go with it."""
        self._deferred.discard(sid)
        self._returns_seen.pop(sid, None)
        self._undoable.pop(sid, None)

    def _undo_demotion(self, req, now: float):
        """`undo_demotion`: a demoted session's next step `req` arrived while every full
        block of its context is still cached on the GPU (its waiting prompt's GPU hits
        cover them: nothing of it was evicted): undo the demotion. The session is admitted
        again as it was (its record, step count and growth state kept), the policy is told
        its blocks are needed again, and the step joins the admitted sessions' resumed
        steps; returns its record (None: the step waits to be admitted again, as before).
        With two or more tenants present (its own counted), only while its tenant stays
        within its share of the tiers with its working set as undone (Agent Fair Share's
        memory half). Under "unused", only while the
        room its demotion made is unused: no session was admitted (or admitted again) since
        (then undoing it restores the admitted sets as they were; once another session took
        the room, the demotion had its effect and stands). Under "unclaimed", only while that
        holds and no new session waits for admission either (the room it made would serve
        nobody now; a demoted session's step waiting does not stop it, being no claim the
        returning session's cached context does not have as well). Bounded waiting holds
        either way: no undo while the reserve holds for a waiting session (`reserve_at`
        passed), and the undone step goes ahead of every resumed step waiting (demoted here
        or not), so each counts it toward `max_overtake` and none is overtaken more (then the
        demotion stands).

        Why (RESULTS "Issue 13: kvsaga-serve's demotions on the live replay"): the shrink
        demotes, at a step's finish, the paused session predicted back last, on the
        prediction alone. When the prediction is wrong and the session is back at once
        (live seed 111: a pause of 0.006 s after a median hint of seconds), its next step
        waited to be admitted again behind the sessions admitted meanwhile, while the
        policy, told its blocks were deferred, evicted them first: a 32-block final step
        started with only the shared prefix cached. A session back with its whole context
        still cached was not "away far longer than predicted" (the issue's rule for a
        demotion). Undoing it recomputes no block, but it is not checked against the
        working-set gate: under True and "unused" (another session may have taken the room,
        or contexts grown since) the admitted working sets may exceed the tiers until the
        next finish's shrink brings them back within."""
        sid = req.session_id
        kept = self._undoable.get(sid)
        s = self.manager.sessions.get(sid)
        if kept is None or s is None or not req.resumed:
            return None
        info, admissions = kept
        if self.undo_demotion in (UNDO_UNUSED, UNDO_UNCLAIMED) and (
                admissions != self.num_session_admissions):
            return None  # another session took the room: the demotion stands
        if self.undo_demotion == UNDO_UNCLAIMED and any(
                not r.resumed for q in self._pending.values() for r in q):
            return None  # a new session waits for the room
        if now >= self.reserve_at:
            return None  # the reserve holds for a waiting session: nobody goes before it
        passed = list(self._overtaken)  # every resumed step waiting (`_insert_demoted`)
        if any(self._overtaken[p] >= self.max_overtake for p in passed):
            return None  # a waiting resumed step was overtaken `max_overtake` times already
        if self.lookup(req).gpu_hit_blocks < s.num_computed // self.manager.block_size:
            return None  # some of its context was evicted: it is admitted again as demoted
        shares = self._shares(self.overcommit * self.capacity, info.tenant)
        if shares is not None:  # its working set once undone, not its charge when demoted
            new = self._step_blocks(info)
            if self._tenant_blocks.get(info.tenant, 0) + new > shares[info.tenant]:
                return None
        for p in passed:  # its step goes ahead of theirs (`_insert_demoted`'s count)
            self._overtaken[p] += 1
        self._set_deferred(sid, False, now)
        info.blocks, info.var, info.extra, info.ctx = 0, 0.0, 0, 0  # forgotten at the demotion
        info.active = True
        self.sessions[sid] = info
        self._set_blocks(info)
        self.num_undone_demotions += 1
        return info

    def _demote(self, now: float) -> None:
        """Demote admitted sessions paused far longer than predicted (and forget those
        ended behind the scheduler's back), so that waiting sessions may be admitted."""
        if now < self._demote_at:
            return
        self._demote_at = math.inf
        sessions = self.manager.sessions
        for sid, info in list(self.sessions.items()):
            if info.active:
                continue
            if sid not in sessions:  # nothing of it stays (as `forget_session`)
                self._forget(sid)
                self._times_demoted.pop(sid, None)
                self._waited_again.pop(sid, None)
                self._drop_demotion(sid)
                self._session_left(sid)
            elif now >= info.demote_at:
                self._demote_session(sid, now)
            else:
                self._demote_at = min(self._demote_at, info.demote_at)

    # -- Agent Fair Share of the memory -----------------------------------------------------
    def _shares(self, limit: float, *also: str | None) -> dict[str | None, float] | None:
        """Each present tenant's (admitted or waiting, or one of `also`) weighted share of
        the tiers' `limit` blocks; None with fewer than two present (then nobody's share
        binds)."""
        present = {i.tenant for i in self.sessions.values()}
        present.update(self._pending)
        present.update(also)
        if len(present) < 2:
            return None
        weight = self._fair.weight
        total = math.fsum(weight(t) for t in present)  # the same in any (hash) order
        return {t: limit * weight(t) / total for t in present}

    def _room_after(self, need: Need, whole: int | None, limit: float,
                    victims: list[str]) -> bool:
        """Whether `need(victims)` blocks (the waiting session's working set and the
        reserves left once `victims` are demoted: their paused growth and growth variance
        go with them, `WorkingSetGate._reserves`) fit within `limit` beside the working sets
        left and, when `whole` is given (`readmit_charge` "context": a demoted session's
        whole own context in blocks), whether that context also fits beside the contexts
        left."""
        freed = sum(self.sessions[sid].blocks for sid in victims)
        if self._committed - freed + need(victims) > limit:
            return False
        if whole is None:
            return True
        bs = self.manager.block_size
        ctx = sum(-(-max(i.context - i.shared, 0) // bs) for sid, i in self.sessions.items()
                  if sid not in victims)
        return ctx + whole <= limit

    def _reclaim_share(self, req, own: int, need: Need, limit: float, now: float,
                       whole: int | None = None) -> bool:
        """Make room for `req`'s session (`need`: its working set `own` and the reserves,
        `_room_after`) that the tiers cannot take, if its tenant stays within its share
        with it (its working set alone counts there: the reserves are kept for every
        tenant's growth, not charged to the one asking): demote paused sessions of tenants above
        their shares (in `_demotion_order`, those `shrink_exempt_s` leaves out of the
        shrink last, not never; each only while its tenant is still above its
        share). All of them or none: when that cannot make room, nothing is demoted. This
        is the memory half of Agent Fair Share's bound (module
        kvsaga.scheduler.fair_share): a tenant is refused within its share only while
        other tenants' active sessions (a step queued or running) hold the memory. First,
        a session the tail guard made due (`_reclaim_due`) may take the room of its own
        tenant's paused sessions and of those of tenants above their shares, whether or not
        its tenant stays within its share (so the bound holds for the others). With
        `whole` (`readmit_charge` "context"), its whole own context must fit too."""
        if self._reclaim_due(req, need, limit, now, whole):
            return True
        tenant = req.tenant
        shares = self._shares(limit)
        held = self._tenant_blocks
        if shares is None or held.get(tenant, 0) + own > shares[tenant]:
            return False
        left = dict(held)
        victims: list[str] = []
        paused = [sid for sid, i in self.sessions.items() if not i.active and i.tenant != tenant]
        for sid in self._demotion_order(paused, exempt=False):
            if self._room_after(need, whole, limit, victims):
                break
            info = self.sessions[sid]
            if left.get(info.tenant, 0) > shares[info.tenant]:
                victims.append(sid)
                left[info.tenant] -= info.blocks
        if not self._room_after(need, whole, limit, victims):
            return False
        for sid in victims:
            self._demote_session(sid, now)
        return True

    # -- the tail guard's room (kvsaga.scheduler.tail_guard) --------------------------------
    def _reclaim_due(self, req, need: Need, limit: float, now: float,
                     whole: int | None = None) -> bool:
        """With the tail guard on, make room for the session the reserve holds for (its
        deadline passed): demote paused admitted sessions in `_demotion_order` (those
        `shrink_exempt_s` leaves out of the shrink last) until it fits; all of them or
        none. Without this the reserve only stops new admissions, and a session whose
        context is long waits for the admitted ones to end (on the fit seeds, for most of
        its budget again). With two or more tenants, only its own
        tenant's paused sessions and those of tenants above their shares (each only while
        its tenant is still above its share, as in `_reclaim_share`) are taken: the due
        session's tenant may be above its share, and a tenant within its share keeps the
        memory half of Agent Fair Share's bound (kvsaga.scheduler.fair_share)
        (tests/scheduler/test_tail_guard.py). One tenant alone: any paused session. With
        `whole` (`readmit_charge` "context"), its whole own context must fit too."""
        if not self.tail_wait_factor or self._holding is not req:
            return False
        shares = self._shares(limit)
        left = dict(self._tenant_blocks)
        paused = [sid for sid, i in self.sessions.items() if not i.active]
        victims: list[str] = []
        for sid in self._demotion_order(paused, exempt=False):
            if self._room_after(need, whole, limit, victims):
                break
            info = self.sessions[sid]
            if (shares is not None and info.tenant != req.tenant
                    and left.get(info.tenant, 0) <= shares[info.tenant]):
                continue  # AFS: a tenant within its share keeps its room
            victims.append(sid)
            left[info.tenant] = left.get(info.tenant, 0) - info.blocks
        if not self._room_after(need, whole, limit, victims):
            return False
        for sid in victims:
            self._demote_session(sid, now)
        return True
