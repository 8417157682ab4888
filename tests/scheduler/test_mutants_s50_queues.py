"""Session 50 mutation testing: tests that kill mutants of the schedulers' waiting queues
(kvsaga/scheduler/fcfs.py, kvsaga/scheduler/waiting_queues.py) which the suite let survive."""

from __future__ import annotations

from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks


def test_fcfs_a_preempted_request_waits_ahead_of_those_already_waiting():
    """vLLM's rule: the preempted request goes back to the FRONT of the queue (it is retried
    before any request that was waiting behind it), not to its end."""
    m = manager(6)
    s = make_scheduler("fcfs", m, max_num_batched_tokens=64)
    ex = ToyExecutor(m)
    a, b = ToyRequest("a", toks(0, 11), max_new=10), ToyRequest("b", toks(100, 11), max_new=10)
    c = ToyRequest("c", toks(300, 11), max_new=10)
    for r in (a, b, c):
        s.add(r, 0.0)
    out = s.schedule(0.0, ex)
    assert [r.session_id for r in out.admitted] == ["a", "b"]
    assert s.waiting == [c]
    for t in range(1, 10):
        ex.run(s, out, float(t))
        out = s.schedule(float(t), ex)
        if out.preempted:
            break
    assert [r.session_id for r in out.preempted] == ["b"]
    assert [r.session_id for r in s.waiting] == ["b", "c"]
    m.check_integrity()
