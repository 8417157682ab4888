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


def _real_pool(m) -> tuple[set[bytes], int, int]:
    """The real pool's cached full-block hashes, its cached blocks and its free blocks."""
    p = m.pool
    n = m.num_gpu_blocks if hasattr(m, "num_gpu_blocks") else len(p.state)
    held = {p.block_hash[b] for b in range(n) if p.state[b] == 2 and p.block_hash[b] is not None}
    return held, sum(p.state[b] == 2 for b in range(n)), sum(p.state[b] == 0 for b in range(n))


def _shadow_pool(sh: ShadowCache) -> tuple[set[bytes], int, int]:
    return _held(sh), sh._state.count(_CACHED), sh._state.count(_FREE)


def _decode_step(m, sid: str, prompt: list[int], decoded: int, now: float, **finish) -> None:
    """A prefill of `prompt`, `decoded` sampled tokens (the last one has no KV yet), end."""
    st = m.begin_step(sid, prompt, now=now)
    m.allocate_slots(sid, len(prompt) - st.num_cached_tokens, now=now)
    for k in range(decoded):
        m.append_tokens(sid, [50_000 + 97 * len(prompt) + k])
        if k < decoded - 1:
            m.allocate_slots(sid, 1, now=now)
    m.finish_step(sid, now=now, **finish)
    m.check_integrity()


@pytest.mark.parametrize("core", ["python", "cpp"])
@pytest.mark.parametrize("expert", ["lru", "ttl", "graph"])
def test_a_one_expert_shadow_matches_the_real_pool_with_tails_and_decode(expert, core):
    # Unaligned prompts and decoded tokens: paused sessions keep a partial tail block (the
    # real pool's and the shadow's), a context ending on a block boundary has its last
    # block without KV for the sampled token; the shadow holds what the real pool holds,
    # block for block, after every step.
    if core == "cpp":
        pytest.importorskip("kvsaga._kvcore")
    policy = AdaptivePolicy(experts=(expert,), shadow_cache=True)
    m = make(policy, num_blocks=20, core=core)
    sh = policy._shadows[0]
    ctx: dict[str, list[int]] = {}
    for r in range(4):
        t = 10.0 * r
        for j, (sid, n, dec, kw) in enumerate((
                ("a", 5 + r, 3, {"tool": "search", "expected_s": 0.5}),
                ("b", 6 + r, 2 + r % 3, {"tool": "search", "expected_s": 100.0}),
                (f"c{r}", 9, 4, {"last_step": True}))):
            prompt = ctx.get(sid, tokens(1000 * (j + 1) + 100 * r, 0)) + tokens(
                10_000 * (j + 1) + 200 * r, n)
            _decode_step(m, sid, prompt, dec, t + j, **kw)
            if not kw.get("last_step"):
                ctx[sid] = list(m.sessions[sid].token_ids)
            assert _shadow_pool(sh) == _real_pool(m), (r, sid)
            sh.check_integrity()
    m.end_session("b")
    assert _shadow_pool(sh) == _real_pool(m)
    sh.check_integrity()


def test_a_failing_shadow_is_dropped_and_the_real_cache_keeps_working(caplog):
    # A shadow is evidence only: one that raises (here its pool's allocation) is logged
    # once and dropped; the real experts still got the hook and the leader stays.
    policy = AdaptivePolicy(experts=("lru", "ttl"), shadow_cache=True)
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(0, 9), 0.0, tool="search", expected_s=1.0)
    leader = policy.leader
    seen = []
    real_started = policy.experts[0].policy.step_started
    policy.experts[0].policy.step_started = lambda s, now: (seen.append(s.session_id),
                                                            real_started(s, now))

    def broken(*args):
        raise RuntimeError("injected")
    policy._shadows[1]._allocate = broken
    with caplog.at_level("ERROR", logger="kvsaga.policy"):
        for r in range(4):
            run_step(m, f"s{r}", tokens(100 * (r + 1), 13), 1.0 + r, tool="search",
                     expected_s=1.0)
    assert seen == ["s0", "s1", "s2", "s3"]  # the real expert had every hook
    assert policy._shadows == [] and policy.leader is leader
    assert sum("shadow cache failed" in r.message for r in caplog.records) == 1
    m.check_integrity()
    policy.check_integrity()
    assert run_step(m, "a", tokens(0, 13), 9.0, last_step=True) >= 0


@pytest.mark.parametrize("what", ["shadow_cache", "realized"])
def test_bool_parameters_reject_what_is_not_a_bool(what):
    with pytest.raises(ValueError, match=what):
        AdaptivePolicy(**{what: "maybe"})
    with pytest.raises(ValueError, match=what):
        AdaptivePolicy(**{what: 2})
    assert getattr(AdaptivePolicy(**{what: "false"}), what) is False
    assert getattr(AdaptivePolicy(**{what: "true"}), what) is True


def test_shadow_mode_reserves_no_ghost_lists():
    policy = AdaptivePolicy(experts=("graph", "ttl"), shadow_cache=True)
    make(policy, num_blocks=64)
    assert all(type(e.ghost).__name__ == "PyGhostList" and e.ghost._cap == 1
               for e in policy.experts)
