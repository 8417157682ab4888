"""`max_overtake` counts every resumed step waiting for admission, not only those of sessions
demoted here: a paused session the simulator's cluster moved in from another GPU sends a
resumed step this scheduler never admitted, and uncounted it was overtaken by every later
demoted step (review s47 sched 2)."""

from __future__ import annotations

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, next_step, toks, wf


def _queue(moved_in: ToyRequest, n: int):
    """`n` sessions admitted, run a step and demoted here; then a new session queues, then
    `moved_in`, then the demoted sessions' next steps, in turn. Returns the scheduler."""
    m = manager(64)
    s = wf(m, max_overtake=1)
    ex = ToyExecutor(m)
    firsts = [ToyRequest(f"d{i}", toks(100 * (i + 1), 8), max_new=1, last=False)
              for i in range(n)]
    for r in firsts:
        s.add(r, 0.0)
    for t in (0.0, 0.1):
        ex.run(s, s.schedule(t, ex), t)
    for r in firsts:
        s._demote_session(r.session_id, 0.5)
    s.add(ToyRequest("new", toks(5000, 4), arrival=0.6), 0.6)
    s.add(moved_in, 1.0)
    for i, r in enumerate(firsts):
        s.add(next_step(r, toks(7000 + 10 * i, 2), 2.0 + i), 2.0 + i)
    return s


def test_a_moved_in_step_is_overtaken_at_most_max_overtake_times():
    """With max_overtake 1, the moved-in step x is passed by d0 only; the later demoted steps
    queue behind it (each passing only those behind x), and all stay ahead of the new
    session. Before, x was passed by all four and waited last of the resumed steps."""
    s = _queue(ToyRequest("x", toks(900, 8), resumed=True, arrival=1.0), 4)
    assert " ".join(r.session_id for r in s.waiting) == "d0 x d2 d1 d3 new"
    assert s._overtaken == {"d0": 0, "x": 1, "d2": 0, "d1": 1, "d3": 0}


def test_a_step_leaving_the_queue_drops_its_count():
    """A resumed step cancelled while it waits leaves no count behind (nor does a session
    admitted from the queue: the same `_dequeue`)."""
    x = ToyRequest("x", toks(900, 8), resumed=True, arrival=1.0)
    s = _queue(x, 1)
    s.finish(x, 3.0, ended=True)
    assert s._overtaken == {"d0": 0}
