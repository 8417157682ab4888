"""`bench/scheduling_veto_noise.py compare`: the block RESULTS cites for how session 43's
calibration base stands against session 41's, from the two committed files alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.exits import usage_error

HERE = Path(__file__).resolve().parent


def test_compare_s41_against_s43_prints_the_cited_figures(veto_mods, capsys):
    """Session 42's idle-clock fix moved 17 of the base's 32 ratios, 7 higher and 6 lower at
    two decimals, goal cases 20 -> 19; session 41's nulls give 0.0319 / 4 around the new
    base and its own veto (0.0224 / 4) passes the move (bench/RESULTS.md)."""
    _, noise, _ = veto_mods
    assert noise.main(["compare", str(HERE / "afs_noise_s41.json"),
                       str(HERE / "afs_noise_s43.json")]) == 0
    out = capsys.readouterr().out
    assert "17 of 32 ratios moved" in out
    assert "higher / lower at 2 decimals: 7 / 6" in out
    assert "goal cases 20 -> 19" in out
    assert "fcfs+lru's 32 ratios equal the old ones: True" in out
    assert "noisy seed 106 25%: 1.2348 -> 1.6945 (+0.3165)" in out
    assert "give thresholds 0.0319 / 4" in out and "under the old thresholds 0.0224 / 4" in out
    assert "goal met -> missed: 1: noisy seed 106 25%; missed -> met: 0: -" in out


def test_compare_refuses_a_missing_file(veto_mods, tmp_path, capsys):
    _, noise, _ = veto_mods
    with pytest.raises(SystemExit) as e:
        noise.main(["compare", str(tmp_path / "nope.json"), str(HERE / "afs_noise_s43.json")])
    assert f"No such file or directory: '{tmp_path / 'nope.json'}'" in usage_error(e, capsys)
