"""`WorkflowScheduler(shrink_exempt_s=...)`: a session whose waits to be admitted again after
its demotions sum to `shrink_exempt_s` seconds is not demoted by the shrink any more (session
56, issue 10: the p95 sessions' waits are sums over several demotions; docs/scheduler.md,
"What bounds the open goals", and docs/scheduling_fit_history.md, "Session 56, third lane").
Its parameter's check, and the scheduler state machine with a small bound."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler import WorkflowScheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, next_step, toks, wf
from tests.test_manager_stateful import POLICIES, _scheduler_machine_for


def _readmitted_after(wait: float, **kw):
    """On a 32-block pool: "near" (16 tokens, back in 1 s) and "away" (16 tokens, back in
    50 s) admitted and paused; away is demoted at 1.0 and its next step (20 tokens) queues at
    2.0 and is admitted `wait` s later, runs and pauses on its 50 s tool; near runs a step
    and pauses. Then "a" (12 tokens) is admitted and its next step grows by 40 tokens,
    taking the working sets over the pool at its finish: the shrink demotes one paused
    session (under the default order, "latest_back", the one expected back last). Returns
    (scheduler, the sessions that shrink demoted)."""
    m = manager(32)
    s = wf(m, **kw)
    ex = ToyExecutor(m)
    near = ToyRequest("near", toks(1000, 16), max_new=1, last=False, workflow="w")
    away = ToyRequest("away", toks(2000, 16), max_new=1, last=False, workflow="w")
    s.add(near, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=1.0)
    s.add(away, 0.1)
    ex.run(s, s.schedule(0.1, ex), 0.1, tool_s=50.0)
    assert set(s.sessions) == {"near", "away"} and not s.num_demotions
    s._demote_session("away", 1.0)
    s.add(next_step(away, toks(2500, 4), 2.0), 2.0)
    t = 2.0 + wait
    out = s.schedule(t, ex)
    assert [r.session_id for r in out.admitted] == ["away"]  # `wait` s after it queued
    ex.run(s, out, t, tool_s=50.0)
    s.add(next_step(near, toks(1500, 4), t + 0.1), t + 0.1)
    ex.run(s, s.schedule(t + 0.1, ex), t + 0.1, tool_s=1.0)
    assert set(s.sessions) == {"near", "away"} and s.num_demotions == 1
    assert s._times_demoted == {"away": 1}  # below the count aging (2)
    a = ToyRequest("a", toks(0, 12), max_new=1, last=False, workflow="w")
    s.add(a, t + 1.0)
    ex.run(s, s.schedule(t + 1.0, ex), t + 1.0)
    before = set(s.sessions)
    s.add(next_step(a, toks(500, 40), t + 2.0), t + 2.0)
    for k in range(4):
        ex.run(s, s.schedule(t + 2.0 + 0.1 * k, ex), t + 2.0 + 0.1 * k)
    m.check_integrity()
    return s, sorted(before - set(s.sessions))


def test_a_session_that_waited_the_bound_to_be_admitted_again_is_not_demoted_again():
    """Away waited 30 s (>= the default 20 s) to be admitted again: the shrink passes it
    over although it is expected back last, and demotes another paused session."""
    s, demoted = _readmitted_after(30.0)
    assert "away" in s.sessions and demoted and "away" not in demoted
    assert s._waited_again["away"] == pytest.approx(30.0)
    assert s._times_demoted["away"] == 1


def test_below_the_bound_the_shrink_order_is_unchanged():
    """Away waited 10 s (< 20 s): the shrink demotes it first, as it is back last; and with
    the bound off (`inf`) even after a 30 s wait."""
    for wait, kw in ((10.0, {}), (30.0, {"shrink_exempt_s": math.inf})):
        s, demoted = _readmitted_after(wait, **kw)
        assert demoted == ["away"] and s._times_demoted["away"] == 2
        assert "near" in s.sessions


def test_the_waits_are_summed_and_dropped_with_the_session():
    """The bound reads the waits summed over the session's demotions (two of 12 s: 24 s)
    and forgets them when the session ends."""
    m = manager(64)
    s = wf(m)
    ex = ToyExecutor(m)
    r = ToyRequest("x", toks(0, 8), max_new=1, last=False, workflow="w")
    s.add(r, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    t = 1.0
    for _ in range(2):
        s._demote_session("x", t)
        r = next_step(r, toks(100 * len(r.prompt), 4), t + 1.0)
        s.add(r, t + 1.0)
        ex.run(s, s.schedule(t + 13.0, ex), t + 13.0)  # admitted 12 s after it queued
        t += 20.0
    assert s._waited_again == {"x": pytest.approx(24.0)}
    assert s._demotion_order(["x"]) == []  # 24 >= 20: out of the shrink's order
    last = ToyRequest("x", r.prompt + r.out + toks(9000, 2), max_new=1, last=True,
                      resumed=True, arrival=t, workflow="w")
    s.add(last, t)
    ex.run(s, s.schedule(t, ex), t)
    assert "x" not in s.sessions and s._waited_again == {}
    m.check_integrity()


@pytest.mark.parametrize("bad", [0, 0.0, -1.0, math.nan, "20", None, True])
def test_shrink_exempt_s_is_checked(bad):
    with pytest.raises((ValueError, TypeError), match="shrink_exempt_s"):
        wf(manager(16), shrink_exempt_s=bad)


def test_the_default_bound():
    assert WorkflowScheduler.__init__.__kwdefaults__["shrink_exempt_s"] == 20.0


# The scheduler state machine (admission, preemption, chunked prefill: every invariant of the
# manager and the queues) with a bound small enough to exempt sessions often.
for _name in POLICIES:
    globals()[f"TestSchedulerStateful_shrink_exempt_{_name.replace('-', '_')}"] = (
        _scheduler_machine_for("workflow", _name, {"shrink_exempt_s": 0.5}))
