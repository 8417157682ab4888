"""The session-43 AFS veto calibration (tests/bench/afs_noise_s43.json), the one
`policies_check.AFS_CALIBRATION` names and `scheduling_veto_nulls.py` writes by default.
Session 41's (the same default before session 42's scheduler fixes) is tested as history in
tests/bench/test_afs_noise_s41.py, the rule and the older calibrations in
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
    recalibrated,
    save_round_trip,
)
from tests.exits import usage_error


def test_the_session_43_calibration_gives_the_frozen_thresholds(veto_mods):
    """Session 43's calibration on today's default (`readmit_charge`
    "room_returns_queue_demoted", round 41, graph's `demoted_release` on, `share_within_cap`
    0.5, after session 42's scheduler fixes; the base, fcfs+lru and 11 null runs, 32 cases
    each) is the one `policies_check.AFS_CALIBRATION` names and reproduces the frozen
    thresholds exactly (0.0231 / 5): the mean threshold is the band (1.645 x the moved
    cases' rms / sqrt(32)), above the largest pair mean (+0.0185, fast2 -> slow); the
    goal-loss one is the 21 goal cases of slow2 and slow3 against fast3's 16 (the base meets
    19). The any-rise veto rejects 10 of 11 nulls (all but swap)."""
    pc, _, _ = veto_mods
    assert pc.AFS_CALIBRATION.name == "afs_noise_s43.json"
    base, fcfs, nulls = checked_calibration("afs_noise_s43.json")
    t_mean, t_loss, parts = pc.afs_noise_thresholds(base, nulls, fcfs)
    assert (round(t_mean, 4), t_loss) == (pc.AFS_NOISE_MEAN_LOG, pc.AFS_NOISE_GOAL_LOSS)
    assert (round(t_mean, 4), t_loss) == (0.0231, 5)
    assert "+0.0185 (fast2 -> slow)" in parts and "= 0.0231" in parts and "160 moved" in parts
    met = {n: goal_cases(pc, r, fcfs) for n, r in nulls.items()}
    assert goal_cases(pc, base, fcfs) == 19
    assert min(met.values()) == met["fast3"] == 16
    assert max(met.values()) == met["slow2"] == met["slow3"] == 21
    assert any_rise_rejects(base, nulls) == 10
    assert pc.afs_noise_veto(base, base, fcfs)[0]
    assert pc.saved_calibration()[0] == base


def test_the_session_43_base_against_session_41s(veto_mods):
    """Why session 43 recalibrated: session 42 fixed the scheduler's idle-admission clock,
    which moved 17 of the base's 32 ratios (mean d log ratio +0.0053; goal cases 20 -> 19,
    noisy seed 106 25% lost) while fcfs+lru's stayed session 41's exactly, so the
    incumbent's rerun no longer reproduced session 41's base and `policies_check` refused to
    judge. Session 41's nulls around the new base give 0.0319 / 4, not its own 0.0224 / 4."""
    pc, _, _ = veto_mods
    assert recalibrated(pc, "afs_noise_s43.json", "afs_noise_s41.json") == (
        17, 0.0053, 20, (0.0319, 4))
    new, _ = calibration("afs_noise_s43.json")
    old, _ = calibration("afs_noise_s41.json")
    lost = [k for k in old["base"] if pc.goal_met(old["base"][k], old["fcfs"][k])
            and not pc.goal_met(new["base"][k], new["fcfs"][k])]
    won = [k for k in old["base"] if not pc.goal_met(old["base"][k], old["fcfs"][k])
           and pc.goal_met(new["base"][k], new["fcfs"][k])]
    assert (lost, won) == ([("noisy", 106, 0.25)], [])
    assert math.log(new["base"][lost[0]] / old["base"][lost[0]]) == pytest.approx(0.3165,
                                                                                abs=5e-5)


def test_leave_one_out_rejects_fast3_only(veto_mods):
    """Each null judged with thresholds from the base and the other nulls only, both ways:
    1 of 22 judgements rejects, fast3 against the base (without fast3 the thresholds are
    0.0216 / 2: fast3 alone sets the goal-loss one, as in sessions 34 and 41)."""
    pc, _, _ = veto_mods
    base, fcfs, nulls = checked_calibration("afs_noise_s43.json")
    assert leave_one_out(pc, base, nulls, fcfs) == [("fast3 against base", 0.0216, 2)]


def test_save_writes_the_committed_file_back(veto_mods, tmp_path, capsys):
    """`save` on the runs gives afs_noise_s43.json byte for byte (the committed file was
    written by it)."""
    _, noise, _ = veto_mods
    about, _, _ = save_round_trip(noise, tmp_path, "afs_noise_s43.json")
    assert "session-43" in about and "idle admission's clock" in about
    assert "wrote 13 runs (32 cases each)" in capsys.readouterr().out


def test_veto_nulls_writes_session_43_by_default_and_checks_a_base(veto_mods, tmp_path, capsys):
    """`scheduling_veto_nulls.py OUT_DIR` writes session 43's runs (s43_*.json); `--check`
    passes a base rerun equal to its base and fails session 41's; `judge` on the written
    runs accepts the base against itself under the frozen thresholds and refuses session
    41's nulls around their own base (0.0224 / 4, not the frozen ones)."""
    _, noise, nulls = veto_mods
    assert nulls.SESSIONS == (43, 41, 34, 33, 32, 26)
    assert nulls.main([str(tmp_path)]) == 0
    assert (tmp_path / "s43_null_fast3.json").exists()
    capsys.readouterr()
    base = tmp_path / "s43_base.json"
    assert nulls.main([str(tmp_path), "--check", str(base)]) == 0
    assert "equal to session 43's base" in capsys.readouterr().out
    assert nulls.main([str(tmp_path / "s41"), "--session", "41"]) == 0
    assert nulls.main([str(tmp_path), "--check", str(tmp_path / "s41" / "s41_base.json")]) == 1
    capsys.readouterr()
    runs = [str(tmp_path / f"s43_null_{n}.json") for n in NULLS]
    assert noise.main(["judge", str(base), str(tmp_path / "s43_fcfs.json"), str(base),
                       "--nulls", *runs]) == 0
    assert "the calibrated AFS veto: passes" in capsys.readouterr().out
    old = tmp_path / "s41" / "s41_base.json"
    with pytest.raises(SystemExit) as e:
        noise.main(["judge", str(old), str(tmp_path / "s41" / "s41_fcfs.json"), str(old),
                    "--nulls", *[str(tmp_path / "s41" / f"s41_null_{n}.json") for n in NULLS]])
    assert "not the frozen 0.0231 / 5" in usage_error(e, capsys)
