"""The idle admission's clock (`WorkingSetGate._idle_long`, `idle_admit_s`) starts afresh in
each idle period: a busy period with no refused attempt in it must not leave the time of an
earlier idle period's refusal (session 42's review: the next idle refusal then admitted a
session that does not fit at once)."""

from __future__ import annotations

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, next_step, toks, wf


def run(early_idle: bool):
    """Session a runs and pauses; b (too big beside a) waits, refused at t=1 with the batch
    empty when `early_idle`; a ends, b is admitted and runs, its next step runs at 50 and
    pauses; c (too big beside b) arrives at 50.1, 0.1 s into the new idle period.
    Returns (admitted at 50.1, the idle clock's start, wake_time)."""
    m = manager(16)
    s = wf(m, idle_admit_s=1.0)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 20), max_new=1, last=False)
    b = ToyRequest("b", toks(100, 36), max_new=1, last=False, arrival=0.0)
    s.add(a, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    s.add(b, 0.0)
    if early_idle:
        assert not s.schedule(1.0, ex).admitted  # b refused, the batch empty
    m.end_session("a", now=1.2)
    s.forget_session("a", 1.2)
    out = s.schedule(1.2, ex)
    assert [r.session_id for r in out.admitted] == ["b"]
    ex.run(s, out, 1.2)
    b2 = next_step(b, toks(500, 4), 50.0)
    s.add(b2, 50.0)
    out = s.schedule(50.0, ex)
    assert [r.session_id for r in out.admitted] == ["b"]
    ex.run(s, out, 50.0)
    c = ToyRequest("c", toks(900, 36), max_new=1, last=False, arrival=50.1)
    s.add(c, 50.1)
    out = s.schedule(50.1, ex)
    return [r.session_id for r in out.admitted], s._idle_since, s.wake_time


def test_idle_clock_starts_afresh_after_a_busy_period():
    fresh = run(False)
    assert fresh == ([], 50.1, 50.1 + 1.0)  # c waits idle_admit_s
    # An idle refusal 49 s earlier changes nothing: c is not admitted at once.
    assert run(True) == fresh


def test_idle_admission_still_comes_after_idle_admit_s():
    m = manager(16)
    s = wf(m, idle_admit_s=1.0)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 20), max_new=1, last=False)
    s.add(a, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    c = ToyRequest("c", toks(900, 36), max_new=1, last=False, arrival=0.5)
    s.add(c, 0.5)
    assert not s.schedule(0.5, ex).admitted
    assert s.wake_time == 1.5
    assert not s.schedule(1.4, ex).admitted
    assert [r.session_id for r in s.schedule(1.5, ex).admitted] == ["c"]
    assert s._idle_since is None  # admitted: the batch is busy
