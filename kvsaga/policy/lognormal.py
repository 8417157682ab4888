"""Online log-normal fits of durations (tool pauses, gaps between steps).

Tool latencies are heavy-tailed and roughly log-normal (SAGA's defaults, Continuum's
SWE-bench figures; docs/workloads.md). A fit keeps running statistics of log(duration) in
O(1) memory and answers the questions the policies ask: the survival function, the
mean residual time of a pause that has already lasted `elapsed` seconds, and the expected
time held within a window.

Two estimators:
- `LogNormalFit`: Welford's running mean and variance of log durations, shrunk towards a
  prior by a pseudo-count (stationary; what `ttl` and `graph` learn with).
- `EmaLogNormal`: exponential moving averages of log duration and of its square (adapts to
  drift; what SAGA describes, used by `saga`).
"""

from __future__ import annotations

import math

_SQRT2 = math.sqrt(2.0)
MIN_DURATION_S = 1e-3  # durations are floored here before taking the log (0 s pauses exist)
MIN_SIGMA = 0.05  # a fit never collapses to a point mass


def _phi_upper(z: float) -> float:
    """P(Z > z) for a standard normal, accurate in the far tail (erfc, not 1 - erf)."""
    return 0.5 * math.erfc(z / _SQRT2)


class LogNormalDist:
    """A log-normal distribution: log(duration) ~ Normal(mu, sigma^2)."""

    __slots__ = ("mu", "sigma")

    def __init__(self, mu: float, sigma: float) -> None:
        self.mu = mu
        self.sigma = max(sigma, MIN_SIGMA)

    @property
    def median(self) -> float:
        return math.exp(self.mu)

    @property
    def mean(self) -> float:
        return math.exp(self.mu + 0.5 * self.sigma**2)

    def sf(self, t: float) -> float:
        """P(duration > t)."""
        if t <= 0:
            return 1.0
        return _phi_upper((math.log(t) - self.mu) / self.sigma)

    def limited_mean(self, b: float) -> float:
        """E[min(duration, b)] = E[D; D <= b] + b * P(D > b)."""
        if b <= 0:
            return 0.0
        z = (math.log(b) - self.mu) / self.sigma
        below = self.mean * (1.0 - _phi_upper(z - self.sigma))
        return below + b * _phi_upper(z)

    def mean_residual(self, elapsed: float) -> float:
        """E[D - elapsed | D > elapsed]: expected time left of a pause that lasted `elapsed`.

        It grows with `elapsed` (log-normal tails are heavy): the longer a tool has run, the
        longer it is expected to run on.
        """
        if elapsed <= 0:
            return self.mean
        z = (math.log(elapsed) - self.mu) / self.sigma
        s = _phi_upper(z)
        if s < 1e-250:
            # The two tails below underflow; Mills' ratio gives t * sigma / (z - sigma).
            return elapsed * self.sigma / max(z - self.sigma, 1.0)
        return self.mean * _phi_upper(z - self.sigma) / s - elapsed


    def median_residual(self, elapsed: float) -> float:
        """The median of D - elapsed given D > elapsed: the t with P(D <= elapsed + t | D >
        elapsed) = 1/2.

        Like the mean residual it grows with `elapsed`, but a few very long pauses do not
        inflate it: for a heavy tail the mean sits far beyond the time by which most pauses
        have ended, so a rate priced by 1 / mean undervalues a block that is probably needed
        soon.
        """
        from statistics import NormalDist

        s = self.sf(elapsed)
        if s < 1e-300:
            return self.mean_residual(elapsed)  # beyond the float range of the quantile
        z = -NormalDist().inv_cdf(s / 2.0)  # the (1 - s/2)-quantile, exact in the far tail
        return max(math.exp(self.mu + self.sigma * z) - max(elapsed, 0.0), 0.0)


def resume_prediction(dist: LogNormalDist, p0: float, elapsed: float) -> tuple[float, float]:
    """(P(it resumes at all), median seconds until it does) of a session paused `elapsed`
    seconds under the cure model (`resume_window`'s): the one implementation behind aeg.py's
    `ExecutionGraph.predict` and timed_keys.py's `graph_rate`."""
    s = dist.sf(elapsed)
    p = p0 * s / (p0 * s + (1.0 - p0)) if p0 < 1.0 else 1.0
    return p, dist.median_residual(elapsed)


