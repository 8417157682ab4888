"""`SizeElasticity` (graph's `demoted_size`): the slope of log(demotion length) on
log(context blocks), learned from the demotions seen, shrunk to the pooled slope and that
to 0; and graph reading it for demoted sessions."""
# Every policy here keeps graph's demoted sessions priced (`demoted_release` off, the default
# until session 32): these tests read the option's own pricing of a demoted session.


from __future__ import annotations

import math

import pytest

from kvsaga.policy import GraphPolicy
from kvsaga.policy.size_effect import SizeElasticity
from tests.policy.helpers import run_step, tokens
from tests.policy.test_scenarios import demoted_on_grep, small_and_big_demoted


def test_no_demotions_seen_no_effect():
    s = SizeElasticity(prior=4.0)
    assert s.factor(100, "swe") == 1.0
    assert s.slope("swe") == 0.0


def test_the_slope_is_least_squares_shrunk_by_the_prior():
    """Lengths exactly c * size^2 over sizes 2, 4, 8, 16: least squares says 2, and with
    n = 4 observations and prior 4 the pooled slope is 2 * 4 / (4 + 4) = 1, the
    workflow's own 2 * 1/2 + 1 * 1/2 = 1.5 (shrunk towards the pooled one)."""
    s = SizeElasticity(prior=4.0)
    for n in (2, 4, 8, 16):
        s.add(n, 0.01 * n * n, None, 1e-3)
    assert s.pooled_slope() == pytest.approx(1.0)
    assert s.slope(None) == pytest.approx(1.5)
    mean_log = sum(math.log(n) for n in (2, 4, 8, 16)) / 4
    assert s.factor(16, None) == pytest.approx(math.exp(1.5 * (math.log(16) - mean_log)))
    assert s.factor(2, None) < 1.0 < s.factor(16, None)


def test_larger_sessions_back_sooner_give_a_negative_slope():
    s = SizeElasticity(prior=1.0)
    for _ in range(5):
        for n in (10, 100):
            s.add(n, 10.0 / n, "wf", 1e-3)
    assert s.slope("wf") < 0
    assert s.factor(100, "wf") < 1.0 < s.factor(10, "wf")


def test_a_workflow_is_shrunk_towards_the_pooled_slope():
    """wf 'a' (sizes alike, so no slope of its own) reads the pooled slope that 'b' set;
    an unseen workflow reads the pooled one too."""
    s = SizeElasticity(prior=4.0)
    for n in (2, 4, 8, 16):
        s.add(n, 0.01 * n, "b", 1e-3)
    for _ in range(3):
        s.add(5, 1.0, "a", 1e-3)
    pooled = s.slope(None)
    assert s.slope("a") == pytest.approx(pooled)
    assert s.slope("never") == pytest.approx(pooled)
    assert s.slope("b") != pytest.approx(pooled)


def test_sizes_below_one_block_are_not_learned():
    s = SizeElasticity(prior=4.0)
    s.add(0, 5.0, "wf", 1e-3)
    assert s.factor(10, "wf") == 1.0


@pytest.mark.parametrize("prior", [0, -1.0, math.inf, math.nan, "4", True, None])
def test_a_bad_prior_is_refused(prior):
    with pytest.raises(ValueError, match="prior"):
        SizeElasticity(prior=prior)


def test_a_bad_demoted_size_flag_is_refused():
    with pytest.raises(ValueError, match="demoted_size"):
        GraphPolicy(demoted_release=False, demoted_size="yes")


def _two_demoted(policy: GraphPolicy):
    """`small` (2 blocks) and `big` (5 blocks) paused on a 0.1 s tool at 0, both demoted
    at 0.3; demotions seen to end: each size's 4 times, big ones lasting 10x longer."""
    m = small_and_big_demoted(policy)
    for _ in range(4):
        for blocks, lasted in ((2, 0.5), (5, 5.0)):
            policy.demotion_ended(lasted, "default", blocks)
    return m


def test_demoted_size_evicts_the_larger_demoted_session_first():
    """Without the option both demoted sessions read the same residual demotion, and the
    small one's cheaper tail goes first; with it the big one, learned to stay demoted
    longer, goes first. (Both ways on the same state.)"""
    victims = {}
    for on in (False, True):
        policy = GraphPolicy(demoted_release=False, demoted_size=on)
        _two_demoted(policy)
        t_small = policy.deferred_time("small", 0.01, 1.0)
        t_big = policy.deferred_time("big", 0.01, 1.0)
        if on:
            assert t_big > t_small
        else:
            assert t_big == pytest.approx(t_small)
        victims[on] = policy._owner[policy.choose_victims(1, 1.0)[0]]
    assert victims == {False: "small", True: "big"}


def test_graph_learns_the_size_of_a_demoted_session_when_its_step_starts():
    policy = GraphPolicy(demoted_release=False, demoted_size=True)
    m = demoted_on_grep(policy, {"d": tokens(100, 8)})  # 2 blocks
    policy.session_deferred(m.sessions["d"], False, 1.0)
    run_step(m, "d", tokens(100, 12), now=1.3, tool="grep")
    n, sx, sy = policy.size_effect._sums["default"][:3]
    assert (n, sx, sy) == (1.0, pytest.approx(math.log(2)), pytest.approx(math.log(1.0)))
    assert "d" not in policy._demoted_ctx


def test_without_the_option_nothing_is_learned_and_the_time_is_unchanged():
    """The default (`demoted_size` off): no size record, and a demoted session's time is
    the record's residual exactly as before the option existed."""
    policy = GraphPolicy(demoted_release=False)
    assert policy.size_effect is None
    _two_demoted(policy)
    assert policy.deferred_time("big", 0.01, 1.0) == pytest.approx(
        policy.returns.deferred_wait.residual(0.7, "default"))


def test_a_difference_between_workflows_is_not_a_size_effect():
    """'a' holds small contexts demoted briefly, 'b' large ones demoted long, each alike
    within itself: the within-workflow slope is 0 (the per-workflow record of demotions
    already tells the two apart); a raw pooled fit would have read a slope of ~2."""
    s = SizeElasticity(prior=1.0)
    for _ in range(6):
        s.add(10, 0.1, "a", 1e-3)
        s.add(100, 10.0, "b", 1e-3)
    assert s.pooled_slope() == 0.0
    assert s.factor(100, "a") == 1.0 and s.factor(10, "b") == 1.0
    for n, t in ((50, 1.0), (200, 4.0)):  # now 'b' shows a slope of its own: 1
        for _ in range(3):
            s.add(n, t, "b", 1e-3)
    assert 0.0 < s.pooled_slope() < s.slope("b") <= 1.0 + 1e-9
