"""Pricing a queued or demoted session's return by its forecast's spread, not its centre.

`graph` prices a session's blocks by the loss rate P(reuse) * rebuild / T, with T a point
forecast of the time until the session's next step. When T is uncertain the loss rate
that matters is its expectation over the forecast distribution, E[rebuild / T] =
rebuild * E[1 / T], and by Jensen's inequality E[1 / T] >= 1 / median(T) (for a log-normal
T, E[1 / T] = exp(s^2 / 2) / median). A wide forecast thus prices blocks as dearer to drop
than its centre says: a session that may be back in a second costs more than one surely
back at the median.

Why here, on the fit seeds (bench/RESULTS.md, "Why graph loses where it loses",
`python bench/policies_victims.py`): where graph lost most to ttl, saga or lru, its surplus
of evicted blocks was in **demoted and queued** sessions (swe+bfcl 201 at 30%: 36,995
demoted and 3,038 queued blocks against ttl's 26,595 and 417), and its forecasts for those
victims missed both ways by a median e^1 to e^2, most queued ones back more than e times
sooner. The median forecast (graph's `median_returns`) is centred on the observed waits but
says nothing of their spread; its pauses' forecasts were the close ones.

`SpreadWaits` keeps `WorkflowWaits`' record and median (the paused sessions' admission wait
is read from it unchanged) and adds `priced`: the time T* with 1 / T* = E[1 / T] under a
log-normal fit of the residual waits given the time already waited, centred on the median
residual (the mixture's, as `WorkflowWaits.residual`) and with the mixture's variance of
the log residuals around it, each sample's log ratio to the median clipped at `clip`
(e^5 = 148x, as graph's other log errors). So T* = median * exp(-min(s^2, 2 clip) / 2): a
tight record leaves graph's ranking as it was, a wide one brings the session's blocks forward
as soon as ttl's recency would. The cap (not fitted) bounds the whole shift log(median / T*)
by `clip`, as each sample's log ratio is bounded: T* >= median * e^-5. The per-sample clip
alone bounds s^2 only by clip^2 = 25: a record split between waits far below and far above
its median would price a session as back up to e^12.5 (about 270,000x) sooner than the
median, more than graph lets any one log error count (graph.py's LOG_CLIP). The moments
come from every observed wait (every resume and every demotion's end), not from graph's
victims only (`trust`'s record, a few dozen per workflow, whose factors did not hold up);
per workflow the own waits weigh 1 each and the pooled ones `prior` in all, as in
`WorkflowWaits`. Nothing is fitted: `prior` is graph's `calib_prior`.

Opt-in. It is the tune rule's first pick over the whole fit set (worst case 2.48x of the best
baseline against 3.27x without it, fit set with seeds 951, 952) and passes the calibrated
AFS veto and issue 10's non-thrash check, but it lowers issue 10's smallest fit gain (bfcl
1x 25% 1.73x -> 1.59x), so the tune's walk passes over it (docs/policies.md, "Session 32,
the lead").
"""

from __future__ import annotations

import math
from bisect import bisect_right

from kvsaga.policy.returns import WorkflowWaits

SPREAD_STATES = ("queued", "demoted")


def spread_flags(on: bool, states: object) -> tuple[bool, bool]:
    """(price queued sessions by spread, price demoted ones by spread) for graph's `spread`
    and `spread_states` (a state name or a tuple of them, each of `SPREAD_STATES`)."""
    names = (states,) if isinstance(states, str) else states
    if not isinstance(names, (tuple, list)) or not names or \
            any(x not in SPREAD_STATES for x in names):
        raise ValueError(f"spread_states must name some of {SPREAD_STATES}, got {states!r}")
    return on and "queued" in names, on and "demoted" in names


class SpreadWaits(WorkflowWaits):
    """`WorkflowWaits` plus `priced`: the median residual wait shrunk by its record's
    spread, so that its inverse is the expected inverse residual wait (module docstring).

    Args:
        prior: the pooled waits' total weight against a workflow's own (> 0).
        size: how many recent samples are kept, pooled and per workflow.
        clip: one sample's |log(residual / median)| counts at most this much, and so does
            `priced`'s whole shift log(median / T*) (s^2 capped at 2 clip).
        floor_s: residuals below this many seconds count as this (no log of 0).
    """

    def __init__(self, prior: float, size: int = 256, clip: float = 5.0,
                 floor_s: float = 1e-3) -> None:
        super().__init__(prior, size)
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip!r}")
        if not floor_s > 0:
            raise ValueError(f"floor_s must be > 0, got {floor_s!r}")
        self.clip = clip
        self.floor_s = floor_s
        self._memo: dict[tuple[float, str | None], float] = {}

    def add(self, wait_s: float, workflow: str | None = None) -> None:
        super().add(wait_s, workflow)
        self._memo.clear()

    def log_spread(self, waited_s: float, workflow: str | None = None) -> float:
        """The mixture's variance of log(residual / median residual) over the samples
        longer than `waited_s` (own ones weigh 1 each, pooled ones `prior` in all); 0 with
        no such sample."""
        median = self.residual(waited_s, workflow)
        if median is None:
            return 0.0
        lo, clip = self.floor_s, self.clip
        centre = math.log(max(median, lo))
        own = self.by_workflow.get(workflow) if workflow is not None else None
        total = acc = 0.0
        for xs, pooled in ((() if own is None else own._sorted, False), (self._sorted, True)):
            i = bisect_right(xs, waited_s)
            n = len(xs) - i
            if n == 0:
                continue
            each = self.prior / n if pooled else 1.0  # per sample
            for x in xs[i:]:
                d = math.log(max(x - waited_s, lo)) - centre
                d = clip if d > clip else -clip if d < -clip else d
                acc += each * d * d
            total += each * n
        return acc / total if total else 0.0

    def priced(self, waited_s: float, workflow: str | None = None) -> float | None:
        """Seconds T* with 1 / T* the expected inverse of the time still to wait after
        `waited_s`: the median residual times exp(-min(s^2, 2 clip) / 2), s^2 = `log_spread`
        (the cap keeps T* >= median * e^-clip: module docstring); None with no samples,
        `waited_s` itself once every sample is shorter (as `residual`)."""
        key = (waited_s, workflow)
        got = self._memo.get(key)
        if got is not None:
            return got
        median = self.residual(waited_s, workflow)
        if median is None:
            return None
        s2 = self.log_spread(waited_s, workflow)
        got = median * math.exp(-0.5 * min(s2, 2.0 * self.clip))
        if len(self._memo) > 4096:
            self._memo.clear()
        self._memo[key] = got
        return got
