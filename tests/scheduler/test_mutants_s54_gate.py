"""Session 54 mutation review of the `workflow` scheduler's working-set gate
(kvsaga/scheduler/working_set_gate.py; /work/lanes/findings/s54/mutsched2.md): tests that
kill hand mutants the suite let survive: the growth predicted near a session's expected end
(`_growth_tokens`)."""

from __future__ import annotations

from tests.scheduler.helpers import manager, wf


def test_a_session_past_its_expected_length_is_predicted_one_steps_growth():
    """The Agent Execution Graph shortens the growth's horizon to the steps a session is
    expected to have left, but never below one step: a session of "w" (10 steps expected,
    the graph's prior) that has done 10 or 12 steps still grows by one step's mean (8
    tokens, the prior), not by none or a negative amount; with 6 done, 4 steps' worth."""
    m = manager(16, policy="graph")
    s = wf(m, horizon_steps=4.0)
    assert s._graph().mean_steps("w") == 10.0
    assert [s._growth_tokens("w", done, None) for done in (0, 6, 9, 10, 12)] == [
        32.0, 32.0, 8.0, 8.0, 8.0]
