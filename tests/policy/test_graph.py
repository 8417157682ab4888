"""`graph`: session pricing, plain-cache reuse statistics, offload/discard, prefetch, laziness."""

from __future__ import annotations

import pytest

from kvsaga.policy import GraphPolicy
from kvsaga.policy.base import Action
from kvsaga.policy.cost import PrefillCost
from kvsaga.policy.return_forecast import DEFERRED_SLOWDOWN
from kvsaga.policy.returns import WaitSamples
from tests.policy.helpers import make, run_step, tokens
from tests.policy.test_scenarios import train


def test_session_blocks_are_priced_by_the_graphs_prediction():
    policy = GraphPolicy()
    train(policy.graph, "lint", 5.0)
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="lint")
    assert policy.predict_session("a", 1.0) == policy.graph.predict("default", "lint", 1.0)
    cost = PrefillCost()
    assert policy.block_cost(1) == pytest.approx(cost.recompute_s(4, 4))
    assert policy.block_cost(0) < policy.block_cost(1)  # deeper blocks cost more to rebuild
    assert policy.eviction_order(1.0) == [1, 0]  # the session's tail goes first


def test_plain_block_reuse_statistics():
    policy = GraphPolicy()
    m = make(policy, num_blocks=16)
    system = tokens(1000, 4)  # block 0
    run_step(m, "a", system + [1], now=0.0, tool="x")
    run_step(m, "b", system + [2], now=2.0, tool="x")  # first hit: a's use counts too
    run_step(m, "c", system + [3], now=4.0, tool="x")  # a gap of 2 s between hits
    p = policy.predict_plain(0, 5.0)
    assert p.p_resume == pytest.approx(3 / 4) and p.expected_s == pytest.approx(2.0)
    assert policy.predict_plain(0, 10.0).expected_s == pytest.approx(6.0)  # idle 6 s so far


def test_offload_when_reused_and_cheaper_to_reload():
    policy = GraphPolicy()
    m = make(policy, num_blocks=6, num_host_blocks=4)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="x")  # 0, 1
    run_step(m, "z", tokens(200, 8), now=0.0, last_step=True)  # 2, 3: ended
    assert policy.action(0, 0.5) is Action.OFFLOAD
    assert policy.action(2, 0.5) is Action.DISCARD
    # Over a slow bus (1 kB/s), recomputing is cheaper than reloading.
    slow = GraphPolicy(cost=PrefillCost(host_bandwidth=1e3))
    m2 = make(slow, num_blocks=6, num_host_blocks=4)
    run_step(m2, "a", tokens(100, 8), now=0.0, tool="x")
    assert slow.action(0, 0.5) is Action.DISCARD
    # No host tier: always discard.
    m3 = make(GraphPolicy(), num_blocks=6)
    run_step(m3, "a", tokens(100, 8), now=0.0, tool="x")
    assert m3.policy.action(0, 0.5) is Action.DISCARD


def test_offloaded_session_is_prefetched_before_its_announced_resume():
    policy = GraphPolicy()
    m = make(policy, num_blocks=6, num_host_blocks=4)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="x", expected_s=10.0)  # 0, 1
    m.begin_step("b", tokens(200, 24), now=1.0)
    m.allocate_slots("b", 24, now=1.0)  # 4 free + both of a's blocks, offloaded
    assert m.stats().offloaded_blocks == 2
    m.finish_step("b", now=2.0, tool="x", expected_s=100.0)
    m.take_transfers()
    assert policy.prefetch_candidates(5.0) == []  # a resumes at 10 s: not yet
    m.tick(9.95)  # within prefetch_lead_s of the announced resume: loads start
    assert m.stats().prefetched_blocks == 2
    assert policy.prefetch_candidates(9.96) == []  # named once
    assert m.begin_step("a", tokens(100, 9), now=10.0).num_cached_tokens == 8


def test_a_victim_search_is_lazy():
    policy = GraphPolicy()
    m = make(policy, num_blocks=64)
    for i in range(3):  # three sessions of 16 blocks each
        run_step(m, f"s{i}", tokens(1000 * (i + 1), 64), now=0.0, tool="x")
    priced = []
    price = policy.block_cost
    policy.block_cost = lambda pos: priced.append(pos) or price(pos)
    assert len(policy.choose_victims(2, 1.0)) == 2
    # Two prices per session to start (its tail's key, and the multiplier of its timed
    # record: search.py `_rekey`), then one per victim taken: not 48.
    assert len(priced) <= 2 * 3 + 2


