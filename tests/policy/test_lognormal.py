"""Log-normal fits: closed forms against numerical integration and hand computation."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest

from kvsaga.policy.lognormal import EmaLogNormal, LogNormalDist, LogNormalFit

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

D = LogNormalDist(math.log(2.0), 0.9)


def integrate(f, a: float, b: float, n: int = 20000) -> float:
    h = (b - a) / n
    return sum(f(a + (i + 0.5) * h) for i in range(n)) * h


def test_sf_matches_the_normal_of_the_logs():
    z = NormalDist(math.log(2.0), 0.9)
    for t in (0.1, 1.0, 2.0, 30.0):
        assert D.sf(t) == pytest.approx(1 - z.cdf(math.log(t)))
    assert D.sf(0.0) == 1.0
    assert D.sf(2.0) == pytest.approx(0.5)  # the median
    assert D.sf(math.exp(z.inv_cdf(0.95))) == pytest.approx(0.05)


def test_limited_mean_and_mean_residual_by_integration():
    for b in (0.5, 2.0, 10.0):
        assert D.limited_mean(b) == pytest.approx(integrate(D.sf, 0.0, b), rel=1e-4)
    for e in (0.5, 3.0):
        tail = D.mean - D.limited_mean(e)  # integral of sf from e to infinity
        assert D.mean_residual(e) == pytest.approx(tail / D.sf(e), rel=1e-9)
    assert D.mean_residual(0.0) == pytest.approx(D.mean)
    # Far in the tail the closed form underflows and Mills' ratio, t sigma / (z - sigma),
    # takes over; it agrees with the closed form where both hold (z = 30).
    def asymptote(t):
        z = (math.log(t) - math.log(2.0)) / 0.9
        return t * 0.9 / (z - 0.9)

    assert D.mean_residual(1e30) == pytest.approx(asymptote(1e30))
    t = math.exp(math.log(2.0) + 30 * 0.9)
    assert D.mean_residual(t) == pytest.approx(asymptote(t), rel=0.005)


def test_running_fit_converges_and_shrinks_to_the_prior():
    rng = random.Random(3)
    fit = LogNormalFit(prior_median_s=1.0, prior_sigma=1.5)
    assert fit.dist().median == pytest.approx(1.0) and fit.sigma == pytest.approx(1.5)
    for _ in range(5000):
        fit.add(rng.lognormvariate(math.log(3.0), 0.5))
    assert fit.dist().median == pytest.approx(3.0, rel=0.03)
    assert fit.sigma == pytest.approx(0.5, abs=0.02)
    one = LogNormalFit(prior_median_s=1.0, prior_sigma=1.5)
    one.add(math.e**2)  # one observation weighs as much as the prior
    assert one.mu == pytest.approx(1.0)
    assert one.sigma == pytest.approx(math.sqrt(1.5**2 / 2))


def test_ema_by_hand():
    ema = EmaLogNormal(alpha=0.25, prior_median_s=1.0, prior_sigma=1.0)
    assert ema.p95() == pytest.approx(math.exp(1.6448536269514722))
    ema.add(4.0)
    assert ema.mu == pytest.approx(math.log(4.0)) and ema.sigma == 0.0
    ema.add(1.0)
    m1 = 0.75 * math.log(4.0)
    m2 = 0.75 * math.log(4.0) ** 2
    assert ema.mu == pytest.approx(m1)
    assert ema.sigma == pytest.approx(math.sqrt(m2 - m1**2))
    ema.add(0.0)  # floored at 1 ms, not log(0)
    assert math.isfinite(ema.p95())


def test_median_residual_is_the_conditional_median():
    """Half of the pauses still running at `e` end within median_residual(e); it grows with
    e (heavy tail) and stays below the mean residual, which the tail inflates."""
    D = LogNormalDist(math.log(30.0), 1.8)
    assert D.median_residual(0.0) == pytest.approx(30.0)
    prev = 0.0
    for e in (1.0, 10.0, 100.0, 1000.0, 1e5):
        t = D.median_residual(e)
        assert D.sf(e + t) == pytest.approx(D.sf(e) / 2, rel=1e-6)
        assert prev < t < D.mean_residual(e)
        prev = t
