"""`fcfs`, vLLM v1's rule: FCFS admission with head-of-line blocking, preemption of the
newest, and admission that leaves a blocked waiter's cached blocks alone."""

from __future__ import annotations

from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest, drive
from tests.scheduler.helpers import manager, toks


def test_fcfs_admits_in_order_with_head_of_line_blocking():
    m = manager(8)  # 32 tokens
    s = make_scheduler("fcfs", m, max_num_batched_tokens=64)
    ex = ToyExecutor(m)
    a, b, c = (ToyRequest(x, toks(100 * i, n), max_new=3)
               for i, (x, n) in enumerate([("a", 12), ("b", 21), ("c", 2)]))
    for r in (a, b, c):
        s.add(r, 0.0)
    out = s.schedule(0.0, ex)
    # a takes 3 blocks; b needs 6 of the 5 left, and c (1 block) waits behind it
    assert [r.session_id for r in out.admitted] == ["a"]
    assert s.waiting == [b, c]


def test_fcfs_preempts_the_newest_running_request():
    m = manager(6)
    s = make_scheduler("fcfs", m, max_num_batched_tokens=64)
    ex = ToyExecutor(m)
    a, b = ToyRequest("a", toks(0, 11), max_new=10), ToyRequest("b", toks(100, 11), max_new=10)
    s.add(a, 0.0)
    s.add(b, 0.0)
    out = s.schedule(0.0, ex)
    assert [r.session_id for r in out.admitted] == ["a", "b"]
    preempted = []
    for t in range(1, 10):
        ex.run(s, out, float(t))
        out = s.schedule(float(t), ex)
        preempted += out.preempted
        if out.preempted:
            assert not out.admitted  # a step that preempted admits nobody
    assert preempted and preempted[0] is b and s.num_preemptions >= 1
    m.check_integrity()


def test_a_blocked_waiter_does_not_touch_its_cached_blocks():
    """The old engine began a blocked waiter's step on every retry (moving its blocks to the
    MRU end); admission now looks up without side effects, so LRU still evicts them first."""
    m = manager(8)
    ex = ToyExecutor(m)
    s = make_scheduler("fcfs", m, max_num_batched_tokens=64)
    old = ToyRequest("old", toks(0, 8), max_new=1)
    drive(s, [(0.0, old)])  # 2 cached blocks of "old" context, ended: plain cache
    big = ToyRequest("big", toks(500, 21), max_new=20)
    s.add(big, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)  # big runs: 6 blocks, old's 2 evictable left
    retry = ToyRequest("old2", toks(0, 8) + toks(900, 12), max_new=1)
    s.add(retry, 1.0)
    order = m.policy.choose_victims(m.pool.num_cached, 1.0)
    for t in range(2, 4):  # big stays within its 6 blocks meanwhile
        out = s.schedule(float(t), ex)
        assert retry not in out.admitted
        assert m.policy.choose_victims(m.pool.num_cached, t) == order
        ex.run(s, out, float(t))
