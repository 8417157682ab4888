"""bench/serve_scheduler_replay.py: kvsaga's scheduler on the live replay's workload, on a
simulated clock (the step cost, the hints it sends, the demotion trace, bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.bench_scripts import load_bench


def _mod():
    return load_bench("serve_scheduler_replay")


def test_a_step_costs_its_fixed_part_and_a_part_per_token():
    m = _mod()
    args = m.build_parser().parse_args(["--step-s", "0.5", "--token-s", "0.01"])
    cost = m.linear_cost(args)
    assert cost.block_size == 32
    assert cost._step_time(100, 0, 0, 3, 0) == pytest.approx(0.5 + 0.01 * 103)
    assert cost._step_time(0, 0, 0, 0, 0) == 0.0
    runs = cost.decode_step_times(4, np.array([10, 20]))
    assert runs.tolist() == pytest.approx([0.5 + 0.04] * 2)


def test_the_replay_sends_each_steps_median_hint_and_traces_demotions(tmp_path: Path,
                                                                        capsys):
    """Seed 0 (a connector fit seed) with the defaults: every step runs once, the hints
    reach the manager as the replay's `expected_s`, and the shrink's demotions are traced
    with the pause they came after."""
    m = _mod()
    args = m.build_parser().parse_args(["--seeds", "0"])
    sessions, hints, blocks = m.replay_sessions(args, 0)
    r = m.run_seed(args, 0, {})
    begins = [e for e in r["events"] if e["what"] == "begin"]
    assert len({(e["sid"], e["k"]) for e in begins}) == sum(len(s.steps) for s in sessions)
    assert r["blocks"] == blocks and r["prefill_tokens"] > 0 and r["tct_mean_s"] > 0
    demoted = [e for e in r["events"] if e["what"] == "demoted"]
    assert len(demoted) == r["demotions"] > 0
    assert all(e["why"] == "_shrink" and e["paused_s"] >= 0 for e in demoted)
    seen = r["manager_hints"]  # read from the manager's sessions after each finish
    assert len(seen) >= len(hints) // 2 and any(v is not None for v in seen.values())
    assert seen == {key: hints[key] for key in seen}
    out = tmp_path / "rows.json"
    assert m.main(["--seeds", "0", "--fit-seeds", "--trace", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "DEMOTED" in text and "seed 0:" in text
    assert json.loads(out.read_text())[0]["prefill_tokens"] == r["prefill_tokens"]


def test_params_reach_the_scheduler():
    m = _mod()
    args = m.build_parser().parse_args(["--seeds", "3"])
    r = m.run_seed(args, 3, {"undo_demotion": True})
    assert r["undone"] > 0  # seed 3: some demoted sessions come back with their blocks


@pytest.mark.parametrize("argv,message", [
    (["--params", "[1]"], "--params must be a JSON object"),
    (["--params", "{x"], "--params is not JSON"),
    (["--reply-tokens", "8"], "--reply-tokens is not supported")])
def test_bad_input_is_named(argv, message):
    with pytest.raises(SystemExit, match=message):
        _mod().main(argv)
