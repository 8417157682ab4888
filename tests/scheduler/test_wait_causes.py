"""Why sessions wait for admission (`WorkflowScheduler.wait_causes`): the waiting time is
charged to what held the next session back, and sums to the measured admission wait."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.wait_causes import WAIT_CAUSES
from tests.sched_helpers import ToyRequest
from tests.scheduler.helpers import toks, two_paused


@pytest.mark.parametrize("prompt_len,cause", [(20, "contexts"), (12, "growth")])
def test_waiting_time_is_charged_to_what_held_the_session_back(prompt_len, cause):
    """a and b (paused, admitted) hold 2 x 6 blocks of context of 16; c's 20-token prompt
    (5 blocks) does not fit beside them at all ("contexts"). With 12-token prompts the
    contexts take 2 x 4 and c's 3 fit, but not with a step's predicted growth ("growth")."""
    _, s, ex, _ = two_paused(prompt_len=prompt_len)
    c = ToyRequest("c", toks(200, prompt_len), max_new=1, arrival=1.0)
    s.add(c, 1.0)
    for t in (1.0, 2.0, 3.5):
        assert not s.schedule(t, ex).admitted
    assert s.wait_causes == {k: 2.5 if k == cause else 0.0 for k in WAIT_CAUSES}
    assert s.waiting_s == 2.5
    assert 0 < s.waiting_context_s / s.waiting_s <= 1  # the contexts' share of the pool
    s.forget_session("a", 4.0)  # a leaves: c fits now
    assert s.schedule(5.0, ex).admitted == [c]
    assert sum(s.wait_causes.values()) == pytest.approx(s.admission_wait_s) == 4.0


def test_no_wait_is_charged_while_nobody_waits():
    _, s, ex, _ = two_paused()
    for t in (1.0, 5.0):
        s.schedule(t, ex)
    assert sum(s.wait_causes.values()) == 0.0 and s.waiting_s == 0.0


def test_a_session_cancelled_while_waiting_stops_being_charged():
    """c waits from 1.0 and its client gives up at 3.5 (the engine's abort: `finish`); the
    next event is d's arrival at 100.0. c was charged as waiting until then (99 s, not
    2.5): the queue's removal did not close the interval."""
    _, s, ex, _ = two_paused(prompt_len=20)
    c = ToyRequest("c", toks(200, 20), max_new=1, arrival=1.0)
    s.add(c, 1.0)
    for t in (1.0, 2.0):
        assert not s.schedule(t, ex).admitted
    assert s.finish(c, 3.5, ended=True) is False
    assert s.wait_causes["contexts"] == s.waiting_s == 2.5
    d = ToyRequest("d", toks(300, 4), max_new=1, arrival=100.0)
    s.add(d, 100.0)
    assert s.wait_causes == {k: 2.5 if k == "contexts" else 0.0 for k in WAIT_CAUSES}
    assert s.waiting_s == 2.5
