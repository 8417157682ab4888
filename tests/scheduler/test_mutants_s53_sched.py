"""Session 53 mutation review of the `workflow` scheduler: tests that kill hand mutants of who
is tried for admission (kvsaga/scheduler/admission_candidates.py: the backfill window and
its bound, Agent Fair Share's entitled tenants, the warm-step window), of whom the reserve
holds for (kvsaga/scheduler/admission_order.py) and when the simulator wakes for it
(kvsaga/scheduler/workflow.py `wake_time`), and of whom the shrink may demote and when a
demotion may be undone (kvsaga/scheduler/demotion.py), which the suite let survive
(/work/lanes/findings/s53/mutsched.md lists each mutant)."""

from __future__ import annotations

import pytest

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import a_paused, manager, next_step, toks, wf
from tests.scheduler.test_backfill_bound_per_session import big_passed_once
from tests.scheduler.test_undo_demotion import _demoted


def test_the_backfill_bound_counts_per_waiting_session():
    """`max_backfill` bounds how many sessions go ahead of ONE waiting session: once the
    session passed that many times leaves the queue (here it is cancelled), the next head
    that does not fit may be passed again, its own count starting at 0."""
    m, s, ex, big = big_passed_once()
    s.finish(big, 2.0, ended=True)  # big is cancelled while it waits
    assert s.waiting == []
    big2 = ToyRequest("big2", toks(500, 30), max_new=1)
    s2 = ToyRequest("s2", toks(700, 4), max_new=1)
    for r in (big2, s2):
        s.add(r, 2.0)
    out = s.schedule(2.0, ex)
    assert [r.session_id for r in out.admitted] == ["s2"]
    assert s.waiting == [big2]


@pytest.mark.parametrize("window, expected", [(1, []), (2, ["s1"])])
def test_the_backfill_tries_exactly_backfill_window_sessions_behind_the_head(window, expected):
    """When the head does not fit, the `backfill_window` sessions queued right behind it
    are tried, no fewer: a small session second behind the head is reached with a window
    of 2, not with a window of 1 (the one first behind it does not fit either)."""
    m, s, ex = a_paused(backfill_window=window)  # a pauses, admitted: 7 blocks
    big = ToyRequest("big", toks(100, 30), max_new=1)  # 10 blocks: 17 > 16
    mid = ToyRequest("mid", toks(200, 28), max_new=1)  # 9 blocks: 16, its growth 18 > 16
    s1 = ToyRequest("s1", toks(300, 4), max_new=1)
    for r in (big, mid, s1):
        s.add(r, 1.0)
    out = s.schedule(1.0, ex)
    assert [r.session_id for r in out.admitted] == expected
    assert s.waiting[:2] == [big, mid]


@pytest.mark.parametrize("y_tokens, admitted", [(18, ["y2"]), (22, [])])
def test_another_tenant_is_tried_past_a_head_only_below_its_share(y_tokens, admitted):
    """Agent Fair Share of memory: when the next tenant's session does not fit, the next
    session of another waiting tenant is tried only while that tenant holds LESS than its
    share of the tiers (two tenants: 8 of 16 blocks). Tenant y holding 7 blocks gets its
    small session admitted past x's large one; holding exactly 8 (its share), it does not."""
    m = manager(16)
    s = wf(m, reserve_decode_tokens=0)
    ex = ToyExecutor(m)
    s.add(ToyRequest("y1", toks(0, y_tokens), max_new=1, last=False, tenant="y"), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)  # y1 pauses: ceil((18 + 8) / 4) = 7 or (22 + 8): 8
    assert s._tenant_blocks == {"y": 7 if y_tokens == 18 else 8}
    big = ToyRequest("xbig", toks(100, 30), max_new=1, tenant="x", arrival=1.0)  # 10 blocks
    small = ToyRequest("y2", toks(300, 4), max_new=1, tenant="y", arrival=1.5)  # 3 blocks
    for r in (big, small):
        s.add(r, r.arrival)
    out = s.schedule(2.0, ex)
    assert [r.session_id for r in out.admitted] == admitted
    assert s.waiting[0] is big


def test_entitled_tenants_are_tried_largest_deficit_first():
    """The other tenants tried past a head that does not fit (`_entitled_heads`) go in
    Agent Fair Share order: the largest deficit first, not the oldest session first."""
    m = manager(64)
    s = wf(m)
    for sid, tenant, at in (("x1", "x", 0.0), ("y1", "y", 0.1), ("z1", "z", 0.2)):
        s.add(ToyRequest(sid, toks(100 * len(s.waiting), 4), max_new=1, tenant=tenant,
                         arrival=at), at)
    s._fair.charge("x")  # every deficit 0: x (oldest) is in fair order; +1/3 each, x -1
    assert s._fair.deficits == pytest.approx({"x": -2 / 3, "y": 1 / 3, "z": 1 / 3})
    s._fair.charge("y")  # y's turn (tied with z, older): y -1 + 1/3
    assert s._fair.deficits == pytest.approx({"x": -1 / 3, "y": -1 / 3, "z": 2 / 3})
    # z (deficit 2/3, queued after x) before x (-1/3, the oldest)
    assert [r.session_id for r in s._entitled_heads("y")] == ["z1", "x1"]


