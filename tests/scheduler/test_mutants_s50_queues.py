"""Session 50 mutation testing: tests that kill mutants of the schedulers' waiting queues
(kvsaga/scheduler/fcfs.py, kvsaga/scheduler/waiting_queues.py) which the suite let survive."""

from __future__ import annotations

from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, next_step, toks, wf


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


def test_workflow_a_retried_step_at_the_head_is_not_bypassed_by_a_warm_step():
    """A step put back at the head of the resumed queue as a retry (`_enqueue(retry=True)`,
    as a preemption does) is picked next even with a warm step behind it within
    `admission_window`: only a plain head may be bypassed (`max_bypass`). Without the retry
    mark the same cold head is bypassed, which the second half checks."""
    m = manager(64)
    s = wf(m)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 8), max_new=1, last=False)
    b = ToyRequest("b", toks(100, 8), max_new=1, last=False)
    for r in (a, b):
        s.add(r, 0.0)
    for t in (0.0, 0.1):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"a", "b"} and not s.running
    # a's next step is long: the middle of its prompt is past what a has cached (cold);
    # b's is short, its context cached (warm)
    a2, b2 = next_step(a, toks(1000, 40), 1.0), next_step(b, toks(2000, 1), 1.0)
    assert not s._is_warm(a2) and s._is_warm(b2)
    s._enqueue(a2, 1.0, retry=True)
    s._enqueue(b2, 1.0, retry=False)
    assert list(s._resumed) == [a2, b2]
    assert s._pick_resumed() is a2
    s._dequeue(a2, 1.0)
    s._enqueue(a2, 1.0, retry=False)  # the same cold step, no retry: b2 is picked first
    s._dequeue(b2, 1.0)
    s._enqueue(b2, 1.0, retry=False)
    assert list(s._resumed) == [a2, b2]
    assert s._pick_resumed() is b2


def test_workflow_counts_session_admissions_and_keeps_the_longest_wait():
    """`num_session_admissions` counts each session admitted once (not its later steps),
    and `admission_wait_max_s` is the longest wait, not the latest one."""
    m = manager(64)
    s = wf(m)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 8), max_new=1, last=False)
    s.add(a, 0.0)
    ex.run(s, s.schedule(5.0, ex), 5.0)  # a waited 5 s
    b = ToyRequest("b", toks(100, 8), max_new=1, last=False, arrival=6.0)
    s.add(b, 6.0)
    ex.run(s, s.schedule(6.0, ex), 6.0)  # b waited 0 s
    assert set(s.sessions) == {"a", "b"}
    assert s.num_session_admissions == 2
    assert s.admission_wait_max_s == 5.0
    s.add(next_step(a, toks(1000, 2), 7.0), 7.0)  # a's next step: no new admission
    ex.run(s, s.schedule(7.0, ex), 7.0)
    assert s.num_session_admissions == 2
