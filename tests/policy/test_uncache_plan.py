"""`blocks_uncached` with the last search's record (groups.py): the record's runs are tried
first and `cut_tails` checks them against the blocks uncached, so a record that does not fit
(other blocks, a part of them, another order) changes nothing by itself, and the uncaching
leaves the groups and the marks as one without any record does."""

from __future__ import annotations

import pytest

from tests.policy.helpers import build, make, run_step, tokens


def _paused(name: str):
    """A policy with five paused sessions' blocks cached (a grouped, indexed one)."""
    policy = build(name)
    m = make(policy, num_blocks=40)
    for i, sid in enumerate("abcde"):
        run_step(m, sid, tokens(100 * i, 16 * (i + 2)), now=0.01 * i, tool="search")
    return policy


def _outcome(policy) -> tuple:
    return ({sid: list(g) for sid, g in policy.groups.items()}, set(policy._dirty))


@pytest.mark.parametrize("name", ["ttl", "saga", "graph"])
@pytest.mark.parametrize("batch", ["as named", "first run only", "reversed", "other blocks"])
def test_a_record_that_does_not_fit_changes_nothing_by_itself(name, batch):
    with_plan, without = _paused(name), _paused(name)
    victims = with_plan.choose_victims(6, 1.0)
    assert victims == without.choose_victims(6, 1.0)
    assert with_plan.victim_runs() is not None  # the search recorded its runs
    runs = with_plan.victim_runs()[1]
    if batch == "first run only":
        victims = victims[:runs[0][1]]
    elif batch == "reversed":
        victims = victims[::-1]
    elif batch == "other blocks":  # the head of a group, not its tail
        g = next(g for sid, g in with_plan.groups.items() if sid != runs[0][0])
        victims = [g[-1]]
    without.expect_runs(None)  # no record: the owner marks give the runs
    for p in (with_plan, without):
        p.blocks_uncached(list(victims))
    assert _outcome(with_plan) == _outcome(without)
    for b in victims:
        assert all(b not in g for g in with_plan.groups.values())
