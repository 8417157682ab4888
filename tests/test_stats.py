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


def test_bit_equal_to_numpy_on_awkward_inputs():
    """The pure-Python interpolation is np.percentile's to the bit: ties, ints, one value,
    infinities, ranks on and off the grid, weights either side of 0.5."""
    rng = np.random.default_rng(1)
    cases = [list(rng.exponential(size=n)) for n in (1, 2, 3, 20, 101)]
    cases += [list(map(int, rng.integers(0, 50, size=n))) for n in (1, 7, 40)]
    cases += [[1.0, 1.0, 1.0], [0.1, 0.2, 0.3, math.inf], [-math.inf, 2.0, 5.5],
              [3.0, -1e300, 1e300, 0.0], [1e-310, 5e-324, 0.0]]
    for xs in cases:
        for q in (0, 1, 12.5, 33.3, 50, 66.7, 90, 95, 99, 99.9, 100):
            got, want = percentile(xs, q), float(np.percentile(xs, q))
            assert got == want or (math.isnan(got) and math.isnan(want)), (xs, q, got, want)


def test_nan_anywhere_gives_nan():
    assert math.isnan(percentile([1.0, math.nan, 2.0], 50))
    assert math.isnan(float(np.percentile([1.0, math.nan, 2.0], 50)))
