import math

import numpy as np
import pytest

from kvsaga.stats import percentile


def test_linear_interpolation_between_ranks():
    xs = [4.0, 1.0, 3.0, 2.0]  # sorted: 1 2 3 4; rank (n - 1) q / 100
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 100) == 4.0
    assert percentile(xs, 50) == 2.5
    assert percentile(xs, 95) == pytest.approx(3.85)
    assert percentile([7.0], 95) == 7.0


def test_matches_numpy_default_and_empty_is_nan():
    rng = np.random.default_rng(0)
    xs = list(rng.exponential(size=37))
    for q in (1, 50, 90, 95, 99):
        assert percentile(xs, q) == np.percentile(xs, q)
    assert math.isnan(percentile([], 95))


def test_q_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="must be in \\[0, 100\\], got 101"):
        percentile([1.0], 101)
