"""`adaptive` with `shadow_cache`: each expert ranks a shadow pool of its own."""

from __future__ import annotations

import pytest

from kvsaga.policy import AdaptivePolicy
from kvsaga.policy.shadow import _ACTIVE, _CACHED, _FREE, ShadowCache

from .helpers import make, run_step, tokens
from .test_adaptive import _rounds


def _held(sh: ShadowCache) -> set[bytes]:
    """Hashes of the shadow's cached full blocks."""
    return {sh.block_hash[b] for b in range(sh.num_gpu_blocks)
            if sh._state[b] == _CACHED and sh.block_hash[b] is not None}


def _conserved(sh: ShadowCache) -> None:
    state = sh._state
    assert state.count(_FREE) == len(sh._free) == len(set(sh._free))
    assert state.count(_ACTIVE) == sh._active
    for h, b in sh._index.items():
        assert sh.block_hash[b] == h and state[b] != _FREE
    check = getattr(sh.policy, "check_integrity", None)  # lru keeps no groups to check
    if check is not None:
        check()


@pytest.mark.parametrize("expert", ["lru", "ttl", "graph"])
def test_a_leaders_shadow_holds_what_the_real_pool_holds(expert):
    # One expert: its shadow sees the real steps and evicts by the same ranking, so it
    # holds the same full blocks (by content) as the real pool after every step.
    policy = AdaptivePolicy(experts=(expert,), shadow_cache=True)
    m = make(policy, num_blocks=12)
    sh = policy._shadows[0]
    for r in range(6):
        t = 10.0 * r
        run_step(m, f"a{r}", tokens(1000 * r, 16), t, tool="search", expected_s=0.5)
        run_step(m, f"b{r}", tokens(1000 * r + 100, 16), t + 1, tool="search",
                 expected_s=100.0)
        run_step(m, f"c{r}", tokens(1000 * r + 200, 20), t + 2, last_step=True)
        real = {m.pool.block_hash[b] for b in range(12)
                if m.pool.state[b] == 2 and m.pool.block_hash[b] is not None}
        assert _held(sh) == real
        _conserved(sh)
        run_step(m, f"a{r}", tokens(1000 * r, 20), t + 3, last_step=True)
        m.end_session(f"b{r}")
        assert _held(sh) == {m.pool.block_hash[b] for b in range(12)
                             if m.pool.state[b] == 2 and m.pool.block_hash[b] is not None}


def test_the_expert_whose_shadow_rebuilds_less_leads():
    # lru names A (tool back in 0.5 s, and A comes back), ttl names B: lru's shadow
    # rebuilds A's blocks at every round, ttl's none, so ttl takes the lead.
    policy = AdaptivePolicy(experts=("lru", "ttl"), shadow_cache=True)
    m = make(policy, num_blocks=8)
    assert policy.leader.name == "lru"
    _rounds(m, policy, 4, back="a")
    s = policy.scores()
    assert s["lru"] > 0 and s["ttl"] == 0
    assert policy.leader.name == "ttl"
    for sh in policy._shadows:
        _conserved(sh)
    policy.check_integrity()


def test_a_leader_within_the_switch_margin_keeps_the_lead():
    policy = AdaptivePolicy(experts=("lru", "ttl"), shadow_cache=True, switch_margin=0.1)
    make(policy, num_blocks=8)
    lru, ttl = policy.experts
    lru.charged, ttl.charged = 1.0, 0.95  # ttl's shadow 5% ahead: not enough
    policy._elect()
    assert policy.leader is lru
    ttl.charged = 0.85  # 15% ahead
    policy._elect()
    assert policy.leader is ttl


def test_a_preempted_step_is_released_in_the_shadow():
    policy = AdaptivePolicy(experts=("ttl",), shadow_cache=True)
    m = make(policy, num_blocks=8)
    m.begin_step("a", tokens(0, 16), now=0.0)
    m.allocate_slots("a", 16, now=0.0)
    m.preempt("a", now=1.0)
    run_step(m, "a", tokens(0, 20), 2.0, last_step=True)
    sh = policy._shadows[0]
    assert not sh._running and sh._active == 0
    _conserved(sh)


def test_bad_shadow_memory_is_refused():
    with pytest.raises(ValueError, match="shadow_memory"):
        AdaptivePolicy(shadow_cache=True, shadow_memory=0)
