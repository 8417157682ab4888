"""A scheduler state machine (tests/test_manager_stateful.py's `SchedulerMachine`) that
reaches the workflow scheduler's demotions and their undoing: a resumed step extends its
session's context whole (the base machine cuts it to its last 40 tokens, which changes its
prefix, so a demoted session's context is never found cached and no demotion is undone),
and the scheduler's books are checked after every rule. Its `teardown` counts, per
parameter set, the runs' demotions, undone demotions and `_away_long` calls, so a test can
assert that the new code was reached (`reach`)."""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import invariant, precondition, rule, run_state_machine_as_test

from tests.sched_helpers import ToyRequest
from tests.test_manager_stateful import POLICIES, SchedulerMachine, tokens

COUNTS: dict[str, Counter] = {}
# Scheduler parameters under which the machine's short runs demote: a small growth prior
# (the default 256 tokens is 64 of its 4-token blocks, beyond the 12-block pool), pauses
# expected to last 1 s with deadlines at half that, and no idle wait before overcommitting.
DEMOTING = {"prior_growth_tokens": 8, "demote_min_s": 0.0, "demote_factor": 0.5,
            "default_pause_s": 1.0, "idle_admit_s": 0.0}


class DemotingMachine(SchedulerMachine):
    scheduler = "workflow"
    key = ""  # which `COUNTS` entry the runs add to

    def __init__(self):
        super().__init__()
        self.away_long = self.away_long_true = 0  # `_away_long` calls, True answers
        inner = getattr(self.s, "_away_long", None)
        if inner is not None:
            def away_long(sid, now):
                self.away_long += 1
                long = inner(sid, now)
                self.away_long_true += long
                return long
            self.s._away_long = away_long

    @precondition(lambda self: self.paused)
    @rule(data=st.data(), extra=tokens, last=st.booleans())
    def resume(self, data, extra, last):
        sid = data.draw(st.sampled_from(sorted(self.paused)))
        prev = self.paused.pop(sid)
        prompt = prev.prompt + prev.out + extra
        if len(prompt) > 40:  # the pool's 48 tokens: cut as the base machine does
            prompt = prompt[-40:]
        self.s.add(ToyRequest(sid, prompt, prev.max_new, tenant=prev.tenant, salt=prev.salt,
                              arrival=self.now, resumed=True, last=last), self.now)
        self.live.add(sid)

    @invariant()
    def books(self):
        s = self.s
        assert s._committed == sum(i.blocks for i in s.sessions.values())
        assert s._context_total == s._context_blocks_summed()  # (review s50 scheduler 2)
        assert s._pending_resumed == s._demoted_waiting_scanned()  # (review s50 scheduler 3)
        per: dict = {}
        for i in s.sessions.values():
            per[i.tenant] = per.get(i.tenant, 0) + i.blocks
        assert {t: b for t, b in per.items() if b} == s._tenant_blocks
        assert not set(s._undoable) & set(s.sessions)  # undoable: demoted, not admitted
        assert set(s._undoable) <= set(s._deferred)
        # The prefill cap (`DecodeStall`): nothing carried between batch steps; a step
        # counted as recomputing is running (a preempted one is counted again from its
        # retry's lookup, a finished one dropped), with tokens left to recompute; paused
        # sessions' computed tokens are kept only for sessions the manager still has.
        assert s._prefill_left is None and not s._in_schedule
        running = {id(r) for r in s.running}
        for i, (r, left) in s._recompute.items():
            assert id(r) == i and i in running and left > 0
        assert set(s._paused_computed) <= set(s.manager.sessions)

    def teardown(self):
        c = COUNTS.setdefault(self.key, Counter())
        c["runs"] += 1
        c["demotions"] += self.s.num_demotions
        c["undone"] += self.s.num_undone_demotions
        c["away_long"] += self.away_long
        c["away_long_true"] += self.away_long_true


def machine(policy: str, params: dict):
    """The machine's TestCase under `policy` with the workflow scheduler's `params`."""
    return machine_class(policy, params).TestCase


def machines(prefix: str, params: dict) -> dict[str, type]:
    """`machine(policy, params)` under every policy, named
    `TestSchedulerStateful_{prefix}_{policy}` (a test module adds them to its globals)."""
    return {f"TestSchedulerStateful_{prefix}_{name.replace('-', '_')}": machine(name, params)
            for name in POLICIES}


