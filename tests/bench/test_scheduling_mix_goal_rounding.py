"""The noisy-neighbour goal line of bench/scheduling_mix.py says the rule it applies: it
judges the unrounded ratios (<= 1.5 and below fcfs+lru's) and prints a ratio that sits within
0.005 of 1.5, or that two decimals would print equal to fcfs+lru's, to 3 decimals. Before,
1.5049 printed as 1.50 beside "missed", and 1.436 against fcfs+lru's 1.444 printed as 1.44
against 1.44 beside "met" (review repro r5: bench/policies_check.goal_met, the calibrated
veto's count, rounds first and judges both the other way; that rounding stays, documented)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import policies_check as pc  # noqa: E402
import scheduling_mix as sm  # noqa: E402
from scheduling import DEFAULT  # noqa: E402


def _row(label: str, seed: int, ratio: float) -> dict:
    sched, policy = label.split("+")
    return {"family": "noisy", "seed": seed, "frac": 0.5, "scheduler": sched,
            "policy": policy, "params": None, "afs_max_slowdown_ratio": ratio,
            "tenants": {"a": {"slowdown": 1.0, "tct_alone_s": 10.0, "tct_mean_s": 10.0},
                        "b": {"slowdown": ratio, "tct_alone_s": 10.0,
                              "tct_mean_s": 10.0 * ratio}}}


@pytest.fixture(autouse=True)
def _no_solo_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sm, "tenant_solo", lambda name, seed: {"a": 5.0, "b": 5.0})


@pytest.mark.parametrize(("ratio", "fcfs", "met", "shown"), [
    (1.5049, 2.0, False, "1.505"),  # prints 1.50 at two decimals: looked met
    (1.436, 1.444, True, "1.436"),  # 1.44 against 1.44 at two decimals: looked not below
    (1.30, 2.0, True, "1.30"),
    (1.62, 1.61, False, "1.62"),
])
def test_goal_line_judges_and_prints_unrounded(ratio: float, fcfs: float, met: bool,
                                               shown: str) -> None:
    at = [_row("fcfs+lru", 2, fcfs), _row(DEFAULT, 2, ratio)]
    line = sm._noisy_line(at, 0.5, DEFAULT, (2,))
    assert "judged on the unrounded ratios" in line
    assert f": {'met' if met else 'missed'}; " in line
    assert f"{DEFAULT} {shown} (" in line
    assert sm.noisy_goal_met(ratio, fcfs) is met


def test_the_veto_count_keeps_its_two_decimals() -> None:
    """The calibrated veto's goal count rounds first, on purpose (its frozen calibration
    counted so): the r5 cases come out the other way there, and say so in its docstring."""
    assert pc.goal_met(1.5049, 2.0) and not sm.noisy_goal_met(1.5049, 2.0)
    assert not pc.goal_met(1.436, 1.444) and sm.noisy_goal_met(1.436, 1.444)
    assert "on purpose" in pc.goal_met.__doc__
