"""Sessions' whole lives through a core scheduler, with the calls an engine must not make
mixed in: random arrivals (tenants), batch steps, pauses, resumes, aborts of waiting steps,
ends of paused sessions (`forget_session`), and refused calls: a second step for a session
that has one waiting or running, forgetting such a session, a bad time, finishing a step the
scheduler never saw. A refused call raises a ValueError and changes nothing (the scheduler's
whole state and the manager's are as before). After every rule the books hold (the base
machine's `consistent`, and `DemotingMachine`'s books under workflow); at the end, with no
more arrivals or resumes, every waiting step is admitted and finishes within a bounded
number of batch steps (no step is left waiting forever)."""

from __future__ import annotations

import math

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import precondition, rule

from kvsaga.policy import POLICIES
from kvsaga.scheduler import SCHEDULERS
from tests.sched_helpers import ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, DemotingMachine
from tests.scheduler.helpers import scheduler_state
from tests.test_core_parity import snapshot
from tests.test_manager_stateful import SchedulerMachine, tokens

DRAIN_STEPS = 400  # batch steps, 1 s apart, for the last waiting steps to finish


def manager_state(m):
    """`snapshot` less the eviction order of an oracle policy (belady's refreshes the oracle's
    stale answers lazily as a search reads them: two reads in a row may list two orders)."""
    got = snapshot(m)
    return got[:-1] if getattr(m.policy, "needs_oracle", False) else got


class LifecycleMachine(SchedulerMachine):
    def refused(self, fn):
        """fn() must raise a ValueError (InvalidRequest is one) and change nothing."""
        before = scheduler_state(self.s), manager_state(self.m)
        try:
            fn()
        except ValueError:
            after = scheduler_state(self.s), manager_state(self.m)
            assert after == before, "refusal changed state"
            return
        raise AssertionError("the call was not refused")

    @precondition(lambda self: self.live)
    @rule(data=st.data(), extra=tokens)
    def add_second_step(self, data, extra):
        sid = data.draw(st.sampled_from(sorted(self.live)))
        self.refused(lambda: self.s.add(ToyRequest(sid, [7, 7, 7, 7] + extra, 2,
                                                   arrival=self.now, resumed=True), self.now))

    @precondition(lambda self: self.live)
    @rule(data=st.data())
    def forget_live(self, data):
        sid = data.draw(st.sampled_from(sorted(self.live)))
        self.refused(lambda: self.s.forget_session(sid, self.now))

    @rule(bad=st.sampled_from([math.nan, math.inf, "1", None]), what=st.integers(0, 3))
    def bad_time(self, bad, what):
        calls = [lambda: self.s.schedule(bad, self.ex),
                 lambda: self.s.add(ToyRequest("fresh", [7, 7], 1), bad),
                 lambda: self.s.forget_session("nobody", bad),
                 lambda: self.s.finish(ToyRequest("nobody", [7]), bad)]
        self.refused(calls[what])

    @rule(bad=st.sampled_from([math.nan, math.inf, -math.inf, 2e15, "1", None, True]),
          resumed=st.booleans())
    def bad_arrival(self, bad, resumed):
        """Review s50 scheduler 1: a step whose own arrival is no time is refused at `add`
        (a fresh session's first step, or a paused one's next)."""
        sid = sorted(self.paused)[0] if resumed and self.paused else "fresh"
        self.refused(lambda: self.s.add(ToyRequest(sid, [7, 7, 7, 7], 1, arrival=bad,
                                                   resumed=sid != "fresh"), self.now))

    @rule()
    def finish_unknown(self):
        before = scheduler_state(self.s)
        assert self.s.finish(ToyRequest("nobody", [7]), self.now) is False
        self.s.forget_session("nobody", self.now)  # unknown: ignored
        assert scheduler_state(self.s) == before

    @precondition(lambda self: self.paused)
    @rule(data=st.data())
    def end_paused(self, data):
        sid = data.draw(st.sampled_from(sorted(self.paused)))
        del self.paused[sid]
        if sid in self.m.sessions:
            self.m.end_session(sid, now=self.now)
        self.s.forget_session(sid, self.now)
        self.s.forget_session(sid, self.now)  # twice: the second is a no-op

    @precondition(lambda self: self.s.num_waiting)
    @rule(data=st.data())
    def abort_waiting(self, data):
        req = data.draw(st.sampled_from(list(self.s.waiting)))
        sid = req.session_id
        if req.resumed:  # the session pauses again, as at its last finish
            self.s.finish(req, self.now)
            self.paused[sid] = req
        else:  # a first step: its session ends with it
            if sid in self.m.sessions:
                self.m.end_session(sid, now=self.now)
            self.s.finish(req, self.now, ended=True)
        self.live.discard(sid)

    def teardown(self):
        # No more arrivals: every waiting step must be served (bounded waiting), and the
        # books hold at each step.
        for _ in range(DRAIN_STEPS):
            if not self.s.has_work:
                break
            self.step(1.0)
            self.consistent()
        assert not self.s.has_work, (
            f"steps still waiting after {DRAIN_STEPS} batch steps: "
            f"{[r.session_id for r in self.s.waiting]}, running "
            f"{[r.session_id for r in self.s.running]}")
        super().teardown()


class DemotingLifecycleMachine(LifecycleMachine, DemotingMachine):
    """The same under the workflow scheduler's demoting parameters, its books checked."""


def _case(base, scheduler: str, policy: str, params: dict, examples: int):
    cls = type(f"Lifecycle_{scheduler}_{policy}", (base,),
               {"scheduler": scheduler, "policy": policy, "params": params, "key": "life"})
    cls.TestCase.settings = settings(max_examples=examples, stateful_step_count=40,
                                     deadline=None)
    return cls.TestCase


for _sched in SCHEDULERS:
    globals()[f"TestLifecycle_{_sched}"] = _case(LifecycleMachine, _sched, "lru", {}, 30)
for _name in POLICIES:
    globals()[f"TestLifecycle_demoting_{_name.replace('-', '_')}"] = _case(
        DemotingLifecycleMachine, "workflow", _name, DEMOTING, 10)
TestLifecycle_demoting_tenants_weighted = _case(
    DemotingLifecycleMachine, "workflow", "saga",
    {**DEMOTING, "tenant_weights": {"a": 3.0, "b": 0.5}, "undo_demotion": True}, 15)
