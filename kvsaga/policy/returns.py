"""When a queued or demoted session comes back: observed waits, and the forecast `graph` reads.

`graph` prices a session's blocks by P(reuse) * rebuild / T, with T its forecast of the time
until the session's next step. For a paused session T is the Execution Graph's *median*
residual pause (aeg.py: with the mean, sessions probably back soon were undervalued, since
a few very long pauses set it). For a session whose tool has returned and which queues for
admission, and for one the scheduler demoted, T came instead from the *mean* residual of
the recent observed waits (`WaitSamples.residual`), pooled over every workflow. Those waits
are heavy-tailed (a demotion lasts as long as the admitted sessions' steps and pauses), so
their mean sits far above the typical wait: on the fit seeds (bench/RESULTS.md, "Why graph
loses where it loses") graph's forecasts for the demoted and queued sessions it evicted from
were off by a median e^1.6 and e^1.1, a quarter to a half of them back more than e times
sooner, and those evictions were graph's surplus over saga's.

`WorkflowWaits` (graph's `median_returns`) forecasts those two states as the pauses are
forecast: the median of the observed residual waits given the time already waited, so one
long demotion cannot price every demoted session as gone for good. Each workflow's own
waits count one each and every workflow's pooled waits count `prior` in all (an empirical
Bayes mixture: a workflow with no history gets the pooled median, one with many gets its
own), so a workflow whose sessions queue or stay demoted unlike the others' (one never
seen in tuning) is priced from its own record. Nothing in it is fitted: the median is the
pauses' statistic, and `prior` is graph's `calib_prior`, the pseudo-observations of every
other shrinkage in graph.

Only the `TRACKED_WORKFLOWS` most recently updated workflows keep a record of their own (an
engine that serves ever new workflow names would otherwise keep one per name for ever); a
workflow dropped past that bound is forecast, like one never seen, from the pooled waits.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right, insort
from collections import deque
from itertools import accumulate

from kvsaga._validate import check_number, is_number

# Workflows with a record of their own in `WorkflowWaits`, at most: past this many, the least
# recently updated one is forgotten. The bench traces have a handful of workflows, so no
# decision there depends on it; it bounds memory where workflow names never repeat.
TRACKED_WORKFLOWS = 1024


class WaitSamples:
    """The most recent observed waits, and the mean time still to wait given the time
    waited so far: E[W - q | W > q] over the samples, without assuming any shape (waits
    behind a demotion are heavy-tailed: the longer one has lasted, the longer it will).

    Args:
        size: how many recent samples are kept (older ones are forgotten).
    """

    def __init__(self, size: int = 256) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            # (0: the first add failed on the empty deque with an IndexError naming nothing)
            raise ValueError(f"size must be an int >= 1, got {size!r}")
        self._recent: deque[float] = deque(maxlen=size)
        self._sorted: list[float] = []
        self._suffix: list[float] | None = None  # suffix sums of _sorted, built on demand

    def __len__(self) -> int:
        return len(self._recent)

    def add(self, wait_s: float, workflow: str | None = None) -> None:
        """One observed wait (`workflow`: whose; this pooled record ignores it): a finite
        number of seconds >= 0, else ValueError and nothing changes (a NaN sample, once it
        aged out, deleted another sample from `_sorted`; an infinite one made every mean
        forecast below it inf)."""
        if not (is_number(wait_s) and 0 <= wait_s < math.inf):
            raise ValueError(f"wait_s must be a finite number of seconds >= 0, got {wait_s!r}")
        if len(self._recent) == self._recent.maxlen:
            del self._sorted[bisect_left(self._sorted, self._recent[0])]
        self._recent.append(wait_s)
        insort(self._sorted, wait_s)
        self._suffix = None

    def residual(self, waited_s: float, workflow: str | None = None) -> float | None:
        """Mean seconds still to wait after `waited_s`; `waited_s` itself once every sample
        is shorter (as long again: the tail is unknown); None with no samples. `workflow`
        is ignored here (`WorkflowWaits` reads it)."""
        xs = self._sorted
        if not xs:
            return None
        i = bisect_right(xs, waited_s)
        n = len(xs) - i
        if n == 0:
            return waited_s
        return (self.tail_sum(i) - n * waited_s) / n

    def tail_sum(self, i: int) -> float:
        """The sum of the sorted samples from the `i`-th on: one lookup in suffix sums
        rebuilt only after an add (so a forecast read many times between adds is O(log n))."""
        if self._suffix is None:
            self._suffix = list(accumulate(reversed(self._sorted)))[::-1] + [0.0]
        return self._suffix[i]

    def mean_residual(self, waited_s: float, workflow: str | None = None) -> float | None:
        """Mean seconds still to wait after `waited_s` (`residual`: this record's forecast
        is the mean already)."""
        return WaitSamples.residual(self, waited_s, workflow)


class WorkflowWaits(WaitSamples):
    """Observed waits pooled and per workflow; the forecast is the *median* time still to
    wait given the time waited so far, over a mixture of the workflow's own waits (weight
    1 each) and the pooled ones (weight `prior` in all).

    Args:
        prior: the pooled waits' total weight against a workflow's own (> 0).
        size: how many recent samples are kept, pooled and per workflow.
        workflows: how many workflows keep a record of their own (the least recently
            updated is dropped past it; a dropped one is forecast from the pooled waits).
    """

    def __init__(self, prior: float, size: int = 256,
                 workflows: int = TRACKED_WORKFLOWS) -> None:
        check_number("prior", prior, lambda v: v > 0, "> 0")  # (inf: mean_residual NaN)
        if isinstance(workflows, bool) or not isinstance(workflows, int) or workflows < 1:
            raise ValueError(f"workflows must be an int >= 1, got {workflows!r}")
        super().__init__(size)
        self.prior = prior
        self._size = size
        self._workflows = workflows
        # Insertion order is update order: each add moves its workflow to the end.
        self.by_workflow: dict[str, WaitSamples] = {}

    def add(self, wait_s: float, workflow: str | None = None) -> None:
        super().add(wait_s)  # (checks `wait_s` before anything changes)
        if workflow is not None:
            own = self.by_workflow.pop(workflow, None)
            if own is None:
                own = WaitSamples(self._size)
                if len(self.by_workflow) >= self._workflows:  # forget the stalest
                    del self.by_workflow[next(iter(self.by_workflow))]
            self.by_workflow[workflow] = own  # (re)inserted last: the most recent
            own.add(wait_s)

    def _tails(self, waited_s: float, workflow: str | None
               ) -> tuple[WaitSamples | None, int, int, int, int]:
        """What both forecasts read: the workflow's own record (None without one), the
        indices of the first own and pooled samples above `waited_s`, and how many of each
        lie above it."""
        own = self.by_workflow.get(workflow) if workflow is not None else None
        own_xs = own._sorted if own is not None else []
        i, j = bisect_right(own_xs, waited_s), bisect_right(self._sorted, waited_s)
        return own, i, j, len(own_xs) - i, len(self._sorted) - j

    def residual(self, waited_s: float, workflow: str | None = None) -> float | None:
        """Median seconds still to wait after `waited_s` (the mixture's, above); `waited_s`
        itself once every sample is shorter; None with no samples."""
        pool = self._sorted
        if not pool:
            return None
        own, i, j, a, b = self._tails(waited_s, workflow)
        if a == 0 and b == 0:
            return waited_s
        own_xs = own._sorted if own is not None else []
        w_pool = self.prior / b if b else 0.0
        half = 0.5 * (a + (self.prior if b else 0.0))
        got = 0.0
        while True:  # merge the two suffixes upward until half the weight is below
            if j >= len(pool) or (i < len(own_xs) and own_xs[i] <= pool[j]):
                x, got, i = own_xs[i], got + 1.0, i + 1
            else:
                x, got, j = pool[j], got + w_pool, j + 1
            # (the slack for rounding is relative below a total weight of 2: an absolute
            # 1e-12 stopped at the first sample once a prior under 2e-12 made `half` tiny)
            if (got >= half - 1e-12 * (half if half < 1.0 else 1.0)
                    or (i >= len(own_xs) and j >= len(pool))):
                return x - waited_s

    def mean_residual(self, waited_s: float, workflow: str | None = None) -> float | None:
        """*Mean* seconds still to wait after `waited_s`, over the same mixture as
        `residual` (the workflow's waits beyond `waited_s` one each, the pooled ones
        `prior` in all); `waited_s` itself once every sample is shorter; None with no
        samples. graph's `demoted_mean` reads it (return_forecast.py says why). Two
        bisections and two suffix-sum lookups (`tail_sum`): O(log n) a call between adds."""
        if not self._sorted:
            return None
        own, i, j, a, b = self._tails(waited_s, workflow)
        if a == 0 and b == 0:
            return waited_s
        own_left = own.tail_sum(i) - a * waited_s if a else 0.0
        if b == 0:
            return own_left / a
        pool_left = (self.tail_sum(j) - b * waited_s) / b  # the pooled mean residual
        return (own_left + self.prior * pool_left) / (a + self.prior)
