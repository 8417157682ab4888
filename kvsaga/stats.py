"""The one percentile definition that the simulator's metrics and the benchmarks share.

Linear interpolation between the closest ranks: numpy's default (`method="linear"`, type 7
of Hyndman and Fan), which is also what pandas and most dashboards report. A p95 quoted
anywhere in kvsaga or bench/RESULTS.md (from the scripts that use this) means that.

Computed in Python with numpy's own float operations, in its order (rank `(n - 1) * q`,
`_lerp`'s two formulas either side of a weight of 0.5), so the answer is np.percentile's to
the bit (tests/test_stats.py): a simulation calls this once or twice at its end, and
np.percentile's first call imports numpy.ma (tens of ms, more than a small simulation's
whole run on the simulator's fast path).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of `values`; NaN when there are none or one is
    NaN (as numpy)."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    n = len(values)
    if not n:
        return math.nan
    xs = sorted(values)
    if any(x != x for x in xs):  # NaN: numpy's answer, whatever the sort made of it
        return math.nan
    rank = (n - 1) * (q / 100)
    below = math.floor(rank)
    if rank >= n - 1:  # numpy takes the last value from both sides; weight against -1
        a = b = xs[-1]
        weight = rank - (-1)
    else:
        a, b = xs[below], xs[below + 1]
        weight = rank - below
    diff = b - a
    return float(b - diff * (1 - weight) if weight >= 0.5 else a + diff * weight)
