"""The offline oracles with a stub future."""

from __future__ import annotations

import math

import pytest

from kvsaga.policy import BeladyPolicy, ClairvoyantTTLPolicy, make_policy
from kvsaga.policy.base import Action
from tests.policy.helpers import TableOracle, make, run_step, tokens


def test_farthest_next_use_first_never_reused_first_tail_first():
    oracle = TableOracle({"a": 50.0, "b": 10.0, "c": math.inf})
    m = make(BeladyPolicy(oracle), num_blocks=16)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="x")  # 0, 1
    run_step(m, "b", tokens(200, 8), now=0.0, tool="x")  # 2, 3
    run_step(m, "c", tokens(300, 8), now=0.0, tool="x")  # 4, 5
    assert m.policy.eviction_order(1.0) == [5, 4, 1, 0, 3, 2]
    m.begin_step("d", tokens(400, 52), now=1.0)
    m.allocate_slots("d", 52, now=1.0)  # 10 free + 3 victims
    assert m.block_table("d")[10:] == [5, 4, 1]
    m.check_integrity()


def test_plain_blocks_ask_the_oracle_as_plain_and_are_cached():
    # Position 0 (a shared head) is needed at t = 5; every other plain block never again.
    oracle = TableOracle({"b": 20.0}, plain={0: 5.0})
    m = make(BeladyPolicy(oracle), num_blocks=16)
    run_step(m, "a", tokens(100, 12), now=0.0, tool="x")  # 0, 1, 2
    run_step(m, "b", tokens(200, 8), now=0.0, tool="x")  # 3, 4
    m.end_session("a", now=0.5)  # 0-2: plain now (session_id None for the oracle)
    assert m.policy.eviction_order(1.0) == [2, 1, 4, 3, 0]
    calls = oracle.calls
    m.policy.choose_victims(1, 1.0)
    # One question per session stream (its tail), none for the cached plain answers.
    assert oracle.calls - calls == 1
    # Once the answered time has passed unused, the oracle is asked again.
    oracle.plain[0] = 30.0
    assert m.policy.eviction_order(6.0) == [2, 1, 0, 4, 3]


def test_offload_only_what_is_reused():
    oracle = TableOracle({"a": 50.0})
    m = make(BeladyPolicy(oracle), num_blocks=16, num_host_blocks=4)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="x")
    run_step(m, "z", tokens(200, 8), now=0.0, last_step=True)
    assert m.policy.action(0, 1.0) is Action.OFFLOAD  # a's: reused at t = 50
    assert m.policy.action(2, 1.0) is Action.DISCARD  # z's: never again


def test_clairvoyant_ttl_keeps_iff_resume_within_break_even():
    # The break-even TTL of a 2-block head is ~60 s (base_ttl_s) with nothing running.
    oracle = TableOracle({"soon": 30.0, "late": 500.0})
    policy = ClairvoyantTTLPolicy(oracle)
    m = make(policy, num_blocks=16)
    run_step(m, "soon", tokens(100, 8), now=0.0, tool="x")  # 0, 1
    run_step(m, "late", tokens(200, 8), now=0.0, tool="x")  # 2, 3
    assert policy.session_value("soon", 1.0)[0] is False
    assert policy.session_value("late", 1.0)[0] is True
    assert policy.eviction_order(1.0) == [3, 2, 1, 0]


def test_oracle_policies_need_an_oracle():
    for name in ("belady", "oracle-ttl"):
        with pytest.raises(ValueError, match="FutureOracle"):
            make_policy(name)
