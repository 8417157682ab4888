"""The grouped policies' numeric parameters are checked at construction (review s47,
policyint finding 1): each must be a finite real number in its range, not a bool, a str (as
JSON policy_args may bring it) nor NaN, and the ValueError names the parameter. Unchecked,
graph's `min_wait_s=inf` failed every victim search, its `alpha="0.2"` raised a TypeError
in `step_started` and `alpha=nan` made the shared blocks' keys NaN."""

from __future__ import annotations

import math
import re

import pytest

from kvsaga.policy import make_policy
from kvsaga.policy.return_forecast import ReturnForecast

INF, NAN = math.inf, math.nan


def re_repr(x: object) -> str:
    """`repr(x)` as a regular expression."""
    return re.escape(repr(x))

# (policy, parameter, what its message says it must be, values refused)
REFUSED = [
    ("graph", "min_wait_s", "> 0", [INF, NAN, 0, -1.0, "0.001", True]),
    ("graph", "plain_interval_s", "> 0", [INF, NAN, 0, "60", True]),
    ("graph", "alpha", r"in \(0, 1\]", [NAN, 0, 1.5, INF, "0.2", True, None]),
    ("graph", "prefetch_lead_s", ">= 0", [INF, NAN, -0.1, "0.1", False]),
    ("graph", "wait_alpha", r"in \(0, 1\]", [NAN, 0, 2.0, "0.02", True]),
    ("graph", "calib_prior", r"> 0 \(or None\)", [INF, NAN, 0, "4", True]),
    ("ttl", "base_ttl_s", "> 0", [INF, NAN, -5, "60", True]),
    ("ttl", "max_usage", r"in \[0, 1\)", [NAN, 1, -0.1, "0.95", True]),
    ("saga", "alpha", r"in \(0, 1\]", [NAN, 0, 1.5, "0.1", True]),
    ("saga", "max_ttl_s", "> 0", [INF, NAN, 0, "300"]),
    ("saga", "prior_median_s", "> 0", [INF, NAN, 0, "1"]),
    ("saga", "prior_sigma", "> 0", [INF, NAN, 0, "1"]),
    ("saga", "prior_steps", "> 0", [INF, NAN, 0, "10"]),
]


@pytest.mark.parametrize("policy,name,rule,bad", [
    (p, n, r, b) for p, n, r, values in REFUSED for b in values])
def test_a_bad_number_is_refused_naming_the_parameter(policy, name, rule, bad):
    with pytest.raises(ValueError,
                       match=rf"^{name} must be a finite number {rule}, got {re_repr(bad)}$"):
        make_policy(policy, **{name: bad})


@pytest.mark.parametrize("policy", ["graph", "ttl", "saga"])
@pytest.mark.parametrize("bad", [NAN, -1, "0.125", None])
def test_relearn_share_must_be_a_number_at_least_0(policy, bad):
    with pytest.raises(ValueError, match=rf"^relearn_share must be a number >= 0, got "
                                         rf"{re_repr(bad)}$"):
        make_policy(policy, relearn_share=bad)


def test_return_forecast_names_wait_alpha():
    with pytest.raises(ValueError, match=r"^wait_alpha must be a finite number in \(0, 1\], "
                                         r"got '0.02'$"):
        ReturnForecast(wait_alpha="0.02", demoted_mean=False)


@pytest.mark.parametrize("policy,kw", [
    ("graph", {}), ("ttl", {}), ("saga", {}), ("adaptive", {}),
    # the bounds themselves, ints as JSON gives them, and None where it means "off"
    ("graph", dict(min_wait_s=1, plain_interval_s=1, alpha=1, prefetch_lead_s=0,
                   wait_alpha=1, calib_prior=None, relearn_share=0)),
    ("graph", dict(relearn_share=INF)),  # never re-key by count
    ("ttl", dict(base_ttl_s=30, max_usage=0)),
    ("saga", dict(alpha=1, max_ttl_s=1, prior_median_s=10, prior_sigma=1, prior_steps=1)),
])
def test_defaults_and_bounds_are_accepted(policy, kw):
    assert make_policy(policy, **kw).name == policy