def machine_class(policy: str, params: dict):
    key = f"{policy} {sorted(params.items())}"
    cls = type(f"DemotingMachine_{policy}", (DemotingMachine,),
               {"policy": policy, "params": params, "key": key})
    cls.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
    return cls


@contextmanager
def _no_local_constants():
    """Hypothesis (6.131+) mixes into its draws the literals of every non-test module of
    this project in `sys.modules` when the example is drawn, so a derandomized run draws
    other examples once an earlier test has imported another kvsaga module (the simulator
    test in test_admission_order.py imports kvsaga.sim.workloads, whose arrival_rate=0.004
    became a step's dt): the same seed, other runs, other counts. Within this block no
    local constant is drawn (its global ones still are); a Hypothesis without the pool is
    left as it is."""
    try:
        from hypothesis.internal.conjecture import providers as pv
        get, cache = pv._get_local_constants, pv.CONSTANTS_CACHE
        empty = pv.Constants()
    except (ImportError, AttributeError):
        yield
        return
    cache.cache.clear()  # the pools it holds were filtered from the local constants
    pv._get_local_constants = lambda: empty
    try:
        yield
    finally:
        pv._get_local_constants = get
        cache.cache.clear()


def reach(policy: str, params: dict, examples: int = 60) -> Counter:
    """Run the machine `examples` times (derandomized: the same runs every time, whichever
    modules earlier tests imported: `_no_local_constants`) and return what its runs
    counted."""
    cls = machine_class(policy, params)
    COUNTS.pop(cls.key, None)
    with _no_local_constants():
        run_state_machine_as_test(cls, settings=settings(
            max_examples=examples, stateful_step_count=40, deadline=None, derandomize=True,
            database=None, suppress_health_check=list(HealthCheck)))
    return COUNTS[cls.key]


def assert_reaches_both_answers(monkeypatch, method: str, params: dict) -> dict:
    """Count the True and False answers of `WorkflowScheduler.<method>` over `reach("lru",
    params)` at 150, then 300, then 600 examples until both were seen; assert the runs
    demoted and both answers came (the code under test is reached, the books holding after
    every rule). Returns the answers' counts."""
    from kvsaga.scheduler import WorkflowScheduler

    answers = {True: 0, False: 0}
    inner = getattr(WorkflowScheduler, method)

    def counted(self, *args):
        got = inner(self, *args)
        answers[got] += 1
        return got
    monkeypatch.setattr(WorkflowScheduler, method, counted)
    for examples in (150, 300, 600):
        c = reach("lru", params, examples=examples)
        if answers[True] and answers[False]:
            break
    assert c["demotions"] > 0
    assert answers[True] > 0 and answers[False] > 0, answers
    return answers


class AbortingMachine(DemotingMachine):
    """`DemotingMachine` plus the engine's abort of a waiting step (a client gone: no
    `finish_step`; `end_session` first when the session ends with it, as a first step's
    abort does): the session, unless ended, is paused again as at its last finish, and no
    session that left keeps per-session state. A subclass, so the other machines' derandomized
    runs (`reach`) stay as they were."""

    @precondition(lambda self: self.s.num_waiting)
    @rule(data=st.data(), ended=st.booleans())
    def abort_waiting(self, data, ended):
        req = data.draw(st.sampled_from(list(self.s.waiting)))
        sid = req.session_id
        ended = ended or not req.resumed  # a first step's session ends with it
        info = self.s.sessions.get(sid)
        if ended and sid in self.m.sessions:
            self.m.end_session(sid, now=self.now)
        self.s.finish(req, self.now, ended=ended)
        self.live.discard(sid)
        if not ended:
            self.paused[sid] = req
            if info is not None and sid in self.s.sessions:
                assert not info.active and not info.on_prompt
                assert info.last_context is None or info.context == info.last_context

    @invariant()
    def nothing_left_behind(self):
        s, known = self.s, set(self.m.sessions) | self.live
        for d in (s._last_finish, s._steps_seen, s._started, s._budgets._start,
                  s._times_demoted, s._deferred):
            assert set(d) <= known, (d, known)


def aborting(policy: str, params: dict):
    """`AbortingMachine`'s TestCase under `policy` with the scheduler's `params`."""
    cls = type(f"AbortingMachine_{policy}", (AbortingMachine,),
               {"policy": policy, "params": params, "key": f"abort {policy}"})
    cls.TestCase.settings = settings(max_examples=25, stateful_step_count=40, deadline=None)
    return cls.TestCase
