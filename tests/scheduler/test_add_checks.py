"""Regression (session 35, fuzz lane): the core scheduler refuses a second step for a
session that has one waiting or running, and a bad time, before anything changes.

Failing sequence (before the fix): add("a", 6 tokens, pauses); schedule and run until a
pauses; add b's first step (waiting); add a second step of b. Both were queued. Under
workflow the next `schedule` raised KeyError('b') from inside the scheduler; under fcfs the
manager's begin_step raised "session 'b' already has an open step" mid-schedule. Also
`schedule(nan)` was taken silently by workflow, `schedule("x")` raised a TypeError there,
and `add(req, nan)` was queued.
"""

from __future__ import annotations

import math

import pytest

from kvsaga import InvalidRequest, KVCacheManager, KVSpec
from kvsaga._validate import MAX_TIME_S
from kvsaga.scheduler import SCHEDULERS, make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import scheduler_state


def _setup(name):
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 12, clock=lambda: 0.0)
    s = make_scheduler(name, m, max_num_seqs=3, max_num_batched_tokens=6)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", [7] * 6, 1, last=False), 0.0)
    for t in range(4):
        ex.run(s, s.schedule(float(t), ex), float(t))
    b = ToyRequest("b", [7] * 5, 3, last=False)
    s.add(b, 4.0)
    return m, s, ex, b


def _drain(m, s, ex, start=6):
    for t in range(start, start + 24):
        ex.run(s, s.schedule(float(t), ex), float(t))
        m.check_integrity()
    assert not s.has_work


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("again", ["same", "other", "resumed_a_while_waiting"])
def test_second_step_of_a_live_session_refused(name, again):
    m, s, ex, b = _setup(name)
    if again == "resumed_a_while_waiting":
        s.add(ToyRequest("a", [7] * 6 + [1, 2], 1, resumed=True, arrival=4.0), 4.0)
        req = ToyRequest("a", [7] * 6 + [1, 3], 1, resumed=True, arrival=4.0)
    else:
        req = b if again == "same" else ToyRequest("b", [7] * 5, 3)
    before = scheduler_state(s)
    with pytest.raises(InvalidRequest, match=r"already has a step waiting or running here"):
        s.add(req, 5.0)
    assert scheduler_state(s) == before
    _drain(m, s, ex)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_running_step_refuses_a_second_then_the_next_is_taken(name):
    m, s, ex, b = _setup(name)
    for t in range(5, 15):  # (workflow admits b once the batch has idled `idle_admit_s`)
        ex.run(s, s.schedule(float(t), ex), float(t))
        if b in s.running:
            break
    assert b in s.running
    with pytest.raises(InvalidRequest, match=r"session 'b' already has a step"):
        s.add(ToyRequest("b", [7] * 5, 1, resumed=True), 5.0)
    _drain(m, s, ex, 16)  # b pauses after its step
    s.add(ToyRequest("b", [7] * 5 + [1, 1, 1, 2], 1, resumed=True, arrival=40.0), 40.0)
    ex.run(s, s.schedule(40.0, ex), 40.0)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("bad", [math.nan, math.inf, "x", None])
def test_bad_time_refused(name, bad):
    m, s, ex, b = _setup(name)
    before = scheduler_state(s)
    for call in (lambda: s.schedule(bad, ex), lambda: s.add(ToyRequest("c", [1, 2]), bad),
                 lambda: s.finish(b, bad), lambda: s.forget_session("a", bad)):
        with pytest.raises(InvalidRequest, match=r"now must be a finite number of seconds"):
            call()
        assert scheduler_state(s) == before
    _drain(m, s, ex)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_bad_session_id_refused(name):
    m, s, _, _ = _setup(name)
    for sid in (None, "", 3):
        with pytest.raises(InvalidRequest, match=r"session_id must be a non-empty str"):
            s.add(ToyRequest(sid, [1, 2]), 5.0)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_a_prompt_larger_than_the_pool_is_refused(name):
    """Review s47 sched 4: a step whose prompt needs more blocks than the pool has (12
    blocks of 4 tokens: 49 tokens need 13) was queued, and every later `schedule` raised on
    its lookup, so b and every other step waited forever (under workflow a step begun in
    the same call also dropped out of the output). It is refused, nothing changed, and the
    others run; a prompt of exactly the pool's size is still taken."""
    m, s, ex, b = _setup(name)
    before = scheduler_state(s)
    with pytest.raises(InvalidRequest, match=r"session 'huge': prompt of 49 tokens needs 13 "
                                             r"blocks; the pool has only 12"):
        s.add(ToyRequest("huge", list(range(100, 149)), 1), 5.0)
    assert scheduler_state(s) == before
    _drain(m, s, ex)
    s.add(ToyRequest("full", list(range(200, 248)), 1), 40.0)
    assert any(r.session_id == "full" for r in s.waiting)


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("bad", [None, "x", True, math.nan, math.inf, -math.inf,
                                 2 * MAX_TIME_S, -2 * MAX_TIME_S])
def test_bad_arrival_refused(name, bad):
    """Review s50 scheduler 1: `add` checked `now` but not the step's own `arrival`, which
    the workflow scheduler reads (reserve deadline, wait statistics, aging). None or a str
    raised a bare TypeError after the step was queued: the next `schedule` began it and
    raised again, leaving it running with no working set charged. NaN made the step the
    reserve's first with a NaN deadline, so no session was ever held for (bounded waiting
    off), and admission_wait_s went NaN for good. It is refused naming the session and the
    value, nothing changed, and the others run."""
    m, s, ex, b = _setup(name)
    before = scheduler_state(s)
    with pytest.raises(InvalidRequest, match=r"session 'c': the step's arrival must be a"):
        s.add(ToyRequest("c", [1, 2], 1, arrival=bad), 5.0)
    assert scheduler_state(s) == before
    _drain(m, s, ex)
    assert "c" not in m.sessions
    wait = getattr(s, "admission_wait_s", 0.0)  # (workflow's statistics)
    assert wait == wait  # not NaN


def test_a_nan_arrival_cannot_switch_the_reserve_off():
    """Review s50 scheduler 1 (c): with one seat held, b's reserve deadline is its arrival
    plus max_wait_s; a NaN-arrival step queued first took the reserve with a NaN deadline."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 32, policy="lru", clock=lambda: 0.0)
    s = make_scheduler("workflow", m, max_num_seqs=1, max_wait_s=5.0)
    ex = ToyExecutor(m)
    s.add(ToyRequest("long", list(range(8)), max_new=10**6), 0.0)
    s.schedule(0.0, ex)
    with pytest.raises(InvalidRequest, match=r"session 'nan': the step's arrival must be"):
        s.add(ToyRequest("nan", list(range(50, 54)), 2, arrival=math.nan), 0.0)
    s.add(ToyRequest("b", list(range(100, 104)), 2, arrival=0.0), 0.0)
    assert s.reserve_at == 5.0
    assert s._reserved(1000.0).session_id == "b"
