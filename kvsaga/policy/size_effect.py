"""How much longer a larger session stays demoted: learned from graph's own demotions.

`graph` prices a demoted session's blocks by P(reuse) * rebuild / T, with T the residual of
the demotions it has seen end (`ReturnForecast.demoted_time`), one record per workflow. That
record does not know *which* demoted session comes back first, and the scheduler does: the
`workflow` scheduler re-admits waiting sessions by predicted remaining work (expected steps
left times the context held: kvsaga/scheduler/admission_order.py), so of two sessions
demoted at once the one holding the larger context is re-admitted later. Graph, pricing both
alike, keeps the larger one (its tail blocks are dearer to rebuild, at a longer position)
and evicts the smaller, which comes back first: the ranking is inverted exactly where the
scheduler orders by size.

Measured on the fit seeds (bench/RESULTS.md, "Eviction policies: the demoted session's size
..."; `python bench/policies_decisions.py --trace swe --seed 202 --fraction 0.6 --smooth`):
where graph and ttl pick different victims from the same pool, the demoted blocks graph kept
instead of ttl's picks were read before graph evicted them anyway 16 times of 2,263 (ttl,
keeping graph's demoted picks instead: 1,087 of 3,578), and on swe seed 202 at 60% the
demotions that ended lasted a median 0.57 s for the smallest third of contexts and 1.0 s
for the largest (`corr(log length, log context)` 0.29).

So graph learns, per workflow, the elasticity `beta` of a demotion's length in the context's
size: an online least-squares fit of log(length) on log(context blocks), over the
demotions it saw end, and prices a demoted session of `n` blocks as if its demotion ran on a
clock `f = exp(beta * (log n - mean log n))` times slower (an accelerated-failure-time
model): residual = f * R(lasted / f), with R the record's residual. Nothing is fitted
offline: `beta` is the data's own slope shrunk towards the pooled one, and that towards 0,
each by `prior` pseudo-observations (graph's `calib_prior`): no data, no effect (f = 1); a
scheduler that does not order by size gives a slope near 0, and graph is left as it was.
"""

from __future__ import annotations

import math

from kvsaga.policy.returns import TRACKED_WORKFLOWS


class SizeElasticity:
    """Per workflow, the least-squares slope of log(demotion length) on log(context
    blocks), shrunk towards the pooled within-workflow slope, and that towards 0; and the
    clock factor it gives a session of a given size.

    The pooled slope is the *within*-workflow one (each workflow's sizes and lengths
    centred on its own means, as a fixed-effects regression): that one workflow holds
    larger contexts and another's demotions last longer is already in graph's per-workflow
    record of demotions (returns.py), and must not read as a size effect.

    Args:
        prior: pseudo-observations of slope 0 (pooled) or of the pooled slope (a workflow)
            each estimate is shrunk towards; a finite number > 0.
    """

    def __init__(self, prior: float) -> None:
        if not (isinstance(prior, (int, float)) and not isinstance(prior, bool)
                and math.isfinite(prior) and prior > 0):
            raise ValueError(f"prior must be a finite number > 0, got {prior!r}")
        self.prior = float(prior)
        # workflow (None: unnamed) -> [n, sum x, sum y, sum xx, sum xy], most recent last
        self._sums: dict[str | None, list[float]] = {}
        # The pooled within-workflow sums: [n, sum of centred xx, sum of centred xy].
        self._within = [0.0, 0.0, 0.0]

    @staticmethod
    def _centred(s: list[float]) -> tuple[float, float]:
        """(n x variance of x, n x covariance of x and y) of one workflow's sums."""
        n, sx, sy, sxx, sxy = s
        return sxx - sx * sx / n, sxy - sx * sy / n

    def add(self, context_blocks: int, lasted_s: float, workflow: str | None,
            floor_s: float) -> None:
        """A demotion of a session holding `context_blocks` blocks lasted `lasted_s`
        (read as at least `floor_s`, so the log is finite)."""
        if context_blocks < 1:
            return  # no size to learn from
        x = math.log(context_blocks)
        y = math.log(max(lasted_s, floor_s))
        s = self._sums.pop(workflow, None)
        w = self._within
        if s is None:
            s = [0.0, 0.0, 0.0, 0.0, 0.0]
        else:
            vxx, cxy = self._centred(s)
            w[0] -= s[0]
            w[1] -= vxx
            w[2] -= cxy
        s[0] += 1.0
        s[1] += x
        s[2] += y
        s[3] += x * x
        s[4] += x * y
        vxx, cxy = self._centred(s)
        w[0] += s[0]
        w[1] += vxx
        w[2] += cxy
        self._sums[workflow] = s
        while len(self._sums) > TRACKED_WORKFLOWS:  # forget the least recently updated
            old = self._sums.pop(next(iter(self._sums)))
            vxx, cxy = self._centred(old)
            w[0] -= old[0]
            w[1] -= vxx
            w[2] -= cxy

    def _shrunk(self, n: float, vxx: float, cxy: float, toward: float) -> float:
        """The least-squares slope cxy / vxx of n observations, weighted n / (n + prior)
        against `toward`; `toward` alone when the sizes did not vary."""
        if n <= 0 or vxx <= 1e-12 * n:
            return toward
        w = n / (n + self.prior)
        return w * (cxy / vxx) + (1.0 - w) * toward

    def pooled_slope(self) -> float:
        """The within-workflow slope over every workflow's demotions, shrunk towards 0."""
        n, vxx, cxy = self._within
        return self._shrunk(n, vxx, cxy, 0.0)

    def slope(self, workflow: str | None) -> float:
        """`workflow`'s own slope shrunk towards the pooled one (the pooled one for a
        workflow never seen)."""
        b = self.pooled_slope()
        s = self._sums.get(workflow)
        if s is None:
            return b
        return self._shrunk(s[0], *self._centred(s), b)

    def factor(self, context_blocks: int, workflow: str | None) -> float:
        """The clock factor of a session of `context_blocks` blocks: exp(slope x (log size
        - the workflow's mean log size)); 1 with no size or no record of the workflow."""
        s = self._sums.get(workflow)
        if context_blocks < 1 or s is None:
            return 1.0
        return math.exp(self.slope(workflow) * (math.log(context_blocks) - s[1] / s[0]))
