"""`graph`'s self-scoring (`trust`): its forecasts' errors on its own victims, and the factor
on the loss rate they call for (kvsaga/policy/trust.py)."""

from __future__ import annotations

import math

import pytest

from kvsaga.policy import GraphPolicy
from kvsaga.policy.trust import PredictionTrust
from tests.policy.helpers import make, run_step, tokens
from tests.policy.test_scenarios import train


def test_no_evidence_no_change_and_misses_both_ways_raise_the_rate():
    t = PredictionTrust(prior=4.0)
    assert t.factor("w", "queued") == 1.0 and t.moments("w", "queued") == (0.0, 0.0)
    for k in range(4):  # back 20x sooner, then 20x later, than forecast: no bias, wide
        t.add("w", "queued", 10.0 * (20.0 if k % 2 else 1 / 20.0), 10.0, 1.0)
    mu, s2 = t.moments("w", "queued")
    e = math.log(20.0)
    assert mu == pytest.approx(0.0, abs=1e-12)
    assert s2 == pytest.approx(4 * e * e / 8)  # shrunk by 4 pseudo-observations of 0
    assert t.factor("w", "queued") == pytest.approx(math.exp(s2 / 2))
    assert t.factor("w", "paused") == 1.0 and t.factor("v", "queued") == 1.0  # apart


def test_a_forecast_that_is_always_late_lowers_the_rate():
    t = PredictionTrust(prior=1.0)
    for _ in range(9):
        t.add("w", "paused", 40.0, 10.0, 1.0)  # back 4x later than forecast, every time
    mu, s2 = t.moments("w", "paused")
    e = math.log(4.0)
    assert mu == pytest.approx(0.9 * e) and s2 == pytest.approx(0.9 * e * e - mu * mu)
    assert t.factor("w", "paused") < 0.5  # its blocks are cheaper to drop than forecast


def test_bad_input_is_refused_and_changes_nothing():
    t = PredictionTrust(prior=4.0)
    with pytest.raises(ValueError, match="state"):
        t.add("w", "sleeping", 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="observed_s"):
        t.add("w", "paused", -1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="observed_s"):
        t.add("w", "paused", 1.0, math.nan, 1.0)
    assert t.errors == {} and t.version == 0
    with pytest.raises(ValueError, match="prior"):
        PredictionTrust(prior=0.0)


def test_graph_learns_the_error_of_each_session_it_evicted_from():
    policy = GraphPolicy(trust=True)
    train(policy.graph, "lint", 5.0)
    m = make(policy, num_blocks=4)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="lint")  # 2 blocks
    run_step(m, "b", tokens(200, 8), now=0.0, tool="lint")  # 2 blocks
    forecast = policy.predict_session("a", 1.0).expected_s
    run_step(m, "x", tokens(300, 8), now=1.0)  # needs 2 blocks: a's or b's
    lost = "a" if "a" not in policy.groups else "b"
    assert lost not in policy.groups
    m.end_session("x", now=1.5)
    run_step(m, lost, tokens(100 if lost == "a" else 200, 9), now=31.0, tool="lint")
    n, s1, _, _ = policy.trust.errors[("default", "paused")]
    assert n == 1 and s1 == pytest.approx(math.log(30.0 / forecast))


@pytest.mark.parametrize("indexed", [True, False])
def test_a_workflow_whose_forecasts_miss_is_kept_over_one_forecast_well(indexed):
    """a (workflow `good`) waits on a 5 s tool, b (workflow `bad`) on a 20 s one: by the
    forecasts alone b's tail goes first. Once graph has seen its forecasts for `bad`
    miss by 20x both ways, b may be back at once as well as late: its expected loss rate
    is the higher, and a's tail goes instead."""
    policy = GraphPolicy(trust=True)
    policy.indexed = indexed
    train(policy.graph, "lint", 5.0)
    train(policy.graph, "pytest", 20.0)
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="lint", workflow="good")
    run_step(m, "b", tokens(200, 8), now=0.0, tool="pytest", workflow="bad")
    owner = policy._owner
    assert [owner[v] for v in policy.choose_victims(1, 0.1)] == ["b"]
    for k in range(8):
        policy.trust.add("bad", "paused", 20.0 * (20.0 if k % 2 else 1 / 20.0), 20.0, 1.0)
        policy.trust.add("good", "paused", 5.0, 5.0, 1.0)
    assert policy.trust.factor("good", "paused") == 1.0
    assert policy.trust.factor("bad", "paused") > 4.0
    assert [owner[v] for v in policy.choose_victims(1, 0.2)] == ["a"]


