"""The shrink's demotion on the prediction alone (`shrink_after`,
kvsaga/scheduler/demotion.py `_away_long`): a paused session is demoted by the shrink only
once it has been away `shrink_after` x its expected pause; off (0) by default; its
parameter's check; and the scheduler state machine (tests/test_manager_stateful.py) run with
it under every policy."""

from __future__ import annotations

import pytest

from kvsaga.policy import POLICIES
from kvsaga.scheduler import WorkflowScheduler
from tests.sched_helpers import ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, machine, reach
from tests.scheduler.helpers import manager, toks, two_paused, wf


@pytest.mark.parametrize("after,left,demotions", [
    (0.0, {"b"}, 1),       # at once: a, whose pause began last, is expected back last
    (1.0, {"a"}, 1),       # only b has been away its expected pause (1 s) at a's finish
    (5.0, {"a", "b"}, 0)])  # nobody has been away 5 s: nobody is demoted
def test_shrink_after_demotes_only_sessions_away_long_enough(after, left, demotions):
    """a and b (12 tokens each) admitted and paused at 0 s on a 1 s tool; a's next step,
    30 tokens longer than predicted, finishes at 1 s or later and the admitted working sets
    outgrow the pool."""
    m, s, ex, a = two_paused(prompt_len=12, shrink_after=after)
    a2 = ToyRequest("a", a.prompt + a.out + toks(50, 30), max_new=1, last=False, resumed=True,
                    arrival=1.0)
    s.add(a2, 1.0)
    for t in (1.0, 2.0):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == left and s.num_demotions == demotions
    if demotions:
        assert s._committed <= s.capacity
    else:  # the commitment stays above the tiers until a later finish's shrink
        assert s._committed > s.capacity
    m.check_integrity()


def test_shrink_after_is_off_by_default():
    assert WorkflowScheduler.__init__.__kwdefaults__["shrink_after"] == 0.0


@pytest.mark.parametrize("bad", [-1.0, "1", None, float("nan")])
def test_shrink_after_must_be_a_number_at_least_0(bad):
    with pytest.raises(ValueError, match="shrink_after must be a number >= 0"):
        wf(manager(16), shrink_after=bad)


def test_the_state_machine_reaches_the_wait():
    """The state machine below reaches `_away_long`: over the same derandomized runs, the
    shrink asks it, it answers both ways, and sessions are demoted."""
    c = reach("lru", {**DEMOTING, "shrink_after": 1.0})
    assert c["demotions"] > 0 and c["away_long"] > c["away_long_true"] > 0


# The scheduler state machine with the shrink's wait on, under every policy, with parameters
# under which it demotes (the scheduler's books checked: `DemotingMachine.books`).
for _name in POLICIES:
    globals()[f"TestSchedulerStateful_shrink_after_{_name.replace('-', '_')}"] = (
        machine(_name, {**DEMOTING, "shrink_after": 1.0}))
