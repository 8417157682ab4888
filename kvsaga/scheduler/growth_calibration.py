"""Online calibration of the `workflow` gate's predicted growth (`growth_quantile`).

Why: the gate charges an admitted session its context plus the growth its workflow's steps
were seen to add (`GrowthTable`: the mean growth from one finished step to the next, the
tool's observation and the step's output together). While a step is admitted or running,
the prompt it holds already contains the tool's observation, so what is still to come is
its output alone: on the fit seeds (101-106) the admitted step's realized growth was a
fraction of the charge at every finish (`bench/scheduling_overflow.py --growth`), and the
shrink demoted paused sessions to make room for growth that never came. Rather than a
constant fitted to a trace, the charge is corrected by what sessions actually grew: per
workflow, tool and phase (queued: charged on the context of the last finish; admitted: on
the prompt), a high quantile of realized / predicted growth over the last `window` steps,
shrunk toward 1.0 (no correction) by `prior_steps` pseudo-observations, and the tool's
factor toward its workflow's. A fresh scheduler therefore charges exactly what it charged
before it had seen a step; a session that never grows stops reserving room; one that
outgrows its prediction raises the charge of the next ones.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

from kvsaga.policy.bounded import TRACKED_KINDS, TRACKED_WORKFLOWS, touch

PHASES = ("queued", "admitted")
MAX_RATIO = 16.0  # one observation's realized / predicted is capped here (a tiny prediction)


class _Ratios:
    """The last `window` ratios of one key, kept sorted too (quantiles in O(log n))."""

    __slots__ = ("recent", "sorted")

    def __init__(self) -> None:
        self.recent: deque[float] = deque()
        self.sorted: list[float] = []

    def add(self, x: float, window: int) -> None:
        self.recent.append(x)
        bisect.insort(self.sorted, x)
        if len(self.recent) > window:
            old = self.recent.popleft()
            del self.sorted[bisect.bisect_left(self.sorted, old)]

    def quantile(self, q: float) -> float:
        """The smallest ratio with at least a share q of the ratios at or below it."""
        s = self.sorted
        return s[max(0, math.ceil(q * len(s)) - 1)]


class GrowthCalibration:
    """Factors on the gate's predicted growth, learned from realized growth (see the module
    docstring).

    Args:
        quantile: the quantile of realized / predicted growth the factor follows, in (0, 1]
            (high: the charge covers most steps' growth, not the typical one).
        prior_steps: pseudo-observations of factor 1.0 (per workflow) or of the workflow's
            factor (per tool) that the observed quantile is shrunk toward; >= 0, finite.
        window: how many recent observations per key the quantile reads (>= 1).

    Raises:
        ValueError: a parameter out of range, named.
    """

    def __init__(self, quantile: float, prior_steps: float = 8.0, window: int = 64) -> None:
        if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not (
                0.0 < quantile <= 1.0):
            raise ValueError(f"growth calibration quantile must be in (0, 1], got {quantile!r}")
        if isinstance(prior_steps, bool) or not isinstance(prior_steps, (int, float)) or not (
                0.0 <= prior_steps < math.inf):
            raise ValueError(f"growth calibration prior_steps must be finite and >= 0, got "
                             f"{prior_steps!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"growth calibration window must be an integer >= 1, got "
                             f"{window!r}")
        self.quantile = float(quantile)
        self.prior_steps = float(prior_steps)
        self.window = window
        # Bounded (kvsaga/policy/bounded.py: tool and workflow names come from clients): the
        # most recently updated workflows' keys (workflow, None, phase), and apart, so that
        # new tool names do not push them out, the (workflow, tool, phase) keys of the most
        # recently updated tools; a forgotten key is predicted as one never seen.
        self._ratios: dict[tuple[str, str | None, str], _Ratios] = {}
        self._tool_ratios: dict[tuple[str, str | None, str], _Ratios] = {}

    def _table(self, key: tuple[str, str | None, str]) -> dict:
        return self._ratios if key[1] is None else self._tool_ratios

    def _shrunk(self, key: tuple[str, str | None, str], toward: float) -> float:
        r = self._table(key).get(key)
        if r is None:
            return toward
        n = len(r.recent)
        if self.prior_steps == 0:
            return r.quantile(self.quantile)
        return (n * r.quantile(self.quantile) + self.prior_steps * toward) / (
            n + self.prior_steps)

    def factor(self, workflow: str, tool: str | None, phase: str) -> float:
        """The factor on the growth predicted for a step of `workflow` after a pause on
        `tool` (None: unknown), charged while it is `phase` ("queued" or "admitted")."""
        if phase not in PHASES:
            raise ValueError(f"growth calibration phase must be one of {', '.join(PHASES)}, "
                             f"got {phase!r}")
        f = self._shrunk((workflow, None, phase), 1.0)
        return f if tool is None else self._shrunk((workflow, tool, phase), f)

    def observe(self, workflow: str, tool: str | None, phase: str, realized: float,
                predicted: float) -> None:
        """A step grew its context by `realized` tokens from the context a charge of
        `predicted` tokens of growth (uncalibrated) was based on. A prediction of no growth
        carries no ratio and is skipped; negative growth counts as none."""
        if phase not in PHASES:
            raise ValueError(f"growth calibration phase must be one of {', '.join(PHASES)}, "
                             f"got {phase!r}")
        if not predicted > 0:
            return
        ratio = min(max(realized, 0.0) / predicted, MAX_RATIO)
        keys = [(workflow, None, phase)]
        if tool is not None:
            keys.append((workflow, tool, phase))
        for key in keys:
            cap = len(PHASES) * (TRACKED_WORKFLOWS if key[1] is None else TRACKED_KINDS)
            touch(self._table(key), key, _Ratios, cap).add(ratio, self.window)

    def observations(self, workflow: str, tool: str | None, phase: str) -> int:
        """How many ratios the key holds now (at most `window`)."""
        key = (workflow, tool, phase)
        r = self._table(key).get(key)
        return 0 if r is None else len(r.recent)
