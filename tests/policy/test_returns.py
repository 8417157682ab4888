"""`WorkflowWaits` (graph's `median_returns`): median residual waits, per workflow shrunk to
the pooled ones; graph reads it for queued and demoted sessions."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsaga.policy import GraphPolicy
from kvsaga.policy.returns import TRACKED_WORKFLOWS, WaitSamples, WorkflowWaits
from tests.policy.helpers import fed_at_random, make, mixture_above, run_step, tokens
from tests.policy.test_graph import _demoted_and_admitted


def _weighted_median_residual(own: list[float], pool: list[float], prior: float,
                              waited: float) -> float | None:
    """The definition, by brute force: the smallest x above `waited` at which the mixture's
    weight (own waits 1 each, pooled ones `prior` in all) reaches half of its total."""
    if not pool:
        return None
    items = mixture_above(own, pool, prior, waited)
    if not items:
        return waited
    total = sum(w for _, w in items)
    got = 0.0
    for x, w in sorted(items):
        got += w
        if got >= total / 2 - 1e-12:
            return x - waited
    raise AssertionError("unreachable")


def test_median_residual_without_workflows_is_the_pooled_median():
    w = WorkflowWaits(prior=4.0)
    assert w.residual(0.0) is None  # nothing seen
    for x in (1.0, 2.0, 100.0):
        w.add(x)
    assert w.residual(0.0) == pytest.approx(2.0)  # the median, not the mean (34.3)
    assert WaitSamples().residual(0.0) is None
    assert w.residual(1.5) == pytest.approx(2.0 - 1.5)  # of 2 and 100: the lower middle
    assert w.residual(200.0) == 200.0  # longer than every sample: as long again


def test_a_workflow_with_its_own_record_is_priced_from_it_an_unseen_one_from_the_pool():
    w = WorkflowWaits(prior=4.0)
    for _ in range(40):
        w.add(10.0, "slow")
    for _ in range(200):
        w.add(0.5, "fast")
    assert w.residual(0.0, "slow") == pytest.approx(10.0)  # 40 own against 4 pooled
    assert w.residual(0.0, "fast") == pytest.approx(0.5)
    assert w.residual(0.0, "never-seen") == pytest.approx(0.5)  # the pooled median
    few = WorkflowWaits(prior=4.0)
    for _ in range(100):
        few.add(0.5, "fast")
    few.add(10.0, "new")  # one own wait against 4 pooled: still the pool's
    assert few.residual(0.0, "new") == pytest.approx(0.5)


def test_median_residual_matches_the_definition_on_random_waits():
    rng = random.Random(7)
    w = WorkflowWaits(prior=3.0, size=50)
    for own, pool in fed_at_random(w, rng, 120, 1.5, 50):
        for waited in (0.0, 0.5, 2.0, 20.0):
            for wf2 in ("a", "b", "c"):
                want = _weighted_median_residual(own.get(wf2, []), pool, 3.0, waited)
                assert w.residual(waited, wf2) == pytest.approx(want), (waited, wf2)


def test_only_the_most_recently_updated_workflows_keep_a_record():
    """Ever new workflow names: at most `workflows` records, the stalest dropped first; a
    dropped workflow is forecast from the pooled waits, as one never seen."""
    w = WorkflowWaits(prior=2.0, workflows=3)
    for name, x in (("a", 1.0), ("b", 2.0), ("c", 3.0), ("a", 1.5), ("d", 4.0)):
        w.add(x, name)
    assert list(w.by_workflow) == ["c", "a", "d"]  # b, the least recently updated, gone
    assert w.by_workflow["a"]._sorted == [1.0, 1.5]  # kept whole, moved to the end
    assert len(w) == 5  # the pooled waits keep every one
    assert w.residual(0.0, "b") == w.residual(0.0, "never seen")
    big = WorkflowWaits(prior=2.0)  # the default bound
    for i in range(3 * TRACKED_WORKFLOWS):
        big.add(1.0, f"wf{i}")
    assert len(big.by_workflow) == TRACKED_WORKFLOWS
    assert next(iter(big.by_workflow)) == f"wf{2 * TRACKED_WORKFLOWS}"


def test_bad_input_is_refused_by_name():
    with pytest.raises(ValueError, match="prior"):
        WorkflowWaits(prior=0.0)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="workflows must be an int >= 1"):
            WorkflowWaits(prior=1.0, workflows=bad)
    w = WorkflowWaits(prior=1.0)
    with pytest.raises(ValueError, match="wait_s"):
        w.add(-1.0, "a")
    assert len(w) == 0 and w.residual(0.0) is None  # state unchanged
    with pytest.raises(ValueError, match="median_returns"):
        GraphPolicy(median_returns="yes")


def test_graph_prices_demoted_and_queued_sessions_by_the_median_with_the_option():
    """Demotions that lasted 1, 1.2 and 50 s: the mean residual (17.4 s at 0.7 s lasted)
    prices the demoted session as gone for long; the median (1.2 - 0.7 s) as back soon.
    The same for a queued cold step and its admission waits. (Demoted: with `demoted_mean`
    off, graph's default; on, the mean either way. `spread` off: the centre's reading;
    spread's, graph's default since session 32, has its own tests.)"""
    for median in (False, True):
        policy = GraphPolicy(median_returns=median, spread=False)
        _demoted_and_admitted(policy)
        for x in (1.0, 1.2, 50.0):
            policy.returns.deferred_wait.add(x, "default")
        want = 1.2 - 0.7 if median else (0.3 + 0.5 + 49.3) / 3
        assert policy.deferred_time("d", 0.01, 1.0) == pytest.approx(want)
    for median in (False, True):
        policy = GraphPolicy(median_returns=median, spread=False)
        m = make(policy, num_blocks=16)
        for x in (1.0, 3.0, 40.0):
            policy.returns.wait_samples[False].add(x, "default")
        run_step(m, "q", tokens(900, 4), now=20.0, tool="grep")
        m.resume_hint("q", now=21.0)
        policy._ctx_blocks["q"] = 100  # cold
        assert policy.expected_wait("q", 21.5) == pytest.approx(
            2.5 if median else ((1.0 - 0.5) + (3.0 - 0.5) + (40.0 - 0.5)) / 3)


def test_graph_learns_demotions_per_workflow():
    policy = GraphPolicy(median_returns=True)
    m = _demoted_and_admitted(policy)
    policy.session_deferred(m.sessions["d"], False, 1.5)
    run_step(m, "d", tokens(200, 13), now=2.0, tool="grep")
    assert policy.returns.deferred_wait.by_workflow["default"]._sorted == [pytest.approx(1.7)]


def _weighted_mean_residual(own: list[float], pool: list[float], prior: float,
                            waited: float) -> float | None:
    """The definition, by brute force: the mean of x - waited over the waits above
    `waited`, own ones weighing 1 each, pooled ones `prior` in all."""
    if not pool:
        return None
    items = mixture_above(own, pool, prior, waited)
    if not items:
        return waited
    return sum((x - waited) * w for x, w in items) / sum(w for _, w in items)


def test_mean_residual_is_the_mixtures_mean():
    rng = random.Random(7)
    for _ in range(200):
        w = WorkflowWaits(prior=rng.choice([0.5, 4.0]))
        own, pool = [], []
        for _ in range(rng.randint(1, 30)):
            x = round(rng.lognormvariate(0.0, 1.5), 3)
            wf = rng.choice(["a", "b"])
            w.add(x, wf)
            pool.append(x)
            if wf == "a":
                own.append(x)
        q = rng.choice([0.0, 0.5, 2.0, 50.0])
        assert w.mean_residual(q, "a") == pytest.approx(
            _weighted_mean_residual(own, pool, w.prior, q))
    assert WorkflowWaits(prior=4.0).mean_residual(0.0) is None
    flat = WaitSamples()
    for x in (1.0, 2.0, 100.0):
        flat.add(x)
    assert flat.mean_residual(0.5) == flat.residual(0.5) == pytest.approx((0.5 + 1.5 + 99.5) / 3)


@settings(max_examples=150, deadline=None)
@given(prior=st.sampled_from([0.5, 4.0]), size=st.integers(1, 12),
       steps=st.lists(st.tuples(st.floats(0.0, 1e4), st.sampled_from(["a", "b", None]),
                                st.floats(0.0, 200.0)), min_size=1, max_size=40))
def test_mean_residual_is_the_brute_force_mean_between_and_after_appends(prior, size, steps):
    """Queried after every add (so the suffix sums are read both freshly rebuilt and stale
    records evicted by `size`), the O(log n) mean residual is the definition's."""
    w = WorkflowWaits(prior=prior, size=size)
    own: list[float] = []
    pool: list[float] = []
    for x, wf, q in steps:
        w.add(x, wf)
        pool = (pool + [x])[-size:]
        if wf == "a":
            own = (own + [x])[-size:]
        for query in (q, x, 0.0):  # twice each: the second reads the cached sums
            for _ in range(2):
                want = _weighted_mean_residual(own, pool, prior, query)
                assert w.mean_residual(query, "a") == pytest.approx(want, rel=1e-9, abs=1e-9)
                assert w.mean_residual(query, "zz") == pytest.approx(
                    _weighted_mean_residual([], pool, prior, query), rel=1e-9, abs=1e-9)


def test_demoted_mean_evicts_a_demoted_session_the_median_keeps():
    """Demotions seen: 1, 1.2 and 50 s; d demoted 0.7 s ago, `a` paused on a 5 s tool.
    The median residual demotion (0.5 s) keeps d before a; the mean (16.7 s) evicts d
    first: with `demoted_mean` graph drops the heavy-tailed demoted context, as ttl does.
    (`spread` off, as these readings of the centre need.)"""
    victims = {}
    for mean in (False, True):
        policy = GraphPolicy(demoted_mean=mean, spread=False)
        _demoted_and_admitted(policy, "lint", 5.0)
        for x in (1.0, 1.2, 50.0):
            policy.returns.deferred_wait.add(x, "default")
        want = (0.3 + 0.5 + 49.3) / 3 if mean else 1.2 - 0.7
        assert policy.deferred_time("d", 0.01, 1.0) == pytest.approx(want)
        victims[mean] = policy._owner[policy.choose_victims(1, 1.0)[0]]
    assert victims == {False: "a", True: "d"}
    with pytest.raises(ValueError, match="demoted_mean"):
        GraphPolicy(demoted_mean="yes")
