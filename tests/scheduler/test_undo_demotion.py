"""A demoted session back while its context is still cached (`undo_demotion`,
kvsaga/scheduler/demotion.py `_undo_demotion`): admitted again at once, as it was, only when
every full block of its context is still on the GPU; off by default; its parameter's check;
and the scheduler state machine (tests/test_manager_stateful.py) run with it under every
policy."""

from __future__ import annotations

import pytest

from kvsaga.policy import POLICIES
from kvsaga.scheduler import WorkflowScheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, machine, reach
from tests.scheduler.helpers import BS, manager, next_step, toks, wf


class _Deferrals:
    """Wraps a policy's `session_deferred` to record its calls."""

    def __init__(self, policy) -> None:
        self.calls: list[tuple[str, bool]] = []
        inner = policy.session_deferred

        def record(s, deferred, now):
            self.calls.append((s.session_id, deferred))
            return inner(s, deferred, now)
        policy.session_deferred = record


def _demoted(undo, evict: bool = False, wide_waiting: bool = False, keep_waiting=False,
             **kw):
    """Session "big" (40 tokens) admitted, run one step and paused, then demoted; `evict`:
    another session then takes the whole pool (big's blocks are evicted); `wide_waiting`: a
    second session ("keep", 40 tokens) is admitted and paused beside big, and after big's
    demotion a new one ("wide", 100 tokens) that the gate cannot admit beside keep is
    queued; `keep_waiting` (with `wide_waiting`): keep is demoted too, without an undo
    record (as if its context were evicted), and its next step waits to be admitted
    again. Then big's next step (45 tokens, extending its context) arrives. `kw`: the
    scheduler's other parameters."""
    m = manager(32)
    s = wf(m, undo_demotion=undo, **kw)
    seen = _Deferrals(m.policy)
    ex = ToyExecutor(m)
    big1 = ToyRequest("big", toks(100, 40), max_new=1, last=False, workflow="w")
    s.add(big1, 0.0)
    if wide_waiting:  # a second admitted session, paused, keeps the gate shut for "wide"
        keep1 = ToyRequest("keep", toks(300, 40), max_new=1, last=False, workflow="w")
        s.add(keep1, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    while s.running:  # keep's 40-token prefill takes two batch steps (the admitted pause)
        ex.run(s, s.schedule(0.0, ex), 0.0)
    steps = s.sessions["big"].steps
    assert steps == 1 and not s.num_waiting
    s._demote_session("big", 1.0)
    assert "big" in s._deferred and "big" not in s.sessions
    if evict:
        m.begin_step("filler", toks(5000, 32 * BS), now=1.5)
        m.allocate_slots("filler", 32 * BS, now=1.5)
        m.end_session("filler", now=1.5)
    if wide_waiting:
        s.add(ToyRequest("wide", toks(7000, 100), max_new=1, arrival=1.5), 1.5)
        assert not s.schedule(1.5, ex).admitted
    if keep_waiting:
        s._demote_session("keep", 1.6)
        del s._undoable["keep"]  # as if its context were evicted: its demotion stands
        s.add(next_step(keep1, toks(8000, 4), 1.6), 1.6)
        assert "keep" not in s.sessions and s._overtaken["keep"] == 0
    big2 = next_step(big1, toks(500, 4), 2.0)
    s.add(big2, 2.0)
    return m, s, ex, big2, seen


@pytest.mark.parametrize("undo", [True, "unused", "unclaimed"])
def test_a_demoted_session_back_with_its_context_cached_is_admitted_again_at_once(undo):
    m, s, ex, big2, seen = _demoted(undo)
    info = s.sessions["big"]
    assert "big" not in s._deferred and not s._undoable
    assert info.steps == 1 and info.active  # its record kept, not a new session's
    assert list(s._resumed) == [big2] and not s._pending
    assert s.num_undone_demotions == 1 and s.num_demotions == 1
    assert seen.calls == [("big", True), ("big", False)]  # the policy told both ways
    assert s._committed == info.blocks > 0 and s._tenant_blocks[None] == info.blocks
    out = s.schedule(2.0, ex)
    assert out.admitted == [big2]
    m.check_integrity()


def test_off_by_default_the_step_waits_to_be_admitted_again():
    m, s, ex, big2, seen = _demoted(False)
    assert "big" not in s.sessions and "big" in s._deferred and not s._undoable
    assert [r.session_id for r in s.waiting] == ["big"] and not s._resumed
    assert s.num_undone_demotions == 0 and seen.calls == [("big", True)]
    assert WorkflowScheduler.__init__.__kwdefaults__["undo_demotion"] is False
    m.check_integrity()


def test_a_demoted_session_whose_context_was_evicted_waits_as_before():
    m, s, ex, big2, seen = _demoted(True, evict=True)
    assert s.lookup(big2).gpu_hit_blocks < 10  # its 10 full blocks are not all there
    assert "big" not in s.sessions and "big" in s._deferred
    assert [r.session_id for r in s.waiting] == ["big"] and not s._resumed
    assert s.num_undone_demotions == 0 and seen.calls == [("big", True)]
    t = 2.0
    while s.num_waiting or s.running:  # admitted again the usual way, and run
        ex.run(s, s.schedule(t, ex), t)
        t += 1.0
    assert "big" not in s._deferred and not s._undoable
    m.check_integrity()


@pytest.mark.parametrize("undo,undone", [(True, True), ("unused", False)])
def test_unused_undoes_only_while_nobody_took_the_room(undo, undone):
    """A new 8-token session is admitted after big's demotion (its blocks all still cached
    when big's next step arrives): True undoes the demotion all the same, "unused" lets it
    stand (another session took the room it made)."""
    m = manager(32)
    s = wf(m, undo_demotion=undo)
    ex = ToyExecutor(m)
    big1 = ToyRequest("big", toks(100, 40), max_new=1, last=False, workflow="w")
    s.add(big1, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    s._demote_session("big", 1.0)
    s.add(ToyRequest("new", toks(3000, 8), max_new=1, last=False, arrival=1.0), 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)
    assert "new" in s.sessions
    big2 = next_step(big1, toks(500, 4), 2.0)
    assert s.lookup(big2).gpu_hit_blocks == 10
    s.add(big2, 2.0)
    assert ("big" in s.sessions) is undone and ("big" in s._deferred) is not undone
    assert s.num_undone_demotions == int(undone)
    m.check_integrity()


@pytest.mark.parametrize("undo,undone", [("unused", True), ("unclaimed", False)])
def test_unclaimed_keeps_a_demotion_a_new_session_waits_for(undo, undone):
    """Nobody admitted since big's demotion, but a new session ("wide", 100 tokens, which
    the working set of "keep", admitted and paused, leaves no room for) waits for admission
    when big's next step arrives: "unused" undoes the demotion, "unclaimed" lets it stand
    for the waiting session."""
    m, s, ex, big2, seen = _demoted(undo, wide_waiting=True)
    assert ("big" in s.sessions) is undone and ("big" in s._deferred) is not undone
    assert s.num_undone_demotions == int(undone)
    m.check_integrity()


@pytest.mark.parametrize("max_wait_s,undone", [(120.0, True), (0.1, False)])
def test_no_undo_while_the_reserve_holds(max_wait_s, undone):
    """"wide" has waited 0.5 s for admission when big's next step arrives: with
    max_wait_s 0.1 its deadline has passed and the reserve holds admission for it, so the
    demotion stands (big's step waits behind it); with 120 s it is undone."""
    m, s, ex, big2, seen = _demoted(True, wide_waiting=True, max_wait_s=max_wait_s)
    assert ("big" in s.sessions) is undone and ("big" in s._deferred) is not undone
    assert s.num_undone_demotions == int(undone)
    m.check_integrity()


@pytest.mark.parametrize("max_overtake,undone", [(16, True), (0, False)])
def test_an_undo_counts_toward_max_overtake(max_overtake, undone):
    """keep's step waits to be admitted again when big's demotion would be undone: the undo
    puts big's step ahead of it, so it counts as overtaking keep's; with max_overtake 0 the
    demotion stands."""
    m, s, ex, big2, seen = _demoted(True, wide_waiting=True, keep_waiting=True,
                                    max_overtake=max_overtake)
    assert ("big" in s.sessions) is undone
    assert s._overtaken["keep"] == int(undone)
    m.check_integrity()


def _two_tenants(grow: int, waiting: str):
    """Tenants a ("big", 40 tokens) and b ("o", 8 tokens) admitted on a 48-block pool and
    paused, paused sessions charged their contexts alone; big is demoted (charged 11 blocks
    then); a new session of tenant `waiting` queues; then big's next step arrives, its
    context cached. `grow`: the growth prior, tokens."""
    m = manager(48)
    s = wf(m, undo_demotion=True, prior_growth_tokens=grow, paused_growth=False)
    ex = ToyExecutor(m)
    big1 = ToyRequest("big", toks(100, 40), max_new=1, last=False, workflow="w", tenant="a",
                      salt="a")
    s.add(big1, 0.0)
    s.add(ToyRequest("o", toks(300, 8), max_new=1, last=False, workflow="w", tenant="b",
                     salt="b"), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    assert s.sessions["big"].blocks == 11
    s._demote_session("big", 1.0)
    s.add(ToyRequest("new", toks(600, 4), max_new=1, tenant=waiting, salt=waiting,
                     arrival=1.5), 1.5)
    s.add(next_step(big1, toks(500, 4), 2.0), 2.0)
    return m, s


@pytest.mark.parametrize("grow,waiting,undone", [
    (0, "c", True),      # a is present only through big: a third of 48 blocks, 11 fit
    (0, "a", True),      # half of 48 blocks
    (60, "a", False)])   # undone, big's working set (41 + 60 tokens: 26 blocks) > 24
def test_the_share_check_reads_the_working_set_as_undone(grow, waiting, undone):
    """The share check counts the returning session's tenant as present and reads its
    working set once undone (its active growth charged), not its charge when demoted."""
    m, s = _two_tenants(grow, waiting)
    assert ("big" in s.sessions) is undone and s.num_undone_demotions == int(undone)
    m.check_integrity()


def test_a_forgotten_session_leaves_no_record_to_undo():
    m = manager(32)
    s = wf(m, undo_demotion=True)
    ex = ToyExecutor(m)
    s.add(ToyRequest("big", toks(100, 40), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    s._demote_session("big", 1.0)
    assert "big" in s._undoable
    m.end_session("big", now=1.5)
    s.forget_session("big", 1.5)
    assert not s._undoable and not s._deferred


@pytest.mark.parametrize("bad", ["yes", 1, 1.0, None])
def test_undo_demotion_names_its_values(bad):
    with pytest.raises(ValueError, match=f"undo_demotion must be one of True, False, 'unused', "
                                         f"'unclaimed', got {bad!r}"):
        wf(manager(16), undo_demotion=bad)


@pytest.mark.parametrize("undo", [True, "unused", "unclaimed"])
def test_the_state_machine_demotes_and_undoes(undo):
    """The state machine below reaches the code under test: over the same derandomized
    runs, sessions are demoted, and (True, "unused") some demotions are undone. "unclaimed"
    undoes none there (a new session nearly always waits); its undo is
    test_a_demoted_session_back_with_its_context_cached_is_admitted_again_at_once's.
    150 runs: the runs differ with what the process imported before (collected with
    tests/engine/test_scheduler.py, 60 runs under "unused" undid none; alone, 3; 150 runs
    undid 4 and 18), so a batch that reaches too little is followed by larger ones (other
    runs) before the test calls the code unreached."""
    params = {**DEMOTING, "undo_demotion": undo}
    for examples in (150, 300, 600):
        c = reach("lru", params, examples=examples)
        if c["demotions"] > 0 and (undo == "unclaimed" or c["undone"] > 0):
            break
    assert c["demotions"] > 0
    if undo != "unclaimed":
        assert c["undone"] > 0, c


# The scheduler state machine (admission, preemption, chunked prefill: every invariant of the
# manager and the queues, and the scheduler's books: `DemotingMachine.books`) with the undo
# on, each way, under every policy, with parameters under which it demotes.
for _name in POLICIES:
    for _undo in (True, "unused", "unclaimed"):
        globals()[f"TestSchedulerStateful_undo_demotion_{_undo}_{_name.replace('-', '_')}"] = (
            machine(_name, {**DEMOTING, "undo_demotion": _undo}))
