"""Session 50 mutation testing: `undo_demotion` (kvsaga/scheduler/demotion.py
`_undo_demotion`) needs EVERY full block of the demoted session's context still cached:
one evicted block is enough for the demotion to stand (tests/scheduler/test_undo_demotion.py
evicts them all)."""

from __future__ import annotations

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import BS, manager, next_step, toks, wf
from tests.scheduler.test_undo_demotion import _demoted


def test_one_full_block_evicted_keeps_the_demotion():
    m = manager(32)
    s = wf(m, undo_demotion=True)
    ex = ToyExecutor(m)
    big1 = ToyRequest("big", toks(100, 40), max_new=1, last=False, workflow="w")
    s.add(big1, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    while s.running:
        ex.run(s, s.schedule(0.0, ex), 0.0)
    s._demote_session("big", 1.0)
    n = m.pool.num_free + 1  # one block more than is free: one of big's is evicted
    m.begin_step("filler", toks(5000, n * BS), now=1.5)
    m.allocate_slots("filler", n * BS, now=1.5)
    m.end_session("filler", now=1.5)
    big2 = next_step(big1, toks(500, 4), 2.0)
    assert m.sessions["big"].num_computed // BS == 10
    assert s.lookup(big2).gpu_hit_blocks == 9  # 9 of its 10 full blocks
    s.add(big2, 2.0)
    assert s.num_undone_demotions == 0
    assert "big" not in s.sessions and "big" in s._deferred
    assert [r.session_id for r in s.waiting] == ["big"] and not s._resumed
    m.check_integrity()


def test_no_undo_at_the_reserve_deadline_itself():
    """"wide" queued at 1.5 with max_wait_s 0.5: its deadline is 2.0, the very time big's
    next step arrives. The reserve holds from the deadline on (`now >= reserve_at`), so
    the demotion stands (tests/scheduler/test_undo_demotion.py checks either side)."""
    m, s, ex, big2, seen = _demoted(True, wide_waiting=True, max_wait_s=0.5)
    assert s.reserve_at == 2.0
    assert "big" not in s.sessions and "big" in s._deferred
    assert s.num_undone_demotions == 0
    m.check_integrity()
