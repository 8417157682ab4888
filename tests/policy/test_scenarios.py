"""Exact eviction decisions of the session-aware policies on hand-built scenarios.

Block ids are exact: the pool hands out free blocks oldest-freed first (0, 1, 2, ... at
start), and evicted blocks join the end of the free queue in eviction order.
"""

from __future__ import annotations

import pytest

from kvsaga.policy import GraphPolicy, SagaPolicy, TTLPolicy
from kvsaga.policy.aeg import ExecutionGraph
from kvsaga.policy.cost import PrefillCost
from tests.policy.helpers import build, make, run_step, tokens


def train(graph: ExecutionGraph, tool: str, gap: float, n: int = 5) -> None:
    """n past sessions paused once on `tool` for exactly `gap` seconds."""
    for i in range(n):
        sid, t = f"train-{tool}-{i}", -1e4 + i * 100.0
        graph.step_started(sid, "default", t)
        graph.step_finished(sid, tool, t + 1.0)
        graph.step_started(sid, "default", t + 1.0 + gap)
        graph.session_ended(sid, t + 2.0 + gap)


def demoted_on_grep(policy, prompts: dict[str, list[int]]):
    """`policy`'s graph trained on grep returning in 0.1 s, a 12-block manager, and each
    session of `prompts` (id -> prompt) run at 0 and paused on grep, then all demoted at 0.3
    (`session_deferred`). Returns the manager."""
    train(policy.graph, "grep", 0.1)
    m = make(policy, num_blocks=12)
    for sid, prompt in prompts.items():
        run_step(m, sid, prompt, now=0.0, tool="grep")
    for sid in prompts:
        policy.session_deferred(m.sessions[sid], True, 0.3)
    return m


def small_and_big_demoted(policy):
    """`demoted_on_grep` with `small` (2 blocks) and `big` (5 blocks)."""
    return demoted_on_grep(policy, {"small": tokens(100, 8), "big": tokens(300, 20)})


def trained(name: str):
    """A policy that has seen grep return in 0.1 s, lint in 5 s and pytest in 10 min."""
    policy = build(name)
    if name in ("ttl", "graph"):
        for tool, gap in (("grep", 0.1), ("lint", 5.0), ("pytest", 600.0)):
            train(policy.graph, tool, gap)
    return policy


@pytest.mark.parametrize(
    "name, victims, a_hit",
    [
        ("lru", [1, 0], 0),  # LRU drops the older pause: the one about to return
        ("ttl", [3, 2], 8),
        ("graph", [3, 2], 8),
    ],
)
def test_slow_tool_goes_before_fast_tool(name, victims, a_hit):
    m = make(trained(name), num_blocks=8)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="grep")  # blocks 0, 1
    run_step(m, "b", tokens(200, 8), now=0.01, tool="pytest")  # blocks 2, 3
    m.begin_step("c", tokens(300, 24), now=0.02)
    m.allocate_slots("c", 24, now=0.02)  # 4 free blocks + 2 victims
    assert m.block_table("c") == [4, 5, 6, 7] + victims
    m.finish_step("c", now=0.05, tool="grep")
    m.check_integrity()
    # a's grep returns: its context survived (or not).
    assert m.begin_step("a", tokens(100, 8) + [1, 2, 3], now=0.1).num_cached_tokens == a_hit


def test_ttl_keeps_a_short_pause_and_releases_a_long_one():
    policy = trained("ttl")
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="grep")
    run_step(m, "b", tokens(200, 8), now=0.0, tool="pytest")
    cost = PrefillCost()
    # Break-even TTL with no running step: rebuild of the 2 blocks / (2 blocks x rent).
    ttl = cost.recompute_s(8, 0) / (2 * cost.recompute_s(4, 0) / policy.base_ttl_s)
    expired, value, t = policy.session_value("a", 0.05)
    assert not expired and value > 0 and t == pytest.approx(ttl)
    # pytest rarely returns within the TTL, and costs rent meanwhile: released at once.
    expired, value, _ = policy.session_value("b", 0.05)
    assert expired and value < 0
    # Even grep's context goes once the break-even time has passed.
    assert policy.session_value("a", ttl + 0.01)[0]
    # Memory pressure raises the rent: with half the pool running, the TTL halves.
    m.begin_step("c", tokens(300, 16), now=0.05)
    m.allocate_slots("c", 16, now=0.05)
    assert m.stats().usage == 0.5
    assert policy.session_value("a", 0.05)[2] == pytest.approx(ttl / 2)


@pytest.mark.parametrize("name", ["ttl", "graph", "saga"])
def test_shared_prefix_outlives_its_sessions(name):
    m = make(build(name), num_blocks=8)
    system = tokens(1000, 8)  # two blocks every session starts with
    run_step(m, "a", system + tokens(100, 8), now=0.0, tool="x")  # blocks 0-3
    run_step(m, "b", system + tokens(200, 8), now=1.0, tool="x")  # hits 0, 1; blocks 4, 5
    m.end_session("a", now=1.5)
    m.end_session("b", now=1.5)
    run_step(m, "e", tokens(300, 4), now=1.6, tool="x")  # block 6: a live session, paused
    # Ended sessions' private blocks first (tail first, in order of ending), then the live
    # session; the shared prefix last.
    assert m.policy.eviction_order(2.0) == [3, 2, 5, 4, 6, 1, 0]
    m.begin_step("c", tokens(400, 24), now=2.0)
    m.allocate_slots("c", 24, now=2.0)  # block 7 + five victims
    assert m.block_table("c") == [7, 3, 2, 5, 4, 6]
    m.finish_step("c", now=2.5, tool="x")
    assert m.begin_step("d", system + [5], now=3.0).num_cached_tokens == 8


