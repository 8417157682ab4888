"""`saga`: the published scoring formula and TTL, checked against hand computations."""

from __future__ import annotations

import math

import pytest

from kvsaga.policy import SagaPolicy
from tests.policy.helpers import make, run_step, tokens

Z95 = 1.6448536269514722
PRIOR_P95 = math.exp(0.0 + Z95 * 1.0)  # prior: median 1 s, sigma 1 -> 5.18 s


def test_score_formula_and_order():
    policy = SagaPolicy()
    m = make(policy, num_blocks=16)
    run_step(m, "a", tokens(100, 4), now=0.0, tool="x")  # block 0
    run_step(m, "b", tokens(200, 8), now=9.0, tool="x")  # blocks 1, 2
    run_step(m, "c", tokens(300, 16), now=10.0, tool="x")  # blocks 3-6
    # No session finished yet: mean_steps is the prior 10, so P_reuse = 0.9.
    p = 0.9
    want = {
        # 0.3 * idle / 10 + 0.5 * (1 - P_reuse) + 0.2 * blocks / 4
        "a": 0.3 * 10 / 10 + 0.5 * (1 - p) + 0.2 * 1 / 4,  # 0.40
        "b": 0.3 * 1 / 10 + 0.5 * (1 - p) + 0.2 * 2 / 4,  # 0.18
        "c": 0.3 * 0 / 10 + 0.5 * (1 - p) + 0.2 * 4 / 4,  # 0.25
    }
    got = policy.scores(10.0)
    assert {s: v for s, (_, v) in got.items()} == pytest.approx(want)
    # Nothing runs (used = 0, m = 0): TTL = p95 of the prior = 5.18 s; only a is past it.
    assert {s: e for s, (e, _) in got.items()} == {"a": True, "b": False, "c": False}
    # a (expired) first; then the highest score: c before b although c paused last.
    assert policy.eviction_order(10.0) == [0, 6, 5, 4, 3, 2, 1]


def test_ttl_formula_with_ema_latencies():
    policy = SagaPolicy()
    m = make(policy, num_blocks=16)
    run_step(m, "t", tokens(100, 4), now=0.0, tool="grep")
    run_step(m, "t", tokens(100, 5), now=2.0, tool="grep")  # grep took 2 s
    run_step(m, "t", tokens(100, 6), now=10.0, tool="slow")  # grep took 8 s
    run_step(m, "t", tokens(100, 7), now=1010.0, tool="x")  # slow took 1000 s
    m1 = math.log(2) + 0.1 * (math.log(8) - math.log(2))
    m2 = math.log(2) ** 2 + 0.1 * (math.log(8) ** 2 - math.log(2) ** 2)
    p95 = math.exp(m1 + Z95 * math.sqrt(m2 - m1**2))
    assert policy.p95("grep") == pytest.approx(p95)
    for used, pressure in ((0.5, 0.0), (0.7, 0.0), (0.8, 0.5), (0.9, 1.0), (1.0, 1.0)):
        assert policy.ttl_s("grep", used) == pytest.approx(p95 * (1 - 0.5 * pressure))
    assert policy.ttl_s("slow", 0.0) == 300.0  # one observation: p95 = 1000 s, capped
    assert policy.p95("unseen") == pytest.approx(policy.all_latency.p95())  # all tools
    assert SagaPolicy().p95("unseen") == pytest.approx(PRIOR_P95)
    # A hint's expected duration stands in for p95.
    assert policy.ttl_s("grep", 0.8, expected_s=4.0) == pytest.approx(3.0)


def test_p_reuse_from_mean_steps():
    policy = SagaPolicy()
    m = make(policy, num_blocks=16)
    assert policy.p_reuse("w") == pytest.approx(0.9)
    for k in range(3):
        m.begin_step("s", tokens(100, 4 + k), now=float(k), workflow="w")
        m.allocate_slots("s", 1 if k else 4, now=float(k))
        if k < 2:
            m.finish_step("s", now=k + 0.5, tool="x")
    m.end_session("s", now=3.0)  # three steps; one prior session of 10 steps
    assert policy.p_reuse("w") == pytest.approx(1 - 1 / 6.5)


def test_pressure_expires_entries_sooner():
    policy = SagaPolicy()
    m = make(policy, num_blocks=10)
    run_step(m, "a", tokens(100, 4), now=0.0, tool="x")  # block 0, idle 4 s at t = 4
    assert policy.scores(4.0)["a"][0] is False  # TTL 5.18 s
    m.begin_step("r", tokens(200, 32), now=4.0)
    m.allocate_slots("r", 32, now=4.0)  # 8 of 10 blocks running: m = 0.5
    assert m.stats().usage == 0.8
    assert policy.scores(4.0)["a"][0] is True  # TTL 5.18 * 0.75 = 3.9 s


def test_sticky_levels_are_skipped_only_where_they_cannot_move():
    """`_search_state` skips `sticky_level` for an input inside [_BAND_LO, _BAND_HI] * 2**L:
    there the level certainly stays L, at the band's edges and at every scale."""
    from kvsaga.policy.saga import _BAND_HI, _BAND_LO
    from kvsaga.policy.search import sticky_level

    for level in range(-20, 64):
        for x in (_BAND_LO * 2.0**level, _BAND_HI * 2.0**level, 2.0**level,
                  math.nextafter(_BAND_LO * 2.0**level, math.inf)):
            assert sticky_level(x, level, 2.0) == level, (x, level)
        # just outside the band's reach the level moves (the band is not loose)
        assert sticky_level(2.0 ** (level + 1) * 1.01, level, 2.0) != level
        assert sticky_level(2.0 ** (level - 1) * 0.99, level, 2.0) != level
