"""The wait records' and trust's edge arguments (review s52 policy2, findings R1-R3, T1):
the median forecast at any prior scale, and every bad argument refused by name with the
record left as it was."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsaga.policy.returns import WaitSamples, WorkflowWaits
from kvsaga.policy.trust import PredictionTrust
from tests.policy.helpers import mixture_above

READS_NO_CORE = True


def _median_residual(own: list[float], pool: list[float], prior: float,
                     waited: float) -> float | None:
    """The definition by brute force, its rounding slack relative to the total weight: the
    smallest x above `waited` at which the mixture's weight (own waits 1 each, pooled ones
    `prior` in all) reaches half of its total."""
    if not pool:
        return None
    items = mixture_above(own, pool, prior, waited)
    if not items:
        return waited
    half = sum(w for _, w in items) / 2
    got = 0.0
    for x, w in sorted(items):
        got += w
        if got >= half * (1 - 1e-9):
            return x - waited
    raise AssertionError("unreachable")


def test_a_tiny_prior_still_forecasts_the_pooled_median():
    """R1: with a prior under 2e-12 (graph's calib_prior takes any finite > 0) a workflow with
    no record of its own was forecast the smallest pooled wait, not the median."""
    for prior in (4.0, 1e-9, 1e-13, 1e-300):
        w = WorkflowWaits(prior)
        for x in (1.0, 2.0, 3.0, 4.0, 5.0):
            w.add(x, "a")
        assert w.residual(0.0, "b") == 3.0, prior
        assert w.residual(0.0) == 3.0, prior
        assert w.residual(1.5, "b") == 1.5, prior  # (2, 3, 4, 5 above 1.5: 3 - 1.5)


@settings(max_examples=60, deadline=None)
@given(prior=st.sampled_from([1e-300, 1e-15, 1e-12, 1e-6, 0.5, 1.0, 4.0, 1e3]),
       waits=st.lists(st.tuples(st.sampled_from(["a", "b", None]),
                                st.floats(0.0, 1e4, allow_subnormal=False)),
                      min_size=1, max_size=30),
       waited=st.sampled_from([0.0, 0.5, 3.0, 100.0]))
def test_median_residual_is_the_definition_at_every_prior_scale(prior, waits, waited):
    w = WorkflowWaits(prior, size=8)
    own: dict[str, list[float]] = {"a": [], "b": []}
    pool: list[float] = []
    for wf, x in waits:
        w.add(x, wf)
        pool = (pool + [x])[-8:]
        if wf is not None:
            own[wf] = (own[wf] + [x])[-8:]
    for wf in ("a", "b", "c", None):
        want = _median_residual(own.get(wf, []), pool, prior, waited)
        assert w.residual(waited, wf) == want, (wf, want)


@pytest.mark.parametrize("make", [lambda: WaitSamples(), lambda: WorkflowWaits(4.0)])
@pytest.mark.parametrize("bad", [math.nan, -1.0, math.inf, "3", None, True])
def test_a_bad_wait_is_refused_by_name_and_changes_nothing(make, bad):
    """R3: the mean record (graph's median_returns=False) took NaN and negatives; a NaN,
    once aged out, deleted another sample from the sorted copy."""
    w = make()
    w.add(2.0, "a")
    before = (list(w._recent), list(w._sorted), w.residual(0.0, "a"))
    with pytest.raises(ValueError, match="wait_s"):
        w.add(bad, "a")
    assert (list(w._recent), list(w._sorted), w.residual(0.0, "a")) == before


def test_the_records_stay_sorted_copies_of_the_recent_waits():
    w = WaitSamples(size=3)
    for x in (5.0, 1.0, 4.0, 2.0, 3.0, 0.0):
        w.add(x)
        assert w._sorted == sorted(w._recent)


@pytest.mark.parametrize("size", [0, -1, 1.5, True, None, "8"])
def test_a_bad_record_size_is_refused_by_name(size):
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        WaitSamples(size)
    with pytest.raises(ValueError, match="size must be an int >= 1"):
        WorkflowWaits(4.0, size=size)


@pytest.mark.parametrize("prior", [math.inf, math.nan, 0.0, -1.0, True, "4"])
def test_a_bad_prior_is_refused_by_name(prior):
    """R2: WorkflowWaits(prior=inf) gave a NaN mean_residual; PredictionTrust took inf and
    True."""
    with pytest.raises(ValueError, match="prior"):
        WorkflowWaits(prior)
    with pytest.raises(ValueError, match="prior"):
        PredictionTrust(prior)


@pytest.mark.parametrize("field", ["clip", "floor_s"])
@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, True])
def test_trust_refuses_a_bad_clip_or_floor_by_name(field, bad):
    """T1: floor_s=0 made `add` fail on log(0) after creating its record; a clip <= 0 or NaN
    inverted or poisoned the clamp."""
    with pytest.raises(ValueError, match=field):
        PredictionTrust(4.0, **{field: bad})


def test_trust_one_sample_or_none():
    t = PredictionTrust(4.0)
    assert t.factor("w", "paused") == 1.0
    t.add("w", "paused", 0.0, 0.0, 0.0)  # both floored: no error
    assert t.moments("w", "paused") == (0.0, 0.0) and t.factor("w", "paused") == 1.0
    t.add("w", "queued", 10.0, 1.0, 1.0)
    mu, s2 = t.moments("w", "queued")
    assert mu > 0 and s2 >= 0 and 0 < t.factor("w", "queued") < 1
