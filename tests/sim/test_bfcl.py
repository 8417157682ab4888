"""The BFCL v4 trace conversion, on an entry written here in BFCL's format (no package)."""

from __future__ import annotations

import numpy as np
import pytest

from kvsaga.sim.bfcl import ANSWER_TOKENS, RESULT_TOKENS, bfcl_trace, entry_steps

ENTRY = {
    "id": "multi_turn_base_x",
    "question": [[{"role": "user", "content": "x" * 40}], [{"role": "user", "content": "y" * 8}]],
    "initial_config": {"GorillaFileSystem": {"root": {"a": "z" * 400}}},
    "involved_classes": ["GorillaFileSystem"],
}
CALLS = [["cd(folder='document')", "mkdir(dir_name='temp')"], []]


def test_each_call_is_a_step_and_each_turn_ends_with_an_answer():
    steps = entry_steps(ENTRY, CALLS, np.random.default_rng(0), long_context=False)
    assert [s[2] for s in steps] == ["cd", "mkdir", "user", None]
    assert steps[0][0] == 10  # the first user message: 40 characters / 4
    assert steps[1][0] == RESULT_TOKENS  # the cd's result
    assert steps[2][1] == ANSWER_TOKENS and steps[2][3] > 0  # the user thinks
    assert steps[3][0] == 2 and steps[3][3] == 0.0  # the second turn answers at once
    assert all(s[3] > 0 for s in steps[:2])


def test_long_context_results_carry_part_of_the_environment():
    short = entry_steps(ENTRY, CALLS, np.random.default_rng(0), long_context=False)
    long = entry_steps(ENTRY, CALLS, np.random.default_rng(0), long_context=True)
    assert long[1][0] > short[1][0]


def test_trace_from_the_installed_package():
    pytest.importorskip("bfcl_eval")
    tr = bfcl_trace(20, seed=3, arrival_rate=0.5, scale=0.5)
    assert len(tr) == 20 and len({s.id for s in tr}) == 20
    assert all(s.steps[-1].tool is None and s.shared_prefix.tokens > 0 for s in tr)
    assert tr == bfcl_trace(20, seed=3, arrival_rate=0.5, scale=0.5)
