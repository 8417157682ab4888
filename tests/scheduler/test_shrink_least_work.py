"""`WorkflowScheduler(shrink_order="least_work")`: the shrink demotes the paused session with
the least predicted remaining work (the admission order's own key), after aging; its
parameter's check; and the scheduler state machine (tests/test_manager_stateful.py) run with
it under every policy."""

from __future__ import annotations

import pytest

from kvsaga.scheduler import WorkflowScheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks, wf
from tests.test_manager_stateful import POLICIES, _scheduler_machine_for

# (session, prompt tokens, workflow, tool seconds): "brief" is near its workflow's end (its
# workflow's sessions took 1 step), "small" has the fewest blocks but a long workflow ahead,
# "away" is on the longest tool (expected back last).
PAUSED = (("near_end", 24, "brief", 1.0), ("small", 8, "long", 1.0), ("away", 16, "long", 50.0))


def _three_paused(order: str):
    """Session "a" and the three `PAUSED` sessions admitted and paused, the length table
    taught that "brief" sessions take 1 step and "long" ones 20; then "a"'s next step
    comes with 20 tokens more and finishes, taking the working sets over the pool."""
    m = manager(32)
    s = wf(m, shrink_order=order)
    for _ in range(5):  # ended sessions, as `_step_done` records them
        s._lengths.observe("brief", 1)
        s._lengths.observe("long", 20)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 12), max_new=1, last=False, workflow="long")
    s.add(a, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=1.0)
    for i, (sid, n, workflow, tool_s) in enumerate(PAUSED, start=1):
        r = ToyRequest(sid, toks(1000 * i, n), max_new=1, last=False, workflow=workflow)
        s.add(r, 0.1 * i)
        ex.run(s, s.schedule(0.1 * i, ex), 0.1 * i, tool_s=tool_s)
    assert set(s.sessions) == {"a", "near_end", "small", "away"} and not s.num_demotions
    costs = {sid: s.session_cost(sid, i.workflow, i.context) for sid, i in s.sessions.items()}
    a2 = ToyRequest("a", a.prompt + a.out + toks(500, 20), max_new=1, last=False, resumed=True,
                    workflow="long")
    s.add(a2, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)
    m.check_integrity()
    return s, costs


@pytest.mark.parametrize("order,demoted", [
    ("least_work", "near_end"),  # the least predicted remaining work
    ("smallest", "small"),  # the fewest blocks
    ("latest_back", "away"),  # expected back last (the default)
])
def test_each_shrink_order_demotes_its_own_victim(order, demoted):
    """The same state, three orders, three victims: "least_work" demotes the session the
    admission order would admit again first, not the smallest nor the one away longest."""
    s, costs = _three_paused(order)
    assert min(costs, key=costs.get) == "near_end"  # the premise of the row above
    assert s.num_demotions == 1 and demoted not in s.sessions
    assert s._committed <= s.capacity
    assert demoted in s._deferred  # its blocks wait for its next step, deferred


def test_least_work_demotes_the_session_the_admission_order_sorts_first():
    """The claim behind "least_work": the session it demotes is the one the admission order
    admits again first. Steps of the three paused sessions, each with the context it held
    (its prompt and one output token), queued at the same instant and sorted by the
    scheduler's own `sort_queue` and `remaining_cost`: the demoted session's comes first."""
    from collections import deque

    from kvsaga.scheduler.admission_order import sort_queue

    s, _ = _three_paused("least_work")
    (demoted,) = s._deferred
    q = deque(ToyRequest(sid, toks(1000 * i, n + 1), workflow=workflow, arrival=2.0)
              for i, (sid, n, workflow, _) in enumerate(PAUSED, start=1))
    sort_queue(q, s.remaining_cost, s.aging_s)
    assert [r.session_id for r in q][0] == demoted == "near_end"


def test_least_work_keeps_the_shrink_aging():
    """A session demoted `shrink_aging` times already goes after every other, whatever its
    remaining work (the shrink's aging bound holds under this order too)."""
    s, costs = _three_paused("least_work")
    order = sorted(s.sessions, key=lambda sid: costs[sid])
    first = order[0]
    s._times_demoted[first] = s.shrink_aging
    assert s._demotion_order(list(s.sessions)) == order[1:] + [first]
    s._times_demoted[first] = s.shrink_aging - 1
    assert s._demotion_order(list(s.sessions)) == order


def test_shrink_order_names_every_order():
    with pytest.raises(ValueError, match="shrink_order must be one of latest_back, smallest, "
                                         "least_work, got 'most_work'"):
        wf(manager(16), shrink_order="most_work")


def test_the_default_shrink_order_is_unchanged():
    assert WorkflowScheduler.__init__.__kwdefaults__["shrink_order"] == "latest_back"


# The scheduler state machine (admission, preemption, chunked prefill: every invariant of the
# manager and the queues) with the order on, under every policy.
for _name in POLICIES:
    globals()[f"TestSchedulerStateful_least_work_{_name.replace('-', '_')}"] = (
        _scheduler_machine_for("workflow", _name, {"shrink_order": "least_work"}))
