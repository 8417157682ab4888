"""The one percentile definition that the simulator's metrics and the benchmarks share.

Linear interpolation between the closest ranks: numpy's default (`method="linear"`, type 7
of Hyndman and Fan), which is also what pandas and most dashboards report. A p95 quoted
anywhere in kvsaga or bench/RESULTS.md (from the scripts that use this) means that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 <= q <= 100) of `values`; NaN when there are none."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be in [0, 100], got {q!r}")
    return float(np.percentile(values, q)) if len(values) else math.nan
