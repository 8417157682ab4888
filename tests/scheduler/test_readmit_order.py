"""Where a demoted session's next step waits among the new sessions (`readmit_order`), and
what the shrink keeps within the tiers (`shrink_on`): the two rules built for bfcl 1x 25%'s
re-admission waits (kvsaga/scheduler/admission_order.py, demotion.py)."""

from __future__ import annotations

import math
from collections import deque

import pytest

from kvsaga.scheduler import make_scheduler
from kvsaga.scheduler.admission_order import demoted_first, order_key, sort_queue
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, queued_big_small, run_two_to_pause, toks, wf


def _req(sid: str, arrival: float, resumed: bool) -> ToyRequest:
    return ToyRequest(sid, toks(0, 4), max_new=1, arrival=arrival, resumed=resumed)


def test_demoted_first_keeps_demoted_steps_in_their_order_ahead_of_sorted_new_ones():
    d1, d2 = _req("d1", 5.0, True), _req("d2", 1.0, True)
    n1, n2 = _req("n1", 0.0, False), _req("n2", 2.0, False)
    cost = {"d1": 1.0, "d2": 1e6, "n1": 1e3, "n2": 1.0}
    dq = deque([n1, d1, n2, d2])
    demoted_first(dq, lambda r: cost[r.session_id], aging_s=10.0)
    # d1 before d2 as queued (not by cost); then the new ones by order_key: n2 (cost 1, key
    # 0.2) before n1 (cost 1e3, key ln 1e3 = 6.9)
    assert list(dq) == [d1, d2, n2, n1]


def test_sort_queue_ages_from_the_time_it_is_given():
    old, new = _req("old", 100.0, True), _req("new", 100.0, False)
    cost = {"old": math.e ** 2, "new": 1.0}  # old: 2 more in ln(cost)
    q = deque([old, new])
    sort_queue(q, lambda r: cost[r.session_id], 10.0)  # both queued at 100: new first
    assert list(q) == [new, old]
    started = {"old": 70.0, "new": 100.0}  # old's session began 30 s earlier: 3 > 2
    sort_queue(q, lambda r: cost[r.session_id], 10.0, lambda r: started[r.session_id])
    assert list(q) == [old, new]
    assert order_key(cost["old"], 70.0, 10.0) < order_key(cost["new"], 100.0, 10.0)


def _queued_demoted_and_new(**kw):
    """One admitted session (a, 44 tokens) fills the pool; a demoted session's step (`big`,
    24 tokens, its session begun at 0, queued again at 0.05) and a new session (`small`, 8
    tokens, at 0.1) wait."""
    return queued_big_small(readmitted_at=0.05, began_at=0.0, admission_order="predicted",
                            aging_s=1.0, **kw)


@pytest.mark.parametrize("order,first", [("sorted", "small"), ("first", "big")])
def test_readmit_order_places_a_demoted_sessions_step(order, first):
    s, big, small = _queued_demoted_and_new(readmit_order=order)
    assert s.remaining_cost(small) < s.remaining_cost(big)
    assert s.waiting[0].session_id == first


def test_session_age_ages_a_demoted_step_from_its_sessions_first_queueing():
    """big's session queued first at 0, small at 0.1: with aging_s 1, that 0.1 s is worth a
    factor e^0.1 of predicted work; give big a 0.2 s head start instead and it goes first
    (from its own re-queueing at 0.05 it would not)."""
    s, big, small = _queued_demoted_and_new(readmit_order="session_age")
    assert s._started["big"] == 0.0 and s._started["small"] == 0.1
    gap = math.log(s.remaining_cost(big) / s.remaining_cost(small))
    s._started["big"] = 0.1 - gap - 0.01  # its session began just early enough
    s._order_changed()
    s._sort_pending()  # as the next admission attempt does
    assert s.waiting[0] is big
    s._started["big"] = 0.1 - gap + 0.01
    s._order_changed()
    s._sort_pending()  # as the next admission attempt does
    assert s.waiting[0] is small


def test_a_sessions_start_is_forgotten_when_it_ends():
    m = manager(64)
    s = wf(m, admission_order="predicted", readmit_order="session_age")
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 4), max_new=1), 0.0)  # last=True: ends after its step
    ex.run(s, s.schedule(0.0, ex), 0.0)
    assert not s.running and "a" not in s._started


@pytest.mark.parametrize("bad", ["newest", None, 1])
def test_readmit_order_must_be_known(bad):
    with pytest.raises(ValueError, match="readmit_order must be one of sorted, session_age"):
        wf(manager(16), readmit_order=bad)


@pytest.mark.parametrize("bad", ["growth", None, True])
def test_shrink_on_must_be_known(bad):
    with pytest.raises(ValueError, match="shrink_on must be one of working_sets, contexts"):
        wf(manager(16), shrink_on=bad)


def test_the_defaults_are_unchanged():
    s = make_scheduler("workflow", manager(16))
    assert (s.readmit_order, s.shrink_on) == ("sorted", "working_sets")


@pytest.mark.parametrize("shrink_on,demoted", [("working_sets", 1), ("contexts", 0)])
def test_shrink_on_contexts_ignores_growth_that_has_not_come(shrink_on, demoted):
    """Two paused sessions' contexts fill the pool exactly (8 + 8 blocks); a's next step
    queues and its predicted growth (2 blocks) is charged again: the working sets are over
    the pool, the contexts are not. Only "working_sets" demotes b for it."""
    m = manager(16)
    s = wf(m, paused_growth=False, queue_shrink=True, shrink_on=shrink_on)
    _, a, t = run_two_to_pause(m, s)
    assert set(s.sessions) == {"a", "b"} and s._context_blocks() == s.capacity
    s.add(ToyRequest("a", a.prompt + a.out, max_new=1, last=False, resumed=True), t)
    assert (s._committed > s.capacity) == (not demoted)  # "contexts" lets it stay over
    assert s.num_demotions == demoted and ("b" in s.sessions) == (not demoted)
