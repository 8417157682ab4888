"""`SpreadWaits` (graph's `spread`): a queued or demoted session priced by the expected
inverse of its residual wait, median x exp(-s^2 / 2), not by the median alone."""

from __future__ import annotations

import math
import random

import pytest

from kvsaga.policy import GraphPolicy
from kvsaga.policy.returns import WorkflowWaits
from kvsaga.policy.spread import SpreadWaits
from tests.policy.helpers import fed_at_random, make, mixture_above, run_step, tokens
from tests.policy.test_graph import _demoted_and_admitted


def _spread_by_definition(own: list[float], pool: list[float], prior: float, waited: float,
                          median: float, clip: float = 5.0, lo: float = 1e-3) -> float:
    """The weighted variance of the clipped log(residual / median), by brute force."""
    items = mixture_above(own, pool, prior, waited)
    if not items:
        return 0.0
    total = sum(w for _, w in items)

    def d(x: float) -> float:
        r = math.log(max(x - waited, lo)) - math.log(max(median, lo))
        return min(max(r, -clip), clip)

    return sum(w * d(x) ** 2 for x, w in items) / total


def test_a_tight_record_is_priced_at_its_median_a_wide_one_sooner():
    tight = SpreadWaits(prior=4.0)
    assert tight.priced(0.0) is None  # nothing seen
    for _ in range(5):
        tight.add(2.0)
    assert tight.priced(0.0) == pytest.approx(2.0)  # no spread: the median itself
    assert tight.priced(0.5) == pytest.approx(1.5)
    wide = SpreadWaits(prior=4.0)
    for x in (1.0, math.e ** 2):
        wide.add(x)
    # Median residual 1 (the lower middle), log ratios 0 and 2: s^2 = (0 + 4) / 2.
    assert wide.residual(0.0) == pytest.approx(1.0)
    assert wide.log_spread(0.0) == pytest.approx(2.0)
    assert wide.priced(0.0) == pytest.approx(math.exp(-1.0))
    assert wide.priced(100.0) == 100.0  # longer than every sample: as `residual`


def test_priced_matches_the_definition_on_random_waits():
    rng = random.Random(11)
    w = SpreadWaits(prior=3.0, size=40)
    for own, pool in fed_at_random(w, rng, 90, 2.0, 40):
        for waited in (0.0, 0.3, 3.0):
            for wf2 in ("a", "b", "unseen"):
                median = w.residual(waited, wf2)
                s2 = _spread_by_definition(own.get(wf2, []), pool, 3.0, waited, median)
                assert w.log_spread(waited, wf2) == pytest.approx(s2), (waited, wf2)
                want = median * math.exp(-0.5 * min(s2, 10.0))
                assert w.priced(waited, wf2) == pytest.approx(want), (waited, wf2)


def test_its_median_is_median_returns_median():
    """The centre is `WorkflowWaits`' (the paused sessions' admission wait reads it)."""
    rng = random.Random(3)
    a, b = SpreadWaits(prior=4.0), WorkflowWaits(prior=4.0)
    for _ in range(60):
        x, wf = rng.expovariate(0.5), rng.choice(["x", "y"])
        a.add(x, wf)
        b.add(x, wf)
    for waited in (0.0, 1.0, 5.0):
        assert a.residual(waited, "x") == b.residual(waited, "x")


def test_one_huge_outlier_moves_the_price_by_at_most_the_clip():
    w = SpreadWaits(prior=1.0, clip=2.0)
    for x in (1.0, 1.0, 1.0, 1e9):
        w.add(x)
    # Median 1; the outlier's log ratio clipped to 2: s^2 = 4 / 4 = 1.
    assert w.priced(0.0) == pytest.approx(math.exp(-0.5))


def test_a_spread_past_twice_the_clip_shifts_the_price_by_the_clip_at_most():
    """Half the waits at the median, half e^8 above it: every log ratio within the clip (0
    or 5), yet s^2 = 12.5 > 2 clip; T* stops at median * e^-clip, not e^-6.25."""
    w = SpreadWaits(prior=4.0)
    for x in (1.0, 1.0, math.e ** 8, math.e ** 8):
        w.add(x)
    assert w.residual(0.0) == pytest.approx(1.0)
    assert w.log_spread(0.0) == pytest.approx(12.5)
    assert w.priced(0.0) == pytest.approx(math.exp(-5.0))


