"""The session-41 AFS veto calibration (tests/bench/afs_noise_s41.json), which
`policies_check.AFS_CALIBRATION` named until session 43 and which judged no candidate: session
42's fix of the scheduler's idle-admission clock moved its base. History since session 43
(tests/bench/test_afs_noise_s43.py holds today's calibration): these tests pin session 41's
file and thresholds, not the current ones. Session 34's is tested in
tests/bench/test_afs_noise_s34.py, the rule and the older calibrations in
tests/bench/test_afs_noise_veto.py."""

from __future__ import annotations

import math

import pytest

from tests.bench.afs_calibration import (
    NULLS,
    any_rise_rejects,
    calibration,
    checked_calibration,
    goal_cases,
    leave_one_out,
    null_runs,
    save_round_trip,
)
from tests.exits import usage_error


def test_the_session_41_calibration_gives_its_thresholds(veto_mods):
    """Session 41's calibration on the default then (`readmit_charge`
    "room_returns_queue_demoted", round 41, graph's `demoted_release` on, `share_within_cap`
    0.5, the core's corrected tail count, before session 42's scheduler fixes; the base,
    fcfs+lru and 11 null runs, 32 cases each) reproduces the thresholds frozen then
    (0.0224 / 4): the mean threshold is the band (1.645 x the moved cases' rms /
    sqrt(32)), above the largest pair mean (+0.0092, slow3 -> fast3); the goal-loss one is
    the 21 goal cases of fast, slow2 and slow3 against fast3's 17 (the base meets 20). The
    any-rise veto rejects 10 of 11 nulls (all but swap)."""
    pc, _, _ = veto_mods
    base, fcfs, nulls = checked_calibration("afs_noise_s41.json")
    t_mean, t_loss, parts = pc.afs_noise_thresholds(base, nulls, fcfs)
    assert (round(t_mean, 4), t_loss) == (0.0224, 4)
    assert "+0.0092 (slow3 -> fast3)" in parts and "= 0.0224" in parts and "160 moved" in parts
    met = {n: goal_cases(pc, r, fcfs) for n, r in nulls.items()}
    assert goal_cases(pc, base, fcfs) == 20
    assert min(met.values()) == met["fast3"] == 17 and max(met.values()) == 21
    assert any_rise_rejects(base, nulls) == 10
    assert pc.afs_noise_veto(base, base, fcfs, mean_log_max=0.0224, goal_loss_max=4)[0]


def test_the_session_41_base_against_session_34s(veto_mods):
    """Why session 41 recalibrated: 16 of the base's 32 ratios moved (mean d log ratio
    -0.0242: `share_within_cap` 0.5's own veto reading), and one of fcfs+lru's (the core's
    corrected `blocks_to_admit` moves fcfs's admissions too; mean d log ratio +0.0012), so
    the incumbent's rerun no longer reproduced session 34's base; session 34's nulls around
    the new base give 0.0407 / 4, not its own 0.0262 / 4."""
    pc, _, _ = veto_mods
    new, _ = calibration("afs_noise_s41.json")
    old, data = calibration("afs_noise_s34.json")

    def moved(a, b):
        d = [math.log(a[k] / b[k]) for k in b]
        return sum(abs(x) >= pc.AFS_NOISE_MOVED for x in d), round(sum(d) / len(d), 4)
    assert moved(new["base"], old["base"]) == (16, -0.0242)
    assert moved(new["fcfs"], old["fcfs"]) == (1, 0.0012)
    assert goal_cases(pc, old["base"], old["fcfs"]) == 19
    t_mean, t_loss, _ = pc.afs_noise_thresholds(new["base"], null_runs(old, data), new["fcfs"])
    assert (round(t_mean, 4), t_loss) == (0.0407, 4)


def test_leave_one_out_rejects_fast3_only(veto_mods):
    """Each null judged with thresholds from the base and the other nulls only, both ways:
    1 of 22 judgements rejects, fast3 against the base (without fast3 the thresholds are
    0.0203 / 2: fast3 alone sets the goal-loss one)."""
    pc, _, _ = veto_mods
    base, fcfs, nulls = checked_calibration("afs_noise_s41.json")
    assert leave_one_out(pc, base, nulls, fcfs) == [("fast3 against base", 0.0203, 2)]


def test_save_writes_the_committed_file_back(veto_mods, tmp_path, capsys):
    """`save` on the runs gives afs_noise_s41.json byte for byte (the committed file was
    written by it)."""
    _, noise, _ = veto_mods
    about, _, _ = save_round_trip(noise, tmp_path, "afs_noise_s41.json")
    assert "session-41" in about and "share_within_cap 0.5" in about
    assert "wrote 13 runs (32 cases each)" in capsys.readouterr().out


def test_veto_nulls_writes_session_41_and_checks_a_base(veto_mods, tmp_path, capsys,
                                                       monkeypatch):
    """`scheduling_veto_nulls.py OUT_DIR --session 41` writes session 41's runs (s41_*.json;
    the default until session 43); `--check` passes a base rerun equal to its base and fails
    session 34's; `judge` on the written runs, with session 41's thresholds frozen, accepts
    the base against itself and refuses session 34's nulls around their own base (0.0262 /
    4, not the frozen ones)."""
    pc, noise, nulls = veto_mods
    assert 41 in nulls.SESSIONS
    assert nulls.main([str(tmp_path), "--session", "41"]) == 0
    assert (tmp_path / "s41_null_fast3.json").exists()
    capsys.readouterr()
    base = tmp_path / "s41_base.json"
    assert nulls.main([str(tmp_path), "--session", "41", "--check", str(base)]) == 0
    assert "equal to session 41's base" in capsys.readouterr().out
    assert nulls.main([str(tmp_path / "s34"), "--session", "34"]) == 0
    assert nulls.main([str(tmp_path), "--session", "41", "--check",
                       str(tmp_path / "s34" / "s34_base.json")]) == 1
    capsys.readouterr()
    monkeypatch.setattr(pc, "AFS_NOISE_MEAN_LOG", 0.0224)
    monkeypatch.setattr(pc, "AFS_NOISE_GOAL_LOSS", 4)
    runs = [str(tmp_path / f"s41_null_{n}.json") for n in NULLS]
    assert noise.main(["judge", str(base), str(tmp_path / "s41_fcfs.json"), str(base),
                       "--nulls", *runs]) == 0
    assert "the calibrated AFS veto: passes" in capsys.readouterr().out
    old = tmp_path / "s34" / "s34_base.json"
    with pytest.raises(SystemExit) as e:
        noise.main(["judge", str(old), str(tmp_path / "s34" / "s34_fcfs.json"), str(old),
                    "--nulls", *[str(tmp_path / "s34" / f"s34_null_{n}.json") for n in NULLS]])
    assert "not the frozen 0.0224 / 4" in usage_error(e, capsys)
