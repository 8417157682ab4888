"""The working-set rule that the `workflow` scheduler and the vLLM session gate share."""

from __future__ import annotations

from kvsaga.scheduler.working_set import GrowthTable, demote_deadline, shrink, working_set_blocks


def test_working_set_rule_shared_by_scheduler_and_gate():
    """The working-set pieces: an EMA after 1 / alpha observations, blocks rounded up, the
    demotion deadline, and shrink demoting paused sessions in the given order, keeping one."""
    g = GrowthTable(prior=10.0, alpha=0.5)
    assert g.mean("w") == 10.0
    g.observe("w", 4.0)
    assert g.mean("w") == 4.0  # the first observation replaces the prior
    g.observe("w", 8.0)
    g.observe("w", 16.0)
    assert g.mean("w") == 11.0  # EMA with weight 1/2 after 2 observations: 6 -> 11
    assert working_set_blocks(5, 1.0, 3.5, 4) == 3  # 8.5 tokens -> 3 blocks
    assert working_set_blocks(-3, 0.0, 9.0, 4) == 0
    assert demote_deadline(100.0, 5.0, 4.0, 10.0) == 130.0
    sessions = {"a": (5, True), "b": (5, True), "c": (5, False), "d": (5, True)}
    committed = [20]  # blocks; "c" is running (not paused)

    def demote(sid):
        committed[0] -= sessions.pop(sid)[0]

    out = shrink(sessions, ["d", "c", "b", "a"], lambda: committed[0] > 8, lambda s: s[1],
                 demote)
    assert out == ["d", "b", "a"] and list(sessions) == ["c"] and committed[0] == 5
    assert shrink({"a": (9, True)}, ["a"], lambda: True, lambda s: s[1], demote) == []


def test_growth_is_learned_per_tool_and_falls_back_to_the_workflow():
    """The growth after a pause on a tool is that tool's mean once observed (a fetch adds
    more than a search); else the workflow's; the first horizon step uses it."""
    g = GrowthTable(prior=10.0, alpha=1.0)
    g.observe("w", 4.0, tool="search")
    g.observe("w", 20.0, tool="fetch")
    assert (g.mean("w", "search"), g.mean("w", "fetch"), g.mean("w")) == (4.0, 20.0, 20.0)
    assert g.mean("w", "unseen") == 20.0 and g.mean("x", "search") == 10.0
    assert working_set_blocks(8, 2.0, 4.0, 4, first_growth_tokens=12.0) == 6  # 8 + 12 + 4
    assert working_set_blocks(8, 0.5, 4.0, 4, first_growth_tokens=12.0) == 4  # 8 + 6
    assert working_set_blocks(8, 0.5, 4.0, 4) == 3  # 8 + 2
