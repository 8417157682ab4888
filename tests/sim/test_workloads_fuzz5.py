"""The workload generator with extreme (valid-looking) arguments: a clear ValueError naming
what overflowed, or the documented cap, instead of OverflowError from `math.exp`, `**` or
`int(inf)`. Where nothing overflows, each changed expression equals the old one (traces of
every family at several seeds and scales were byte-identical before and after)."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsaga.sim.family import ToolSpec, _capped_exp, _scaled
from kvsaga.sim.workloads import SWE, generate, perturb


def _tools(**changes) -> tuple[ToolSpec, ...]:
    return tuple(dataclasses.replace(t, **changes) for t in SWE.tools)


def test_a_latency_past_the_float_range_is_capped_at_max_s():
    """p95 / p50 = 1e305: log sigma ~427, so exp(mu + sigma z) overflows for z > ~1.7;
    such a latency is the tool's cap (max_s), as any latency above it."""
    spec = dataclasses.replace(SWE, tools=_tools(p50_s=1e-5, p95_s=1e300))
    sessions = spec.generate(5, seed=1)
    times = [st.tool_s for s in sessions for st in s.steps if st.tool is not None]
    assert max(times) == 7200.0 and all(0.0 <= t <= 7200.0 for t in times)


@pytest.mark.parametrize(("changes", "message"), [
    (dict(output_sigma=1e3), "swe: an output drawn from output_sigma 1000.0"),
    (dict(final_tokens=1e308), "call_tokens / final_tokens up to 1e+308"),
    (dict(tools=_tools(observation_tokens=1e308)),
     "swe: an observation drawn from observation_tokens up to 1e+308"),
])
def test_a_token_count_past_the_float_range_is_refused_by_name(changes, message):
    spec = dataclasses.replace(SWE, **changes)
    with pytest.raises(ValueError, match=re.escape(message) + ".*past the float range"):
        spec.generate(5, seed=1)


def test_a_huge_mean_step_count_is_capped_at_steps_max():
    sessions = dataclasses.replace(SWE, steps_mean=1e308).generate(4, seed=1)
    assert all(len(s.steps) <= SWE.steps_max for s in sessions)


def test_a_huge_scale_is_refused_by_name():
    with pytest.raises(ValueError, match=r"scale 1e\+308 x 2100 tokens is past the float"):
        generate("swe", 2, seed=1, scale=1e308)


def test_perturb_refuses_a_spread_past_the_float_range():
    with pytest.raises(ValueError, match=r"perturb: spread 1000000.0 puts read_file's p95"):
        perturb(SWE, "wide", spread=1e6)


def test_a_tool_whose_latency_ratio_overflows_is_refused():
    with pytest.raises(ValueError, match=r"p95_s / p50_s must be a finite ratio"):
        ToolSpec("t", 1e-300, 1e300, 10.0, 10.0)


def test_the_mean_latency_past_the_float_range_is_refused_by_name():
    tool = ToolSpec("t", 1e-5, 1e300, 10.0, 10.0)
    with pytest.raises(ValueError, match=r"t: the mean of the log-normal latency .* is past"):
        _ = tool.mean_s
    t = SWE.tools[0]
    assert t.mean_s == t.p50_s * math.exp(t.sigma**2 / 2)  # a finite mean, as before


@settings(max_examples=300, deadline=None, derandomize=True)
@given(x=st.floats(-800.0, 709.0), cap=st.floats(1e-3, 1e300))
def test_a_capped_latency_is_the_old_expression_where_it_did_not_overflow(x, cap):
    assert _capped_exp(x, cap) == min(cap, math.exp(x))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(drawn=st.floats(0.0, 1e6), lo=st.integers(1, 50), extra=st.integers(0, 300))
def test_the_step_count_capped_before_rounding_is_the_old_count(drawn, lo, extra):
    """`_sample_steps` rounds the gamma draw capped at steps_max: the count the old
    order (round, then clamp) gave, for any finite draw."""
    hi = lo + extra
    old = min(max(int(round(drawn)), lo), hi)
    assert min(max(int(round(min(drawn, hi))), lo), hi) == old


def test_scaled_counts_are_unchanged_below_the_float_range():
    for tokens, scale in ((2100, 1.0), (350, 0.05), (1, 0.01), (600, 3.0), (0, 2.0)):
        assert _scaled(tokens, scale, minimum=1) == max(1, int(round(tokens * scale)))
