"""The manager gives its policy a monotone clock (review s47, policyint finding 2): a `now`
behind a time already given is taken as that time. Before, a search behind an earlier one
kept the keys the sessions had at the later grid points (their timers lie ahead and never
fire backwards), so graph's index named other victims than its brute-force scan until the
clock passed the earlier search again."""

from __future__ import annotations

import pytest

from kvsaga import InvalidRequest
from kvsaga.policy.graph import GraphPolicy
from tests.policy.helpers import make, run_step, tokens


def _taught():
    """A full pool under graph (relearn_share=0: the index must give the scan's order),
    which has learned a fast tool (0.1 s) and a slow one (100 s); a and b paused on each."""
    policy = GraphPolicy(relearn_share=0.0)
    m = make(policy, num_blocks=16)
    for i in range(4):
        run_step(m, f"f{i}", tokens(1000 * i, 8), 0.0, tool="fast", workflow="w")
        run_step(m, f"f{i}", tokens(1000 * i, 12), 0.1, tool="fast", workflow="w")
        m.end_session(f"f{i}", now=0.1)
        run_step(m, f"g{i}", tokens(50000 + 1000 * i, 8), 0.0, tool="slow", workflow="w")
        run_step(m, f"g{i}", tokens(50000 + 1000 * i, 12), 100.0, tool="slow", workflow="w")
        m.end_session(f"g{i}", now=100.0)
    run_step(m, "a", tokens(90000, 8), 100.0, tool="fast", workflow="w")
    run_step(m, "b", tokens(95000, 8), 100.0, tool="slow", workflow="w")
    assert m.pool.num_free == 0
    return policy, m


def test_searches_behind_an_earlier_one_name_the_scans_victims():
    policy, m = _taught()
    searches = []
    choose = policy.choose_victims

    def checked(n, now, *rest):  # the index's order against the scan's, at each search
        searches.append((now, policy.eviction_order(now) == policy.scan_order(now)))
        return choose(n, now, *rest)

    policy.choose_victims = checked
    st = m.begin_step("c", tokens(70000, 4), now=300.0, workflow="w")
    m.allocate_slots("c", 4 - st.num_cached_tokens, now=300.0)
    for k, now in enumerate((100.05, 100.0, 101.0)):  # no learning event in between
        m.append_tokens("c", tokens(71000 + 100 * k, 4))
        m.allocate_slots("c", 4, now=now)
    m.check_integrity()
    assert searches == [(300.0, True)] * 4  # before: (100.05, False), (100.0, False), ...


def test_every_call_behind_the_latest_time_is_taken_at_it():
    m = make("graph", num_blocks=16)
    run_step(m, "a", tokens(0, 8), 50.0, tool="x")
    m.begin_step("a", tokens(0, 12), now=10.0)
    m.finish_step("a", now=5.0)
    assert m.sessions["a"].paused_at == 50.0
    run_step(m, "b", tokens(100, 8), 60.0)
    assert m.sessions["b"].paused_at == 60.0  # forward still moves it
    m.begin_step("b", tokens(100, 12))  # the clock's time (0.0 here) too
    m.preempt("b")
    assert m.sessions["b"].paused_at == 60.0


def test_a_refused_call_leaves_the_latest_time():
    m = make("graph", num_blocks=16)
    run_step(m, "a", tokens(0, 8), 10.0)
    m.begin_step("b", tokens(100, 8), now=20.0)
    with pytest.raises(InvalidRequest, match="already has an open step"):
        m.begin_step("b", tokens(100, 8), now=500.0)
    with pytest.raises(InvalidRequest, match="now must be a finite number"):
        m.finish_step("b", now=float("nan"))
    m.finish_step("b", now=30.0)
    assert m.sessions["b"].paused_at == 30.0  # not 500: the refused step gave no time