def test_heavy_tailed_tool_is_priced_by_its_median_residual():
    """A tool that usually returns in ~1 s but sometimes takes 1000 s has a huge mean (the
    tail) and a short median; a steady 60 s tool the reverse. The session on the flaky tool
    is probably back first, so the steady one's blocks go first (pricing by the mean residual
    would evict the flaky one's)."""
    policy = GraphPolicy()
    for gap in (1.0, 1.0, 1.0, 1.0, 1000.0, 1000.0):
        train(policy.graph, "flaky", gap, n=1)
    train(policy.graph, "steady", 60.0)
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="steady")
    run_step(m, "b", tokens(200, 8), now=0.0, tool="flaky")
    flaky = policy.graph.pause_dist("default", "flaky")
    steady = policy.graph.pause_dist("default", "steady")
    assert flaky.mean > steady.mean and flaky.median < steady.median
    victims = policy.choose_victims(2, 0.5)
    assert [policy._owner[b] for b in victims] == ["a", "a"]


def test_admission_wait_is_learned_from_resume_hint_to_step_start_warm_and_cold():
    policy = GraphPolicy()
    m = make(policy, num_blocks=8)
    run_step(m, "w", tokens(100, 8), now=0.0, tool="grep")  # 2 blocks cached: warm
    m.resume_hint("w", now=0.5)
    run_step(m, "w", tokens(100, 9), now=0.5, tool="grep")  # admitted at once
    m.end_session("w", now=0.6)
    run_step(m, "c", tokens(200, 8), now=1.0, tool="grep")
    run_step(m, "x", tokens(300, 32), now=1.1)  # takes all 8 blocks: c's context is gone
    m.end_session("x", now=1.2)
    m.resume_hint("c", now=2.0)  # cold: nothing of it is cached
    run_step(m, "c", tokens(200, 9), now=7.0, tool="grep")  # queued 5 s
    assert policy.returns.admission_wait == {True: [0.0, 1], False: [5.0, 1]}
    assert policy.returns.wait_samples[False].residual(0.0) == 5.0


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("waits, evicted", [
    ({True: [0.0, 10], False: [5.0, 10]}, "b"),  # learned waits: the cold queued one goes
    ({True: [0.0, 0], False: [0.0, 0]}, "a"),  # none learned: the pause alone (old rule)
])
def test_queued_cold_session_goes_before_a_warm_one_paused_on_a_fast_tool(waits, evicted,
                                                                          residual):
    """b's tool has returned but most of its context was evicted, so it waits ~5 s for
    admission (cold requests queue FIFO); a just paused on a 0.1 s tool with its context
    resident, so it will be admitted at once. a's blocks are needed first: b's go (by the
    pause alone b, 'needed now', would outrank a and a's tail would go). The waits are
    learned as running means or as samples (`residual_wait`)."""
    policy = GraphPolicy(residual_wait=residual)
    train(policy.graph, "grep", 0.1)
    policy.returns.admission_wait = waits
    for warm, (mean, n) in waits.items():
        for _ in range(n):
            policy.returns.wait_samples[warm].add(mean)
    m = make(policy, num_blocks=8)
    run_step(m, "b", tokens(200, 16), now=0.0, tool="grep")  # 4 blocks
    run_step(m, "x", tokens(300, 28), now=0.5)  # 7 blocks: 3 of b's, tail first
    m.end_session("x", now=0.5)
    assert len(policy.groups["b"]) == 1 and not policy.is_warm("b")
    m.resume_hint("b", now=1.0)
    run_step(m, "a", tokens(100, 8), now=1.0, tool="grep")  # 2 of x's dead blocks
    assert policy.is_warm("a")
    m.begin_step("y", tokens(400, 24), now=1.01)
    m.allocate_slots("y", 24, now=1.01)  # 6 blocks: x's 5 dead ones, then one victim
    m.check_integrity()
    kept = {"a": 2, "b": 1}
    kept[evicted] -= 1
    assert {s: len(policy.groups.get(s, [])) for s in ("a", "b")} == kept


def test_self_correction_learns_the_error_and_shrinks_to_no_data():
    policy = GraphPolicy(calib_prior=4.0)
    train(policy.graph, "lint", 5.0)
    m = make(policy, num_blocks=32)
    assert policy.correction("default", "lint") == 1.0  # no data: no correction
    t = 0.0
    for k in range(4):  # lint keeps coming back 4x later than the graph predicts
        run_step(m, "a", tokens(100, 4 + k), now=t, tool="lint")
        t += 4 * policy.graph.predict("default", "lint", 0.0).expected_s
    m.begin_step("a", tokens(100, 8), now=t)
    f = policy.correction("default", "lint")
    assert 1.5 < f < 4.0  # towards the observed 4x, shrunk by the prior
    assert 1.0 < policy.correction("default", "other") < f  # unseen tool: the workflow's
    for bad in (0.0, -1.0):  # -1: named, not refused as the wait records' `prior`
        with pytest.raises(ValueError, match="calib_prior"):
            GraphPolicy(calib_prior=bad)