def test_lru_loses_the_shared_prefix_in_the_same_scenario():
    m = make("lru", num_blocks=8)
    system = tokens(1000, 8)
    run_step(m, "a", system + tokens(100, 8), now=0.0, tool="x")
    run_step(m, "b", system + tokens(200, 8), now=1.0, tool="x")
    m.end_session("a", now=1.5)
    m.end_session("b", now=1.5)
    run_step(m, "e", tokens(300, 4), now=1.6, tool="x")
    assert m.policy.eviction_order() == [3, 2, 5, 4, 1, 0, 6]


@pytest.mark.parametrize("name", ["ttl", "graph"])
def test_expected_s_hint_wins_over_the_learned_pause(name):
    m = make(trained(name), num_blocks=8)
    # pytest usually takes 10 min, but the engine says this call returns in 50 ms.
    run_step(m, "a", tokens(100, 8), now=0.0, tool="pytest", expected_s=0.05)  # 0, 1
    run_step(m, "b", tokens(200, 8), now=0.0, tool="lint")  # 2, 3: learned 5 s
    assert m.policy.eviction_order(0.01) == [3, 2, 1, 0]
    # grep usually takes 0.1 s, but this one is announced at 100 s.
    run_step(m, "g", tokens(300, 4), now=0.02, tool="grep", expected_s=100.0)  # block 4
    order = m.policy.eviction_order(0.03)
    assert order[0] == 4 and order[-2:] == [1, 0]


@pytest.mark.parametrize("name", ["ttl", "graph"])
def test_late_hint_through_pause_hint(name):
    m = make(trained(name), num_blocks=8)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="grep")  # 0, 1
    run_step(m, "b", tokens(200, 8), now=0.0, tool="lint")  # 2, 3
    assert m.policy.eviction_order(0.01) == [3, 2, 1, 0]
    m.pause_hint("a", now=0.01, expected_s=30.0)  # the engine learns grep will be slow
    assert m.policy.eviction_order(0.02) == [1, 0, 3, 2]
    m.resume_hint("a", now=0.03)  # ... and then it returned: needed right away
    assert m.policy.eviction_order(0.04) == [3, 2, 1, 0]


@pytest.mark.parametrize("name", ["ttl", "graph", "saga"])
def test_last_step_hint_makes_the_context_first_victim(name):
    m = make(trained(name), num_blocks=8)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="grep")  # 0, 1
    run_step(m, "b", tokens(200, 8), now=0.01, last_step=True)  # 2, 3: the session is over
    assert "b" not in m.sessions
    assert m.policy.eviction_order(0.02) == [3, 2, 1, 0]
    run_step(m, "c", tokens(300, 8), now=0.02, tool="grep")  # 4, 5
    m.pause_hint("c", now=0.03, last_step=True)  # said after the pause: same effect
    assert m.policy.eviction_order(0.04) == [3, 2, 5, 4, 1, 0]


@pytest.mark.parametrize("name", ["ttl", "graph", "saga", "belady", "oracle-ttl"])
def test_tail_before_head(name):
    m = make(build(name), num_blocks=6)
    run_step(m, "a", tokens(100, 16), now=0.0, tool="grep")  # blocks 0-3
    assert m.policy.eviction_order(0.1) == [3, 2, 1, 0]
    m.begin_step("c", tokens(200, 16), now=0.1)
    m.allocate_slots("c", 16, now=0.1)  # blocks 4, 5 + two of a's
    assert m.block_table("c") == [4, 5, 3, 2]
    m.finish_step("c", now=0.2, tool="grep")
    # a keeps a usable head.
    assert m.begin_step("a", tokens(100, 17), now=0.3).num_cached_tokens == 8


@pytest.mark.parametrize("name", ["ttl", "graph", "saga"])
def test_preempted_session_is_kept_for_its_retry(name):
    m = make(trained(name), num_blocks=8)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="grep")  # 0, 1: paused, returns soon
    m.begin_step("p", tokens(200, 8), now=0.5)
    m.allocate_slots("p", 8, now=0.5)  # 2, 3
    m.preempt("p", now=0.6)  # the engine requeues it: its blocks stay cached
    m.check_integrity()
    assert m.policy.eviction_order(0.7)[-2:] == [3, 2]


def test_each_policy_class_is_registered_and_documented():
    from kvsaga.policy import POLICIES

    assert {"lru", "ttl", "graph", "saga", "belady", "oracle-ttl"} <= set(POLICIES)
    for cls in POLICIES.values():
        assert cls.__doc__ and cls.__module__.startswith("kvsaga.policy")
    assert isinstance(build("ttl"), TTLPolicy)
    assert isinstance(build("graph"), GraphPolicy)
    assert isinstance(build("saga"), SagaPolicy)
