"""The growth calibration of the `workflow` gate (`growth_quantile`,
kvsaga/scheduler/growth_calibration.py): a fresh one changes nothing, a session that never
grows stops reserving, one that outgrows its prediction raises the estimate, bad parameters
are named."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.growth_calibration import MAX_RATIO, GrowthCalibration
from tests.scheduler.helpers import BS, growing_charges, manager, wf


def test_fresh_calibration_is_no_correction():
    c = GrowthCalibration(0.9)
    for phase in ("queued", "admitted"):
        assert c.factor("w", None, phase) == 1.0
        assert c.factor("w", "search", phase) == 1.0


def test_never_growing_stops_reserving_and_outgrowing_raises_the_estimate():
    c = GrowthCalibration(0.9, prior_steps=4.0, window=8)
    c.observe("w", None, "admitted", 0.0, 100.0)
    assert c.factor("w", None, "admitted") == pytest.approx(4 / 5)  # shrunk toward 1.0
    for _ in range(7):
        c.observe("w", None, "admitted", 0.0, 100.0)
    assert c.factor("w", None, "admitted") == pytest.approx(4 / 12)
    assert c.factor("w", None, "queued") == 1.0  # the other phase learned nothing
    for _ in range(8):  # outgrowing 3x: the window forgets the zeros
        c.observe("w", None, "admitted", 300.0, 100.0)
    assert c.factor("w", None, "admitted") == pytest.approx((8 * 3 + 4) / 12)
    assert c.observations("w", None, "admitted") == 8


def test_the_quantile_is_a_high_one_and_ratios_are_capped():
    c = GrowthCalibration(0.9, prior_steps=0.0, window=100)
    for x in range(1, 11):  # ratios 0.1 .. 1.0
        c.observe("w", None, "queued", x * 10.0, 100.0)
    assert c.factor("w", None, "queued") == pytest.approx(0.9)  # 9 of 10 at or below
    c.observe("w", None, "queued", 10.0, 0.0)  # no prediction: no ratio
    c.observe("w", None, "queued", -5.0, 100.0)  # shrank: counts as no growth
    assert c.observations("w", None, "queued") == 11
    d = GrowthCalibration(1.0, prior_steps=0.0)
    d.observe("w", None, "queued", 1e9, 1.0)
    assert d.factor("w", None, "queued") == MAX_RATIO


def test_a_tool_is_shrunk_toward_its_workflow():
    c = GrowthCalibration(0.5, prior_steps=2.0)
    for _ in range(2):
        c.observe("w", "search", "admitted", 0.0, 10.0)
    # the workflow saw the same two zeros: 2 / 4 = 0.5; the tool: (2 x 0 + 2 x 0.5) / 4
    assert c.factor("w", None, "admitted") == pytest.approx(0.5)
    assert c.factor("w", "search", "admitted") == pytest.approx(0.25)
    assert c.factor("w", "fetch", "admitted") == pytest.approx(0.5)  # unseen tool
    assert c.factor("x", "search", "admitted") == 1.0  # another workflow


@pytest.mark.parametrize("kw,match", [
    ({"quantile": 0.0}, "quantile must be in"), ({"quantile": 1.5}, "quantile must be in"),
    ({"quantile": True}, "quantile must be in"),
    ({"quantile": 0.9, "prior_steps": -1.0}, "prior_steps must be"),
    ({"quantile": 0.9, "prior_steps": math.inf}, "prior_steps must be"),
    ({"quantile": 0.9, "window": 0}, "window must be"),
    ({"quantile": 0.9, "window": 2.5}, "window must be")])
def test_bad_calibration_parameters_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        GrowthCalibration(**kw)


def test_unknown_phase_is_named():
    c = GrowthCalibration(0.9)
    with pytest.raises(ValueError, match="phase must be one of queued, admitted"):
        c.factor("w", None, "running")
    with pytest.raises(ValueError, match="phase must be one of"):
        c.observe("w", None, "paused", 1.0, 1.0)


@pytest.mark.parametrize("kw,match", [
    ({"growth_quantile": 1.5}, "growth_quantile must be 0 \\(off\\) or in"),
    ({"growth_quantile": -0.1}, "growth_quantile must be a number >= 0"),
    ({"growth_quantile": "high"}, "growth_quantile must be a number"),
    ({"growth_quantile": 0.9, "growth_prior_steps": -1}, "growth_prior_steps must be"),
    ({"growth_quantile": 0.9, "growth_prior_steps": math.inf}, "growth_prior_steps must be")])
def test_bad_scheduler_parameters_are_named(kw, match):
    with pytest.raises(ValueError, match=match):
        wf(manager(16), **kw)


def _admitted_blocks(steps: int, **kw) -> list[int]:
    """One session whose prompts grow by 16 tokens a step (a tool's observation), of which
    a step itself adds 1 (its output): the working set charged while each step is admitted."""
    return [admitted for _, admitted, _ in growing_charges(steps, paused_growth=False, **kw)]


def test_a_session_that_grows_less_than_charged_stops_reserving():
    """Uncalibrated, each admitted step is charged its prompt + 16 tokens (the growth from
    one finish to the next), though only 1 is still to come; calibrated, the charge falls to
    the prompt + what the steps realized, and a fresh calibration charges as if off."""
    off = _admitted_blocks(12, growth_charge="step")  # the charge it calibrates
    on = _admitted_blocks(12, growth_charge="step", growth_quantile=0.9,
                          growth_prior_steps=0.0)
    shrunk = _admitted_blocks(12, growth_charge="step", growth_quantile=0.9)
    prompts = [20 + 16 * k for k in range(12)]
    assert off[0] == on[0] == shrunk[0]  # nothing observed yet: the same charge
    assert off[-1] == math.ceil((prompts[-1] + 16) / BS)
    assert on[-1] == math.ceil((prompts[-1] + 1) / BS)  # 16 x 1/16: the output only
    assert on[-1] < shrunk[-1] < off[-1]  # the prior keeps part of the charge
