"""`adaptive`: the leader follows the expert whose named victims come back least."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings

from kvsaga import OutOfBlocks
from kvsaga.policy import POLICIES, AdaptivePolicy
from tests.policy.test_properties import apply, op_lists
from tests.policy.victim_record import STEPS, WORKLOADS

from .helpers import make, run_step, tokens


def test_leader_moves_to_the_expert_whose_victims_do_not_come_back():
    # A (older) says it resumes soon, B (newer) in a long while: lru names A, ttl names B.
    policy = AdaptivePolicy(experts=("lru", "ttl"), realized=False,  # ghost evidence
                            shadow_cache=False)
    m = make(policy, num_blocks=8)
    assert policy.leader.name == "lru"  # no data: the first expert leads
    for r in range(3):
        a, b, c = f"a{r}", f"b{r}", f"c{r}"
        base = 1000 * r
        t = 10.0 * r
        run_step(m, a, tokens(base, 8), t, tool="search", expected_s=0.5)
        run_step(m, b, tokens(base + 100, 8), t + 1, tool="search", expected_s=1000.0)
        run_step(m, c, tokens(base + 200, 24), t + 2, last_step=True)  # evicts 2 of A, B
        run_step(m, a, tokens(base, 12), t + 3, last_step=True)  # A's prompt: its blocks
        m.end_session(b)
    s = policy.scores()
    assert s["lru"] > s["ttl"]
    assert policy.leader.name == "ttl"
    assert policy.experts[0].charged > 0 and policy.experts[1].charged == 0


def test_every_expert_sees_the_same_blocks():
    policy = AdaptivePolicy()
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(0, 12), 0.0, tool="search")
    run_step(m, "b", tokens(100, 16), 1.0, tool="search")
    policy.check_integrity()
    cached = sorted(b for b in range(8) if m.pool.state[b] == 2)
    for e in policy.experts:
        assert sorted(e.policy.eviction_order()) == cached


@pytest.mark.parametrize("kw, what", [
    (dict(experts=()), "at least one"),
    (dict(experts=("lru", "belady")), "belady"),
    (dict(experts=("lru", "adaptive")), "adaptive"),
    (dict(experts=("lru", "lru")), "distinct"),
    (dict(ghost_factor=0), "ghost_factor"),
    (dict(memory_blocks=-1), "memory_blocks"),
    (dict(prior_blocks=0), "prior_blocks"),
    (dict(switch_margin=-0.1), "switch_margin"),
    (dict(shadow_share=0), "shadow_share"),
    (dict(shadow_share=1.5), "shadow_share"),
    (dict(realized=True, epoch_pools=0), "epoch_pools"),
    # As JSON policy_args may give them: a TypeError naming no parameter, or (one name
    # as experts) "expert 'g' is not an online policy"; an infinite size broke at bind.
    (dict(switch_margin="0.1"), "switch_margin must be a finite number >= 0"),
    (dict(ghost_factor=None), "ghost_factor must be a finite number > 0"),
    (dict(ghost_factor=float("inf")), "ghost_factor must be a finite number > 0"),
    (dict(memory_blocks="32"), "memory_blocks"),
    (dict(prior_blocks=float("nan")), "prior_blocks"),
    (dict(shadow_share="0.5"), "shadow_share"),
    (dict(shadow_share=True), "shadow_share"),
    (dict(shadow_memory="8"), "shadow_memory must be a finite number > 0"),
    (dict(epoch_pools="1"), "epoch_pools must be a finite number > 0"),
    (dict(epoch_pools=float("inf")), "epoch_pools"),
    (dict(experts="graph"), "experts must be a list of policy names, got 'graph'"),
])
def test_bad_arguments_name_what_is_wrong(kw, what):
    with pytest.raises(ValueError, match=what):
        AdaptivePolicy(**kw)


def test_json_policy_args_are_accepted():
    p = AdaptivePolicy(experts=["ttl", "lru"], switch_margin=0, ghost_factor=2,
                       shadow_memory=4)
    assert [e.name for e in p.experts] == ["ttl", "lru"] and p.switch_margin == 0


def test_a_shadow_expert_names_only_its_share_of_each_search():
    # Four paused sessions of 2 full blocks each fill the pool; the fifth step evicts 4.
    policy = AdaptivePolicy(experts=("lru", "ttl"), shadow_share=0.25, realized=False,
                            shadow_cache=False)
    m = make(policy, num_blocks=8)
    for i in range(4):
        run_step(m, f"s{i}", tokens(100 * i, 8), float(i), tool="search")
    lead, shadow = policy.experts
    assert (len(lead.ghost), len(shadow.ghost)) == (0, 0)
    run_step(m, "new", tokens(900, 16), 10.0, last_step=True)  # 4 victims asked for
    assert len(lead.ghost) == 4  # the leader names every victim it evicts
    assert len(shadow.ghost) == 1  # the shadow: ceil(0.25 x 4)
    policy.check_integrity()


def test_every_expert_hears_of_demotions():
    # A demotion changes how ttl and graph rank the session: adaptive must pass it on.
    policy = AdaptivePolicy(experts=("graph", "ttl"))
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(0, 8), 0.0, tool="search")
    graph, ttl = (e.policy for e in policy.experts)
    session = m.sessions["a"]
    policy.session_deferred(session, True, 1.0)
    assert "a" in graph._deferred
    assert ttl.views["a"].hint.last_step  # released until its tool returns
    policy.session_deferred(session, False, 2.0)
    assert "a" not in graph._deferred
    policy.check_integrity()


def test_realized_evidence_lets_each_expert_lead_an_epoch_and_only_the_leader_names():
    # Pool of 8, epochs of one pool size (8 victims): lru leads the first, ttl the next.
    policy = AdaptivePolicy(experts=("lru", "ttl"), realized=True, epoch_pools=1.0,
                            shadow_cache=False)
    m = make(policy, num_blocks=8)
    lru, ttl = policy.experts
    for i in range(4):
        run_step(m, f"s{i}", tokens(100 * i, 8), float(i), tool="search")
    run_step(m, "n0", tokens(900, 32), 10.0, last_step=True)  # 8 victims: lru's epoch
    assert policy.leader is lru and len(lru.ghost) == 8 and not ttl.ghost
    assert 15 < lru.named <= 16  # the 16 prompt blocks read while it led (decayed)
    run_step(m, "n1", tokens(2000, 8), 11.0, last_step=True)  # the epoch is over
    assert policy.leader is ttl and ttl.ghost and len(lru.ghost) == 8
    run_step(m, "s0", tokens(0, 12), 12.0, last_step=True)  # reads s0's evicted blocks
    # s0's 3 blocks were read under ttl; the victims lru named are charged to lru
    assert 2.9 < ttl.named <= 3 and lru.charged > 0 and ttl.charged == 0
    policy.check_integrity()


def test_the_scheduler_reads_the_leaders_execution_graph():
    # The workflow scheduler predicts working sets from `policy.graph`: adaptive must show
    # the leader's, or an expert inside it runs under other admission than alone.
    policy = AdaptivePolicy(experts=("saga", "lru"))
    saga, lru = policy.experts
    assert policy.graph is saga.policy.graph
    policy.leader = lru
    assert policy.graph is None


@pytest.mark.parametrize("expert", ["saga", "graph"])
def test_a_single_expert_simulates_as_that_policy_alone(expert):
    from kvsaga.sim.compare import peak_prompt_working_set
    from kvsaga.sim.simulator import SimConfig, Simulator
    from kvsaga.sim.workloads import WORKLOADS

    spec = WORKLOADS["swe"]  # a trace where graph-less admission changed saga's cost 1.3x
    trace = spec.generate(12, 4, arrival_rate=spec.arrival_rate / 0.1, scale=0.1)
    base = SimConfig(preset="a100-llama3-8b")
    longest = max(base.cost.kv_spec.num_blocks_for(s.total_tokens) for s in trace)
    blocks = max(int(0.3 * peak_prompt_working_set(trace, base)), longest + 1)

    config = SimConfig(preset="a100-llama3-8b", num_gpu_blocks=blocks, policy=expert)

    def recomputed(policy):
        return Simulator(trace, config, policy=policy).run().recomputed_tokens

    alone = recomputed(None)
    assert alone > 0  # under pressure: the victims matter
    # priced as the simulator prices a policy it builds by name (the run's cost model): the
    # scheduler reads the policy's prices too (its default swap, `readmit_charge`
    # "room_returns_queue", prices its victims' recomputation with them)
    assert recomputed(AdaptivePolicy(experts=(expert,), cost=config.cost)) == alone


def _rounds(m, policy, n: int, back: str, first: int = 0) -> None:
    """`n` rounds in which two paused sessions meet an eviction: A (older) says its tool
    takes 0.5 s, B (newer) 1000 s, so lru names A and ttl names B; then `back` ("a" or "b")
    reads its prompt again and the other session ends. Rounds are 10 s apart."""
    for r in range(first, first + n):
        base, t = 1000 * r, 10.0 * r
        run_step(m, f"a{r}", tokens(base, 8), t, tool="search", expected_s=0.5)
        run_step(m, f"b{r}", tokens(base + 100, 8), t + 1, tool="search", expected_s=1000.0)
        run_step(m, f"c{r}", tokens(base + 200, 24), t + 2, last_step=True)  # evicts 2
        again, gone = (f"a{r}", f"b{r}") if back == "a" else (f"b{r}", f"a{r}")
        run_step(m, again, tokens(base + (0 if back == "a" else 100), 12), t + 3,
                 last_step=True)
        m.end_session(gone)


def _ghost_policy(experts, **kw) -> AdaptivePolicy:
    # ghost evidence with the margin these tests were written for (the default is 0.1
    # since the fifteenth session's shadow caches)
    kw = dict(realized=False, shadow_share=1.0, ghost_factor=1.0, switch_margin=0.05,
              shadow_cache=False) | kw
    return AdaptivePolicy(experts=experts, **kw)


def test_leader_leaves_ttl_for_lru_when_ttls_victims_come_back():
    # The mirror of the first test: the same evictions, but B returns and A does not, so
    # ttl (which named B) is wrong and lru (which named A) right.
    policy = _ghost_policy(("ttl", "lru"))
    m = make(policy, num_blocks=8)
    assert policy.leader.name == "ttl"
    _rounds(m, policy, 3, back="b")
    s = policy.scores()
    assert s["ttl"] > s["lru"]
    assert policy.leader.name == "lru"
    policy.check_integrity()


def test_of_three_experts_the_one_charged_never_leads():
    # saga drops A too (its 0.5 s TTL has run out when the eviction comes), so with A
    # never back only ttl is charged: the leader is lru or saga, never ttl.
    policy = _ghost_policy(("ttl", "saga", "lru"))
    m = make(policy, num_blocks=8)
    _rounds(m, policy, 3, back="b")
    s = policy.scores()
    assert s["ttl"] > max(s["saga"], s["lru"])
    assert policy.leader.name in ("saga", "lru")
    ttl = policy.experts[0]
    assert ttl.charged > 0 and all(e.charged == 0 for e in policy.experts[1:])


def test_a_leader_within_the_switch_margin_keeps_the_lead():
    # Hysteresis: the same evidence moves the lead at margin 0, not at a margin larger than
    # the gap between the two scores (a share of the pooled score).
    moved = _ghost_policy(("ttl", "lru"), switch_margin=0.0)
    _rounds(make(moved, num_blocks=8), moved, 1, back="b")
    assert moved.leader.name == "lru"
    kept = _ghost_policy(("ttl", "lru"), switch_margin=10.0)
    _rounds(make(kept, num_blocks=8), kept, 1, back="b")
    s = kept.scores()
    named = sum(e.named for e in kept.experts)
    pooled = sum(e.charged for e in kept.experts) / named
    assert s["ttl"] > s["lru"] > s["ttl"] - 10.0 * pooled  # worse, but within the margin
    assert kept.leader.name == "ttl"


def test_the_lead_comes_back_when_the_traffic_changes():
    # First B returns (lru right), then for longer A returns (ttl right): with evidence
    # decayed over a few pool turnovers of names the lead goes to lru, then back to ttl.
    policy = _ghost_policy(("ttl", "lru"), memory_blocks=2.0, prior_blocks=0.5)
    m = make(policy, num_blocks=8)
    _rounds(m, policy, 3, back="b")
    assert policy.leader.name == "lru"
    _rounds(m, policy, 8, back="a", first=3)
    s = policy.scores()
    assert s["lru"] > s["ttl"]
    assert policy.leader.name == "ttl"
    policy.check_integrity()


def _shared_and_own(realized: bool, num_blocks: int, host: int) -> tuple:
    """Two adaptive managers for the same calls: the grouped experts sharing one block
    tracking (the default), and each keeping its own (the reference). Short epochs, so that
    the lead changes often."""
    shared = AdaptivePolicy(realized=realized, epoch_pools=0.25, shadow_cache=False)
    own = AdaptivePolicy(realized=realized, epoch_pools=0.25, shadow_cache=False)
    own.share_tracking = False
    return (make(shared, num_blocks=num_blocks, num_host_blocks=host),
            make(own, num_blocks=num_blocks, num_host_blocks=host))


def _same_tracking(ms: tuple, named: list) -> None:
    """Both managers named the same victims, and each grouped expert tracks the same
    blocks, marks the same sessions dirty and stamps the same cache times in both."""
    assert named[0] == named[1]
    for m in ms:
        m.check_integrity()
        m.policy.check_integrity()
    cached = [b for b in range(ms[0].num_gpu_blocks) if ms[0].is_cached(b)]
    for a, b in zip(ms[0].policy.experts, ms[1].policy.experts, strict=True):
        if a.name == "lru":
            continue
        pa, pb = a.policy, b.policy
        assert pa._dirty == pb._dirty, a.name
        assert pa.groups == pb.groups and list(pa.plain) == list(pb.plain)
        assert list(pa.dead) == list(pb.dead)
        assert [pa._cached_at[x] for x in cached] == [pb._cached_at[x] for x in cached]
    assert ms[0].policy.leader.name == ms[1].policy.leader.name


def _recording(ms: tuple) -> list:
    named: list[list] = [[], []]
    for m, out in zip(ms, named, strict=True):
        choose = m.policy.choose_victims
        m.policy.choose_victims = lambda n, now, c=choose, o=out: o.append(c(n, now)) or o[-1]
    groups = ms[0].policy.experts[0].policy.groups
    assert all(e.policy.groups is groups for e in ms[0].policy.experts if e.name != "lru")
    assert all(e.policy.groups is not groups for e in ms[1].policy.experts[1:]
               if e.name != "lru")
    return named


@pytest.mark.parametrize("realized", [True, False])
@settings(max_examples=30, deadline=None)
@given(ops=op_lists)
def test_shared_block_tracking_gives_what_each_expert_tracking_its_own_gives(realized, ops):
    ms = _shared_and_own(realized, 24, 4)
    named = _recording(ms)
    now = 0.0
    for op, i, n, x in ops:
        for m in ms:
            with contextlib.suppress(OutOfBlocks):
                after = apply(m, op, i, n, x, now)
        now = after + 0.01
        _same_tracking(ms, named)


@pytest.mark.parametrize("walk", ["ops", "agents"])
@pytest.mark.parametrize("realized", [True, False])
def test_shared_block_tracking_on_the_recorded_walks(walk, realized):
    """The victim record's walks (48 agent sessions, or the manager's calls at random),
    checked after every call: many sessions lose blocks long after their last hook."""
    ms = _shared_and_own(realized, 48, 16)
    named = _recording(ms)
    call = WORKLOADS[walk]
    rngs = [random.Random(5), random.Random(5)]
    now = 0.0
    for _ in range(500):
        for m, rng in zip(ms, rngs, strict=True):
            with contextlib.suppress(OutOfBlocks):
                after = call(m, rng, now)
            step = rng.choice(STEPS)
        now = after + step
        _same_tracking(ms, named)


def test_share_blocks_refuses_a_policy_of_another_view():
    a, b = make("ttl").policy, make("saga").policy
    with pytest.raises(ValueError, match="same view"):
        a.share_blocks([b])


def _tracking(p) -> tuple:
    return (p.groups, p.plain, p.dead, p._where, p._owner, p._pos)


@pytest.mark.parametrize("bad, error, message", [
    ("saga of another view", ValueError, r"others\[1\] \(saga\) must be .* same view"),
    ("lru of this view", TypeError, r"others\[1\] must be a GroupedPolicy, got LRUPolicy"),
    ("a name", TypeError, r"others\[1\] must be a GroupedPolicy, got str"),
    ("the good one again", ValueError, r"others\[1\] \(saga\) is listed twice"),
    ("the sharer itself", ValueError, r"others\[1\] \(ttl\) is listed twice or is this"),
])
def test_share_blocks_checks_every_policy_before_sharing_any(bad, error, message):
    """A good policy then a bad one: the error names the bad one and what is wrong with
    it, and neither the good one nor the sharer was changed (all are checked first)."""
    m = make("ttl")
    a = m.policy
    good = POLICIES["saga"]()
    good.bind(a.view)
    lru = POLICIES["lru"]()
    lru.bind(a.view)
    wrong = {"saga of another view": make("saga").policy, "lru of this view": lru,
             "a name": "saga", "the good one again": good, "the sharer itself": a}[bad]
    before = _tracking(good)
    with pytest.raises(error, match=message):
        a.share_blocks([good, wrong])
    assert all(x is y for x, y in zip(_tracking(good), before, strict=True))
    assert not any(x is y for x, y in zip(_tracking(good), _tracking(a), strict=True))
    assert a._sharing == (a,)
    a.share_blocks([good])  # and the good one alone is still accepted
    assert good.groups is a.groups and a._sharing == (a, good)