def test_bad_input_is_refused_by_name_and_leaves_the_record_unchanged():
    with pytest.raises(ValueError, match="clip"):
        SpreadWaits(prior=1.0, clip=0.0)
    with pytest.raises(ValueError, match="floor_s"):
        SpreadWaits(prior=1.0, floor_s=-1.0)
    with pytest.raises(ValueError, match="prior"):
        SpreadWaits(prior=0.0)
    w = SpreadWaits(prior=1.0)
    w.add(1.0)
    assert w.priced(0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="wait_s"):
        w.add(-1.0)
    assert len(w) == 1 and w.priced(0.0) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="spread"):
        GraphPolicy(spread="yes")


def test_graph_with_spread_prices_demoted_and_queued_sessions_by_the_expected_inverse():
    """Demotions that lasted 1, 1.2 and 50 s, 0.7 s into one: the median prices it back in
    0.5 s, the spread (log ratios of 0.3, 0.5 and 49.3 to 0.5) sooner; a queued cold step
    likewise; a paused, not queued, session's admission wait stays the median
    (`demoted_mean` off, graph's default)."""
    for spread in (False, True):
        policy = GraphPolicy(spread=spread)
        _demoted_and_admitted(policy)
        for x in (1.0, 1.2, 50.0):
            policy.returns.deferred_wait.add(x, "default")
        s2 = sum(math.log(r / 0.5) ** 2 for r in (0.3, 0.5, 49.3)) / 3
        want = 0.5 * math.exp(-s2 / 2) if spread else 0.5
        assert policy.deferred_time("d", 0.01, 1.0) == pytest.approx(want)
    for spread in (False, True):
        policy = GraphPolicy(spread=spread)
        m = make(policy, num_blocks=16)
        for x in (1.0, 3.0, 40.0):
            policy.returns.wait_samples[False].add(x, "default")
        run_step(m, "p", tokens(300, 5), now=19.0, tool="grep")
        policy._ctx_blocks["p"] = 100  # cold, paused, its tool still running
        assert policy.expected_wait("p", 21.5) == pytest.approx(3.0)  # the median
        run_step(m, "q", tokens(900, 4), now=20.0, tool="grep")
        m.resume_hint("q", now=21.0)
        policy._ctx_blocks["q"] = 100  # cold
        s2 = sum(math.log(r / 2.5) ** 2 for r in (0.5, 2.5, 39.5)) / 3
        assert policy.expected_wait("q", 21.5) == pytest.approx(
            2.5 * math.exp(-s2 / 2) if spread else 2.5)


def test_spread_off_is_median_returns():
    """The option off, graph reads `WorkflowWaits` exactly as before."""
    policy = GraphPolicy(spread=False)
    assert type(policy.returns.deferred_wait) is WorkflowWaits
    assert type(GraphPolicy(median_returns=False, spread=True).returns.deferred_wait) is SpreadWaits


def test_spread_states_choose_which_states_are_priced_by_spread():
    """`spread_states=queued`: a queued step priced by spread, a demoted session by the
    median; bad names refused, naming the parameter."""
    policy = GraphPolicy(spread=True, spread_states=("queued",))
    _demoted_and_admitted(policy)
    for x in (1.0, 1.2, 50.0):
        policy.returns.deferred_wait.add(x, "default")
    assert policy.deferred_time("d", 0.01, 1.0) == pytest.approx(0.5)  # the median
    assert (policy.returns.spread_queued, policy.returns.spread_demoted) == (True, False)
    assert GraphPolicy(spread=True, spread_states="demoted").returns.spread_demoted
    assert not GraphPolicy(spread=False).returns.spread_queued  # off: no state priced by spread
    for bad in ((), ("queued", "paused"), "running", 3):
        with pytest.raises(ValueError, match="spread_states"):
            GraphPolicy(spread=True, spread_states=bad)