def test_a_shared_prefix_in_use_goes_after_session_blocks():
    policy = GraphPolicy()
    m = make(policy, num_blocks=16)
    system = tokens(1000, 4)  # block 0, shared
    for k, sid in enumerate(("a", "b", "c")):
        run_step(m, sid, system + tokens(2000 + 100 * k, 8), now=float(k), tool="x")
    assert policy.shared_in_use(0, 2.5)
    assert policy.eviction_order(2.5)[-1] == 0
    assert not policy.shared_in_use(0, 100.0)  # idle far past its gap between hits


def test_wait_samples_residual_matches_a_direct_count_and_forgets_the_oldest():
    w = WaitSamples(size=4)
    assert w.residual(0.0) is None  # nothing seen
    for x in (1.0, 2.0, 8.0):
        w.add(x)
    assert w.residual(0.0) == pytest.approx((1 + 2 + 8) / 3)
    assert w.residual(1.5) == pytest.approx(((2 - 1.5) + (8 - 1.5)) / 2)
    assert w.residual(9.0) == 9.0  # longer than every sample: as long again
    w.add(3.0)
    w.add(4.0)  # the 1.0 is forgotten
    assert len(w) == 4
    assert w.residual(0.0) == pytest.approx((2 + 8 + 3 + 4) / 4)


def _demoted_and_admitted(policy: GraphPolicy, a_tool: str = "grep", a_tool_s: float = 0.1):
    """d paused at 0 on a 0.1 s tool (grep), returned at 0.2 and was demoted at 0.3; a paused
    at 1.0 on `a_tool` (the same tool by default; another is taught to last `a_tool_s`) with
    its context resident. Returns the manager at 1.0."""
    train(policy.graph, "grep", 0.1)
    if a_tool != "grep":
        train(policy.graph, a_tool, a_tool_s)
    m = make(policy, num_blocks=8)
    run_step(m, "d", tokens(200, 12), now=0.0, tool="grep")  # 3 blocks
    m.resume_hint("d", now=0.2)
    policy.session_deferred(m.sessions["d"], True, 0.3)
    run_step(m, "a", tokens(100, 12), now=1.0, tool=a_tool)  # 3 blocks
    return m


def test_a_demoted_session_is_priced_by_how_long_demotions_last():
    """Before any demotion was seen to end, a demoted session's time to reuse is its
    prediction x DEFERRED_SLOWDOWN; once demotions were seen to last ~10 s, the residual
    of those given how long this one lasted, so its blocks go before a just-paused
    admitted session's, even though its tool has returned ('needed now' by the pause).
    (`spread` off: this is the median's reading; spread, the default since session 32,
    prices by the spread of those waits, tests/policy/test_spread.py.)"""
    policy = GraphPolicy(spread=False)
    m = _demoted_and_admitted(policy)
    assert policy.deferred_time("d", 0.5, 1.0) == pytest.approx(0.5 * DEFERRED_SLOWDOWN)
    for x in (9.0, 10.0, 11.0):
        policy.returns.deferred_wait.add(x)
    assert policy.deferred_time("d", 0.5, 1.0) == pytest.approx(10.0 - 0.7)
    victim = policy.choose_victims(1, 1.0)[0]
    assert policy._owner[victim] == "d"
    policy.session_deferred(m.sessions["d"], False, 1.5)  # admitted again
    run_step(m, "d", tokens(200, 13), now=2.0, tool="grep")
    assert "d" not in policy._deferred
    assert len(policy.returns.deferred_wait) == 4  # 0.3 -> 2.0 learned


@pytest.mark.parametrize("residual", [False, True])
def test_queued_wait_is_the_mean_less_time_queued_or_the_observed_residual(residual):
    """Cold waits of 1, 1 and 10 s (mean 4): a cold step queued 2 s expects the mean less
    2 s under FIFO, or the mean of what the longer waits had left: 10 - 2 s."""
    policy = GraphPolicy(residual_wait=residual)
    m = make(policy, num_blocks=16)
    policy.returns.admission_wait[False] = [4.0, 3]
    for w in (1.0, 1.0, 10.0):
        policy.returns.wait_samples[False].add(w)
    run_step(m, "q", tokens(900, 4), now=20.0, tool="grep")
    m.resume_hint("q", now=21.0)
    policy._ctx_blocks["q"] = 100  # most of its context is gone: cold
    assert policy.expected_wait("q", 23.0) == pytest.approx(8.0 if residual else 2.0)