def test_a_demoted_session_is_hedged_once_by_its_demotion_errors():
    """A demoted session's forecast is scored (and hedged) as `demoted` only: errors of
    `paused` forecasts, which graph learned against other sessions' pauses, leave its rate
    as it was; `demoted` errors change it."""
    policy = GraphPolicy(trust=True)
    train(policy.graph, "lint", 5.0)
    m = make(policy, num_blocks=8)
    run_step(m, "d", tokens(100, 8), now=0.0, tool="lint")
    run_step(m, "p", tokens(200, 8), now=0.0, tool="lint")
    policy.session_deferred(m.sessions["d"], True, 0.5)
    before = policy._graph_time("d", 1.0, True, True)[1]
    paused_before = policy._graph_time("p", 1.0, True, True)[1]
    for k in range(8):  # paused forecasts missed 20x both ways: factor well above 1
        policy.trust.add("default", "paused", 5.0 * (20.0 if k % 2 else 1 / 20.0), 5.0, 1.0)
    assert policy.trust.factor("default", "paused") > 4.0
    assert policy._graph_time("d", 1.0, True, True)[1] == pytest.approx(before)
    assert policy._graph_time("p", 1.0, True, True)[1] < paused_before / 4.0  # paused: hedged
    for k in range(8):
        policy.trust.add("default", "demoted", 5.0 * (20.0 if k % 2 else 1 / 20.0), 5.0, 1.0)
    assert policy._graph_time("d", 1.0, True, True)[1] == pytest.approx(
        before / policy.trust.factor("default", "demoted"))


@pytest.mark.parametrize("value", ["false", "0", None, 2, 0.5])
def test_an_on_off_parameter_that_is_not_a_bool_is_refused(value):
    for name in ("trust", "residual_wait"):
        with pytest.raises(ValueError, match=name):
            GraphPolicy(**{name: value})
    assert GraphPolicy(trust=1.0).trust is not None  # `graph[trust=1]` in a bench spec
    assert GraphPolicy(trust=0).trust is None and GraphPolicy(trust=False).trust is None


def test_a_workflow_less_session_is_keyed_alike_by_the_index_and_the_scan():
    """With `trust`, a session with no workflow is hedged by its (None, paused) errors in
    Python (`_predict_session`) as in its class's formula the index re-keys it by
    (`_formula`): both orders stay equal as its pause crosses grid points."""
    policy = GraphPolicy(trust=True, relearn_share=0.0)
    train(policy.graph, "lint", 5.0)
    m = make(policy, num_blocks=12)
    st = m.begin_step("n", tokens(100, 12), now=0.0, workflow=None)
    m.allocate_slots("n", 12 - st.num_cached_tokens, now=0.0)
    m.finish_step("n", now=0.0, tool="lint")
    run_step(m, "a", tokens(200, 12), now=0.0, tool="lint")
    for k in range(8):
        policy.trust.add(None, "paused", 5.0 * (20.0 if k % 2 else 1 / 20.0), 5.0, 1.0)
    assert policy.trust.factor(None, "paused") > 4.0
    for now in (0.5, 1.0, 2.0, 4.0, 7.0, 9.0, 20.0, 60.0):
        assert policy.eviction_order(now) == policy.scan_order(now)
        for sid in ("n", "a"):  # the rate behind each key, not only their order
            assert policy._index.base(sid) == pytest.approx(
                policy._session_base(sid, policy.groups[sid], now)[0], rel=1e-9)
