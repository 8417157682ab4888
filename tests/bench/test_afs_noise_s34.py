"""The session-34 AFS veto calibration (tests/bench/afs_noise_s34.json), which
`policies_check.AFS_CALIBRATION` named until session 41 and which judged session 41's
`share_within_cap`. History since session 41 (tests/bench/test_afs_noise_s43.py holds today's
calibration): these tests pin session 34's file and thresholds, not the current ones.
Session 33's is tested in tests/bench/test_afs_noise_s33.py, the rule and the older
calibrations in tests/bench/test_afs_noise_veto.py."""

from __future__ import annotations

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


def test_the_session_34_calibration_gives_its_thresholds(veto_mods):
    """Session 34's calibration on the default then (`readmit_charge`
    "room_returns_queue_demoted", round 41, graph's `demoted_release` on, `share_within_cap`
    0; the base, fcfs+lru and 11 null runs, 32 cases each) reproduces the thresholds frozen
    then (0.0262 / 4): the mean threshold is the largest pair mean (slow2 -> fast3), above
    the band (0.0214); the goal-loss one is fast's 20 goal cases against fast3's 16 (the base
    meets 19). The any-rise veto rejects 8 of 11 nulls."""
    pc, _, _ = veto_mods
    base, fcfs, nulls = checked_calibration("afs_noise_s34.json")
    t_mean, t_loss, parts = pc.afs_noise_thresholds(base, nulls, fcfs)
    assert (round(t_mean, 4), t_loss) == (0.0262, 4)
    assert "(slow2 -> fast3)" in parts and "= 0.0214" in parts and "155 moved" in parts
    met = {n: goal_cases(pc, r, fcfs) for n, r in nulls.items()}
    assert goal_cases(pc, base, fcfs) == 19
    assert min(met.values()) == met["fast3"] == 16 and max(met.values()) == met["fast"] == 20
    assert any_rise_rejects(base, nulls) == 8
    assert pc.afs_noise_veto(base, base, fcfs, mean_log_max=0.0262, goal_loss_max=4)[0]


def test_the_session_34_base_against_session_33s(veto_mods):
    """Why session 34 recalibrated: fcfs+lru's ratios are session 33's exactly (no workflow
    default moves them), but 27 of the base's 32 moved under round 41's default (mean d log
    ratio +0.0099, goal cases 19 -> 19: round 41's own AFS veto reading), so the incumbent's
    rerun no longer reproduced session 33's base. Session 33's nulls around the new base give
    session 33's thresholds (0.0317 / 4); the new nulls give 0.0262 / 4."""
    pc, _, _ = veto_mods
    assert recalibrated(pc, "afs_noise_s34.json", "afs_noise_s33.json") == (
        27, 0.0099, 19, (0.0317, 4))


def test_leave_one_out_rejects_fast3_only(veto_mods):
    """Each null judged with thresholds from the base and the other nulls only, both ways:
    1 of 22 judgements rejects, fast3 against the base (without fast3 the thresholds are
    0.0174 / 2: fast3 alone sets both frozen ones)."""
    pc, _, _ = veto_mods
    base, fcfs, nulls = checked_calibration("afs_noise_s34.json")
    assert leave_one_out(pc, base, nulls, fcfs) == [("fast3 against base", 0.0174, 2)]


def test_save_writes_the_committed_file_back(veto_mods, tmp_path, capsys):
    """`save` on the runs gives afs_noise_s34.json byte for byte (the committed file was
    written by it)."""
    _, noise, _ = veto_mods
    about, _, _ = save_round_trip(noise, tmp_path, "afs_noise_s34.json")
    assert "session-34" in about and "room_returns_queue_demoted" in about
    assert "wrote 13 runs (32 cases each)" in capsys.readouterr().out


def test_veto_nulls_writes_session_34_and_checks_a_base(veto_mods, tmp_path, capsys,
                                                       monkeypatch):
    """`scheduling_veto_nulls.py OUT_DIR --session 34` writes session 34's runs (s34_*.json;
    the default until session 41); `--check` passes a base rerun equal to its base and fails
    session 33's; `judge` on the written runs, with session 34's thresholds frozen, accepts
    the base against itself and refuses session 33's nulls (they give 0.0317 / 4 around its
    own base, not the frozen ones)."""
    pc, noise, nulls = veto_mods
    assert 34 in nulls.SESSIONS
    assert nulls.main([str(tmp_path), "--session", "34"]) == 0
    assert (tmp_path / "s34_null_fast3.json").exists()
    capsys.readouterr()
    base = tmp_path / "s34_base.json"
    assert nulls.main([str(tmp_path), "--session", "34", "--check", str(base)]) == 0
    assert "equal to session 34's base" in capsys.readouterr().out
    assert nulls.main([str(tmp_path / "s33"), "--session", "33"]) == 0
    assert nulls.main([str(tmp_path), "--session", "34", "--check",
                       str(tmp_path / "s33" / "s33_base.json")]) == 1
    capsys.readouterr()
    monkeypatch.setattr(pc, "AFS_NOISE_MEAN_LOG", 0.0262)
    monkeypatch.setattr(pc, "AFS_NOISE_GOAL_LOSS", 4)
    runs = [str(tmp_path / f"s34_null_{n}.json") for n in NULLS]
    assert noise.main(["judge", str(base), str(tmp_path / "s34_fcfs.json"), str(base),
                       "--nulls", *runs]) == 0
    assert "the calibrated AFS veto: passes" in capsys.readouterr().out
    old = tmp_path / "s33" / "s33_base.json"
    with pytest.raises(SystemExit) as e:
        noise.main(["judge", str(old), str(tmp_path / "s34_fcfs.json"), str(old), "--nulls",
                    *[str(tmp_path / "s33" / f"s33_null_{n}.json") for n in NULLS]])
    assert "not the frozen 0.0262 / 4" in usage_error(e, capsys)