def resume_window(dist: LogNormalDist, p0: float, elapsed: float, window: float
                  ) -> tuple[float, float]:
    """How a paused session spends the next `window` seconds under the cure model (a share
    p0 of pauses resume, after a pause drawn from `dist`; the rest never): (P(resume within
    the window), E[seconds held within it]), given no resume in `elapsed` seconds. The one
    implementation: aeg.py's `ExecutionGraph.resume_window` and session_heap.py's ttl
    keys both call it (csrc/session_heap.cpp computes it operation for operation)."""
    if window <= 0:
        return 0.0, 0.0
    s_now = p0 * dist.sf(elapsed) + (1.0 - p0)  # survival including never-resumers
    if s_now <= 0:
        return 0.0, window
    p_within = p0 * (dist.sf(elapsed) - dist.sf(elapsed + window)) / s_now
    held = p0 * (dist.limited_mean(elapsed + window) - dist.limited_mean(elapsed))
    held = (held + (1.0 - p0) * window) / s_now
    return min(max(p_within, 0.0), 1.0), min(max(held, 0.0), window)


class LogNormalFit:
    """Running log-normal fit (Welford on log durations) with a prior.

    Before `prior_weight` observations the fit leans on the prior: mean and variance of the
    logs are pseudo-count averages of the prior's and the data's.

    Args:
        prior_median_s: median duration assumed before any observation.
        prior_sigma: standard deviation of log duration assumed before any observation.
        prior_weight: pseudo-observations the prior counts for.
    """

    __slots__ = ("n", "_mean", "_m2", "_prior_mu", "_prior_var", "_prior_weight")

    def __init__(
        self, prior_median_s: float = 1.0, prior_sigma: float = 1.5, prior_weight: float = 1.0
    ) -> None:
        self.n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._prior_mu = math.log(prior_median_s)
        self._prior_var = prior_sigma**2
        self._prior_weight = prior_weight

    def add(self, duration_s: float) -> None:
        """Observe one duration (seconds; floored at MIN_DURATION_S)."""
        x = math.log(max(duration_s, MIN_DURATION_S))
        self.n += 1
        d = x - self._mean
        self._mean += d / self.n
        self._m2 += d * (x - self._mean)

    @property
    def mu(self) -> float:
        w = self._prior_weight
        return (self.n * self._mean + w * self._prior_mu) / (self.n + w)

    @property
    def sigma(self) -> float:
        # Pooled variance: the data's own spread plus the prior's, weighted by counts.
        w = self._prior_weight
        var = (self._m2 + w * self._prior_var) / (self.n + w)
        return math.sqrt(var)

    def dist(self) -> LogNormalDist:
        return LogNormalDist(self.mu, self.sigma)


class EmaLogNormal:
    """Log-normal latency tracked by exponential moving averages of log x and (log x)^2.

    The first observation sets both averages; later ones move them by `alpha`. With no
    observation, the prior stands in.

    Args:
        alpha: weight of each new observation.
        prior_median_s, prior_sigma: the distribution before any observation.
    """

    __slots__ = ("alpha", "n", "_m1", "_m2", "_prior")

    def __init__(
        self, alpha: float = 0.1, prior_median_s: float = 1.0, prior_sigma: float = 1.0
    ) -> None:
        self.alpha = alpha
        self.n = 0
        self._m1 = 0.0
        self._m2 = 0.0
        self._prior = LogNormalDist(math.log(prior_median_s), prior_sigma)

    def add(self, duration_s: float) -> None:
        x = math.log(max(duration_s, MIN_DURATION_S))
        if self.n == 0:
            self._m1, self._m2 = x, x * x
        else:
            a = self.alpha
            self._m1 += a * (x - self._m1)
            self._m2 += a * (x * x - self._m2)
        self.n += 1

    @property
    def mu(self) -> float:
        return self._m1 if self.n else self._prior.mu

    @property
    def sigma(self) -> float:
        """sqrt(EMA[(log x)^2] - EMA[log x]^2); 0 after a single observation."""
        if not self.n:
            return self._prior.sigma
        return math.sqrt(max(self._m2 - self._m1**2, 0.0))

    def p95(self) -> float:
        """exp(mu + 1.645 sigma): the 95th percentile of the fitted log-normal."""
        return math.exp(self.mu + 1.6448536269514722 * self.sigma)
