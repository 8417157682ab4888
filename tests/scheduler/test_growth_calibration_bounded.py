"""The growth calibration's tables stay bounded (kvsaga/policy/bounded.py): tool and workflow
names come from clients, and a new name per call must not grow them forever (session 42's
review: a key per (workflow, tool, phase), no bound). New tools do not push out the
workflows' own factors."""

from __future__ import annotations

import pytest

from kvsaga.policy.bounded import TRACKED_KINDS, TRACKED_WORKFLOWS
from kvsaga.scheduler.growth_calibration import PHASES, GrowthCalibration


def test_tool_names_are_bounded_and_keep_the_workflow_factor():
    c = GrowthCalibration(0.9, prior_steps=4.0, window=8)
    c.observe("w", None, "admitted", 0.0, 100.0)
    for i in range(TRACKED_KINDS + 50):
        for phase in PHASES:
            c.observe("w", f"call-{i}", phase, 300.0, 100.0)
    tables = c._ratios | getattr(c, "_tool_ratios", {})
    tool_keys = [k for k in tables if k[1] is not None]
    assert len(tool_keys) == len(PHASES) * TRACKED_KINDS  # the newest tools', both phases
    assert c.observations("w", "call-0", "admitted") == 0  # the stalest forgotten
    assert c.observations("w", f"call-{TRACKED_KINDS + 49}", "admitted") == 1
    # The workflow's own key is kept (its observations: the first, then one per tool call,
    # the last `window` of them).
    assert c.observations("w", None, "admitted") == 8
    # A forgotten tool is predicted as one never seen: its workflow's factor.
    assert c.factor("w", "call-0", "admitted") == c.factor("w", None, "admitted")


def test_workflow_names_are_bounded():
    c = GrowthCalibration(0.9)
    for i in range(TRACKED_WORKFLOWS + 10):
        for phase in PHASES:
            c.observe(f"wf-{i}", None, phase, 50.0, 100.0)
    assert len(c._ratios) == len(PHASES) * TRACKED_WORKFLOWS
    assert c.observations("wf-0", None, "queued") == 0
    assert c.factor("wf-0", None, "queued") == 1.0  # never seen: no correction
    assert c.factor(f"wf-{TRACKED_WORKFLOWS + 9}", None, "queued") == pytest.approx(
        (0.5 + 8.0) / 9)