@pytest.mark.parametrize("window, picked", [(2, "a"), (3, "c")])
def test_the_warm_step_is_looked_for_within_admission_window_steps_only(window, picked):
    """`admission_window` counts the resumed queue's steps from its head, head included:
    with a cold head, a cold second and a warm third, a window of 2 keeps the head, a
    window of 3 reaches the warm step."""
    m = manager(64)
    s = wf(m, admission_window=window)
    ex = ToyExecutor(m)
    first = [ToyRequest(x, toks(1000 * i, 8), max_new=1, last=False)
             for i, x in enumerate("abc", 1)]
    for r in first:
        s.add(r, 0.0)
    for t in (0.0, 0.1):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"a", "b", "c"} and not s.running
    # a's and b's next steps are long (the middle of the prompt is past what is cached:
    # cold), c's is short (warm)
    steps = [next_step(r, toks(500 + 100 * i, n), 1.0)
             for i, (r, n) in enumerate(zip(first, (40, 40, 1), strict=True))]
    assert [s._is_warm(r) for r in steps] == [False, False, True]
    for r in steps:
        s._enqueue(r, 1.0, retry=False)
    assert list(s._resumed) == steps
    assert s._pick_resumed().session_id == picked


def test_the_reserve_holds_for_the_first_queued_of_sessions_due_together():
    """Two sessions queued at the same time have the same deadline: the reserve holds for
    the one queued first (as `_first_waiting`'s scan after a departure would pick), not
    the later one, even where the "predicted" order sorts the later one (less work) first.
    Past the deadline, the first queued is admitted first."""
    m = manager(64)
    s = wf(m, admission_order="predicted")
    ex = ToyExecutor(m)
    p = ToyRequest("p", toks(0, 24), max_new=1)
    q = ToyRequest("q", toks(100, 4), max_new=1)
    for r in (p, q):
        s.add(r, 0.0)
    assert s._first_waiting() is p
    s._sort_pending()
    assert s.waiting == [q, p]  # q is predicted less work
    out = s.schedule(s.reserve_at, ex)
    assert [r.session_id for r in out.admitted] == ["p", "q"]


def test_the_shrink_spares_a_tenant_holding_exactly_its_share():
    """Agent Fair Share in the shrink: only tenants ABOVE their shares of the tiers (two
    tenants: 8 of 16 blocks) have paused sessions demoted. y's paused session holds exactly
    8 blocks and is expected back last (first in the shrink's order), yet x's grown
    session, 12 blocks, is the one demoted."""
    m = manager(16)
    s = wf(m, paused_growth=False, reserve_decode_tokens=0)
    ex = ToyExecutor(m)
    ya = ToyRequest("ya", toks(0, 31), max_new=1, last=False, tenant="y")
    s.add(ya, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=100.0)  # y pauses at 32 tokens: 8 blocks
    xa = ToyRequest("xa", toks(100, 23), max_new=1, last=False, tenant="x")
    s.add(xa, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)  # x pauses at 24 tokens: 6 blocks
    assert s._tenant_blocks == {"y": 8, "x": 6}
    x2 = next_step(xa, toks(500, 21), 2.0)
    s.add(x2, 2.0)
    ex.run(s, s.schedule(2.0, ex), 2.0)  # x's context: 46 tokens, 12 blocks; 20 > 16
    assert s.num_demotions == 1
    assert set(s.sessions) == {"ya"} and s._tenant_blocks == {"y": 8}


def test_the_wake_time_does_not_repeat_a_reserve_that_already_holds():
    """Once the reserve holds for the session due first (its deadline passed and it does
    not fit), `wake_time` no longer names its start, which is past: a simulator waking
    there would wake again at once, forever. The next wake is a later timer (here none)."""
    m = manager(16)
    s = wf(m, max_wait_s=5.0)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 20), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=1000.0)  # a pauses, admitted: 7 blocks
    big = ToyRequest("big", toks(100, 30), max_new=1, arrival=1.0)  # 10 blocks: 17 > 16
    s.add(big, 1.0)
    assert s.reserve_at == 6.0 and s.wake_time == 6.0
    assert not s.schedule(6.0, ex).admitted  # the reserve holds for big, which waits
    assert s._holding is big
    assert s.wake_time > 6.0


def test_no_undo_at_the_instant_the_reserve_starts():
    """The reserve holds from its start itself (`now >= reserve_at`), so a demoted session's
    step arriving at that very instant is not undone past the session the reserve holds
    for: "wide" queued at 1.5 with max_wait_s 0.5, big's step arrives at 2.0."""
    m, s, ex, big2, seen = _demoted(True, wide_waiting=True, max_wait_s=0.5)
    assert s.reserve_at == 2.0 == big2.arrival
    assert "big" not in s.sessions and "big" in s._deferred
    assert s.num_undone_demotions == 0
    m.check_integrity()
