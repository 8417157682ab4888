"""The session-33 AFS veto calibration (tests/bench/afs_noise_s33.json) and the tools that
write and read it: `bench/scheduling_veto_noise.py save` and `bench/scheduling_veto_nulls.py`.
The rule and the older calibrations are tested in tests/bench/test_afs_noise_veto.py.
History since session 34 (tests/bench/test_afs_noise_s43.py holds today's calibration): these
tests pin session 33's file and thresholds, not the current ones."""

from __future__ import annotations

import json

import pytest

from tests.bench.afs_calibration import (
    NULLS,
    any_rise_rejects,
    checked_calibration,
    goal_cases,
    leave_one_out,
    recalibrated,
    save_round_trip,
)
from tests.exits import usage_error


def test_the_session_33_calibration_gives_the_frozen_thresholds(veto_mods):
    """Session 33's calibration on the default then (`readmit_charge` "room_returns_queue",
    graph's `demoted_release` on; the base, fcfs+lru and 11 null runs, 32 cases each), which
    `policies_check.AFS_CALIBRATION` named until session 34, reproduces the thresholds frozen
    then (0.0317 / 4): the mean threshold is the largest pair mean (fast -> slow3), above the
    band (0.0225); the goal-loss one is the base's 19 goal cases against slow3's 15."""
    pc, _, _ = veto_mods
    base, fcfs, nulls = checked_calibration("afs_noise_s33.json")
    t_mean, t_loss, parts = pc.afs_noise_thresholds(base, nulls, fcfs)
    assert (round(t_mean, 4), t_loss) == (0.0317, 4)
    assert "(fast -> slow3)" in parts and "= 0.0225" in parts and "150 moved" in parts
    met = {n: goal_cases(pc, r, fcfs) for n, r in nulls.items()}
    assert goal_cases(pc, base, fcfs) == 19
    assert min(met.values()) == met["slow3"] == 15
    assert any_rise_rejects(base, nulls) == 8
    assert pc.afs_noise_veto(base, base, fcfs, mean_log_max=0.0317, goal_loss_max=4)[0]


def test_the_session_33_base_against_session_32s(veto_mods):
    """Why session 33 recalibrated: fcfs+lru's ratios are session 32's exactly (no workflow
    default moves them), but every one of the base's 32 moved (mean d log ratio -0.0188, goal
    cases 16 -> 19), and session 32's nulls around the new base give other thresholds (0.0452
    / 4), so `judge` with them refused."""
    pc, _, _ = veto_mods
    assert recalibrated(pc, "afs_noise_s33.json", "afs_noise_s32.json") == (
        32, -0.0188, 16, (0.0452, 4))


def test_leave_one_out_rejects_slow3_only(veto_mods):
    """Each null judged with thresholds from the base and the other nulls only, both ways:
    1 of 22 judgements rejects, slow3 against the base (without slow3 the thresholds are
    0.0221 / 2: slow3 alone sets both frozen ones)."""
    pc, _, _ = veto_mods
    base, fcfs, nulls = checked_calibration("afs_noise_s33.json")
    assert leave_one_out(pc, base, nulls, fcfs) == [("slow3 against base", 0.0221, 2)]



def test_save_writes_the_committed_file_back(veto_mods, tmp_path, capsys):
    """`save` on the runs gives afs_noise_s33.json byte for byte (the committed file was
    written by it); it refuses a null run twice and runs whose cases differ."""
    _, noise, _ = veto_mods
    _, p, args = save_round_trip(noise, tmp_path, "afs_noise_s33.json")
    out = tmp_path / "out.json"
    assert "wrote 13 runs (32 cases each)" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        noise.main(["save", str(out), *args, str(p["null_swap"]), "--about", "x"])
    assert "same null" in usage_error(e, capsys)
    short = json.loads(p["null_slow"].read_text())
    short["rows"] = short["rows"][1:]
    p["null_slow"].write_text(json.dumps(short))
    with pytest.raises(SystemExit) as e:
        noise.main(["save", str(out), *args, "--about", "x"])
    assert "same cases" in usage_error(e, capsys)


def test_veto_nulls_writes_session_33_and_checks_a_base(veto_mods, tmp_path, capsys,
                                                       monkeypatch):
    """`scheduling_veto_nulls.py OUT_DIR --session 33` writes session 33's runs (s33_*.json;
    the default until session 34); `--check` passes a base rerun equal to its base and fails
    one that is not; `judge` on the written runs, with session 33's thresholds frozen,
    accepts the base against itself."""
    pc, noise, nulls = veto_mods
    assert 33 in nulls.SESSIONS
    assert nulls.main([str(tmp_path), "--session", "33"]) == 0
    assert (tmp_path / "s33_null_slow3.json").exists()
    capsys.readouterr()
    base = tmp_path / "s33_base.json"
    assert nulls.main([str(tmp_path), "--session", "33", "--check", str(base)]) == 0
    assert "equal to session 33's base" in capsys.readouterr().out
    other = tmp_path / "s32" / "s32_base.json"
    assert nulls.main([str(tmp_path / "s32"), "--session", "32"]) == 0
    assert nulls.main([str(tmp_path), "--session", "33", "--check", str(other)]) == 1
    capsys.readouterr()
    monkeypatch.setattr(pc, "AFS_NOISE_MEAN_LOG", 0.0317)
    monkeypatch.setattr(pc, "AFS_NOISE_GOAL_LOSS", 4)
    runs = [str(tmp_path / f"s33_null_{n}.json") for n in NULLS]
    assert noise.main(["judge", str(base), str(tmp_path / "s33_fcfs.json"), str(base),
                       "--nulls", *runs]) == 0
    assert "the calibrated AFS veto: passes" in capsys.readouterr().out
