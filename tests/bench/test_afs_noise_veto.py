"""The calibrated AFS veto (bench/policies_check.py `afs_noise_veto`, its thresholds
`afs_noise_thresholds`) and bench/scheduling_veto_noise.py's null perturbations."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.bench.afs_calibration import (
    any_rise_rejects,
    calibration,
    goal_cases,
    null_runs,
)
from tests.exits import usage_error


def test_goal_met_reads_two_decimals_and_fcfs(veto_mods):
    pc, _, _ = veto_mods
    assert pc.goal_met(1.5049, 2.0)  # prints 1.50
    assert not pc.goal_met(1.5051, 2.0)  # prints 1.51
    assert not pc.goal_met(1.20, 1.201)  # equal to fcfs+lru's as printed: not below it
    assert pc.goal_met(1.20, 1.206)


CASES = [("mix", 102, 1.0), ("mix", 102, 0.5), ("noisy", 102, 0.5), ("noisy", 102, 0.25)]
BASE = dict(zip(CASES, (1.56, 1.40, 1.49, 1.21), strict=True))
FCFS = dict(zip(CASES, (1.20, 1.90, 3.00, 3.30), strict=True))  # mix 100% never met


def test_thresholds_from_every_ordered_pair_and_the_band(veto_mods):
    pc, _, _ = veto_mods
    e = math.exp
    # null "n1" moves two cases by +-0.1 (rms 0.1); "n2" moves one by -0.2 and one by
    # 1e-5 (below AFS_NOISE_MOVED) and loses noisy 50% (1.49 -> 1.49 * e(0.02) = 1.52)
    n1 = {**BASE, CASES[0]: BASE[CASES[0]] * e(0.1), CASES[1]: BASE[CASES[1]] * e(-0.1)}
    n2 = {**BASE, CASES[3]: BASE[CASES[3]] * e(-0.2), CASES[0]: BASE[CASES[0]] * e(1e-5),
          CASES[2]: BASE[CASES[2]] * e(0.02)}
    t_mean, t_loss, parts = pc.afs_noise_thresholds(BASE, {"n1": n1, "n2": n2}, FCFS)
    s = math.sqrt((0.01 + 0.01 + 0.04 + 0.02 ** 2) / 4)
    band = pc.AFS_NOISE_Z * s / 2
    # the largest pair mean, n2 -> n1 ((0.1 - 1e-5) - 0.1 + 0.2 - 0.02) / 4 = 0.045, is
    # below the band of 4 cases
    assert t_mean == pytest.approx(band) and band > 0.045
    assert "(n2 -> n1)" in parts and "+0.0450" in parts and "4 moved cases" in parts
    assert t_loss == 1  # base -> n2 and n1 -> n2 lose noisy 50%; the reverse wins it back
    # every case up 0.3: base -> up's mean 0.3 beats the band 1.645 x 0.3 / 2
    up = {k: v * e(0.3) for k, v in BASE.items()}
    assert pc.afs_noise_thresholds(BASE, {"up": up}, FCFS)[0] == pytest.approx(0.3)
    # a null equal to the base: no pair mean above 0 nor loss; the threshold is the band, 0
    assert pc.afs_noise_thresholds(BASE, {"same": dict(BASE)}, FCFS)[:2] == (0.0, 0)
    with pytest.raises(ValueError, match="one or more null"):
        pc.afs_noise_thresholds(BASE, {}, FCFS)
    with pytest.raises(ValueError, match="same cases"):
        pc.afs_noise_thresholds(BASE, {"n": dict(list(BASE.items())[:3])}, FCFS)
    with pytest.raises(ValueError, match="not a finite number"):
        pc.afs_noise_thresholds(BASE, {"n": {**BASE, CASES[0]: 0.0}}, FCFS)


def test_veto_passes_small_rises_the_old_veto_rejects(veto_mods):
    pc, _, _ = veto_mods
    cand = {k: v * 1.004 for k, v in BASE.items()}  # every ratio up at two decimals
    old = pc.afs_veto([{"scheduler": "workflow", "policy": p, "family": k[0], "seed": k[1],
                        "frac": k[2], "afs_max_slowdown_ratio": r[k]}
                       for p, r in (("old", BASE), ("new", cand)) for k in CASES], "new", "old")
    assert len(old[0]) == 3  # the old veto rejects (1.56, 1.40, 1.21 print higher)
    ok, lines = pc.afs_noise_veto(BASE, cand, FCFS, mean_log_max=0.01, goal_loss_max=0)
    assert ok and lines[-1] == "the calibrated AFS veto: passes"


def test_veto_fails_on_mean_shift_and_on_goal_loss(veto_mods):
    pc, _, _ = veto_mods
    up = {k: v * 1.05 for k, v in BASE.items()}
    ok, lines = pc.afs_noise_veto(BASE, up, FCFS, mean_log_max=0.04, goal_loss_max=5)
    assert not ok and lines[0].endswith("fails") and lines[1].endswith("passes")
    # one case crosses the goal (1.49 -> 1.52) while the mean falls: fails at 0, passes at 1
    cross = {**BASE, ("noisy", 102, 0.5): 1.52, ("noisy", 102, 0.25): 1.0}
    ok, lines = pc.afs_noise_veto(BASE, cross, FCFS, mean_log_max=0.0, goal_loss_max=0)
    assert not ok and "3 -> 2" in lines[1] and lines[0].endswith("passes")
    assert pc.afs_noise_veto(BASE, cross, FCFS, mean_log_max=0.0, goal_loss_max=1)[0]


def test_veto_refuses_bad_input(veto_mods, monkeypatch):
    pc, _, _ = veto_mods
    with pytest.raises(ValueError, match="same cases"):
        pc.afs_noise_veto(BASE, dict(list(BASE.items())[:3]), FCFS, mean_log_max=0.1,
                          goal_loss_max=0)
    with pytest.raises(ValueError, match="candidate's ratio"):
        pc.afs_noise_veto(BASE, {**BASE, CASES[0]: math.inf}, FCFS, mean_log_max=0.1,
                          goal_loss_max=0)
    monkeypatch.setattr(pc, "AFS_NOISE_MEAN_LOG", None)
    with pytest.raises(ValueError, match="no thresholds"):
        pc.afs_noise_veto(BASE, BASE, FCFS)


def test_frozen_thresholds_judge_the_base_itself(veto_mods):
    """Once frozen, the thresholds are a non-negative mean and loss and the incumbent
    passes against itself."""
    pc, _, _ = veto_mods
    if pc.AFS_NOISE_MEAN_LOG is None:
        pytest.skip("not calibrated yet")
    assert pc.AFS_NOISE_MEAN_LOG >= 0 and pc.AFS_NOISE_GOAL_LOSS >= 0
    assert pc.afs_noise_veto(BASE, BASE, FCFS)[0]


def test_scale_steps_scales_every_step_time(veto_mods):
    _, noise, _ = veto_mods
    from kvsaga.sim.cost import PRESETS
    cost = PRESETS["a100-llama3-8b"]
    for k in (1 + 1e-4, 1 - 1e-4, 2.0):
        slow = noise.scale_steps(cost, k)
        for shape in ((0, 0, 1, 1000), (512, 400_000, 0, 0), (8192, 9e7, 64, 200_000)):
            assert slow.step_time(*shape) == pytest.approx(k * cost.step_time(*shape),
                                                           rel=1e-12)
        ctx = np.array([100, 5000, 30000])
        assert slow.decode_step_times(3, ctx) == pytest.approx(
            k * cost.decode_step_times(3, ctx), rel=1e-12)
    with pytest.raises(ValueError, match="step-time factor"):
        noise.scale_steps(cost, 0.0)


def test_nulls_jitter_swap_and_leave_the_rest(veto_mods):
    _, noise, _ = veto_mods
    from scheduling_mix import mix_trace
    sessions = mix_trace("noisy", 102)
    j1 = noise.perturbed("jitter1", "noisy", 102, sessions)
    assert j1 == noise.perturbed("jitter1", "noisy", 102, sessions)  # a fixed RNG
    assert j1 != noise.perturbed("jitter2", "noisy", 102, sessions)
    by_id = {s.id: s for s in sessions}
    assert sorted(s.id for s in j1) == sorted(by_id)
    assert all(0 <= s.arrival_s - by_id[s.id].arrival_s < noise.JITTER_S for s in j1)
    assert [s.arrival_s for s in j1] == sorted(s.arrival_s for s in j1)
    sw = noise.perturbed("swap", "noisy", 102, sessions)
    assert [(s.id, s.tenant) for s in sw] == [
        (s.id, {"a": "b", "b": "a"}[s.tenant]) for s in sessions]
    assert noise.perturbed("slow", "noisy", 102, sessions) is sessions
    assert noise.perturbed(None, "noisy", 102, sessions) is sessions


def test_null_stats_counts_rises_and_crossings(veto_mods):
    _, noise, _ = veto_mods
    other = {**BASE, ("mix", 102, 1.0): 1.57, ("noisy", 102, 0.5): 1.52,
             ("noisy", 102, 0.25): 1.2}
    s = noise.null_stats(BASE, other, FCFS)
    assert (s["up"], s["down"], s["equal"]) == (2, 1, 1)
    assert s["lost"] == [("noisy", 102, 0.5)] and s["won"] == []
    assert s["moved"] == 3 and s["mean"] == pytest.approx(
        sum(math.log(other[k] / BASE[k]) for k in CASES) / 4)
    with pytest.raises(ValueError, match="same cases"):
        noise.null_stats(BASE, dict(list(BASE.items())[:3]), FCFS)


def test_the_session_25_calibration_gives_its_thresholds_and_the_verdict(veto_mods):
    """History: the session-25 calibration's ratios (tests/bench/afs_noise_s25.json: the
    base then, with the prefill cap off, fcfs+lru, 11 null runs and round 26's candidate,
    32 cases each) reproduce the thresholds frozen then (0.0265 / 3) and round 26's verdict
    under them (mean d log ratio -0.0345, goal cases 15 -> 15), so a change to the rule's
    arithmetic shows here, not only on a new calibration run. Today's frozen thresholds
    come from session 26's runs (the next test)."""
    pc, _, _ = veto_mods
    runs, data = calibration("afs_noise_s25.json")
    base, fcfs, cand = runs["base"], runs["fcfs"], runs["cand"]
    nulls = null_runs(runs, data)
    assert len(base) == 32 and len(nulls) == 11
    t_mean, t_loss, _ = pc.afs_noise_thresholds(base, nulls, fcfs)
    assert (round(t_mean, 4), t_loss) == (0.0265, 3)
    mean = sum(math.log(cand[k] / base[k]) for k in base) / 32
    assert round(mean, 4) == -0.0345
    assert goal_cases(pc, base, fcfs) == 15
    assert goal_cases(pc, cand, fcfs) == 15
    ok, lines = pc.afs_noise_veto(base, cand, fcfs, mean_log_max=0.0265, goal_loss_max=3)
    assert ok and lines[-1] == "the calibrated AFS veto: passes"
    # A mean threshold below the candidate's mean change rejects it: the verdict reads it.
    assert not pc.afs_noise_veto(base, cand, fcfs, mean_log_max=-0.04, goal_loss_max=3)[0]


def test_the_session_26_calibration_gives_its_thresholds(veto_mods):
    """History: the session-26 calibration on the default then (the prefill cap of 128 tokens
    gated "demoted_queue", `readmit_charge` "uncached"; tests/bench/afs_noise_s26.json: the
    base, fcfs+lru and 11 null runs, 32 cases each) reproduces the thresholds frozen then
    (0.0270 / 1), which judged rounds 27-35. Its base is session 25's candidate run (the same
    scheduler) ratio for ratio, and fcfs+lru's is session 25's; the any-rise veto rejects 7
    of its 11 nulls. Session 32's runs replaced it (the next test), session 33's and 34's those."""
    pc, _, _ = veto_mods
    runs, data = calibration("afs_noise_s26.json")
    old, _ = calibration("afs_noise_s25.json")
    base, fcfs = runs["base"], runs["fcfs"]
    assert data["base"]["null"] is None and data["fcfs"]["config"] == "fcfs+lru"
    nulls = null_runs(runs, data)
    assert len(base) == 32 and len(nulls) == 11
    assert base == old["cand"] and fcfs == old["fcfs"]
    t_mean, t_loss, _ = pc.afs_noise_thresholds(base, nulls, fcfs)
    assert (round(t_mean, 4), t_loss) == (0.0270, 1)
    assert goal_cases(pc, base, fcfs) == 15
    assert any_rise_rejects(base, nulls) == 7
    assert pc.afs_noise_veto(base, base, fcfs, mean_log_max=0.0270, goal_loss_max=1)[0]


def test_the_session_32_calibration_gives_its_thresholds(veto_mods):
    """History: the session-32 calibration on the default then (`readmit_charge`
    "room_returns_queue", `--fit` round 34's pick, graph's `demoted_release` off;
    tests/bench/afs_noise_s32.json: the base, fcfs+lru and 11 null runs, 32 cases each)
    reproduces the thresholds frozen then (0.0283 / 2), which judged rounds 36-39. fcfs+lru's
    ratios are session 26's (no workflow default moves them); its base against session 26's
    base is round 34's veto reading (mean d log ratio -0.0181, goal cases 15 -> 16), so the
    base is round 34's candidate run. The any-rise veto rejects 9 of its 11 nulls. Today's
    frozen thresholds come from session 43's runs (tests/bench/test_afs_noise_s43.py)."""
    pc, _, _ = veto_mods
    runs, data = calibration("afs_noise_s32.json")
    old, _ = calibration("afs_noise_s26.json")
    base, fcfs = runs["base"], runs["fcfs"]
    assert data["base"]["null"] is None and data["fcfs"]["config"] == "fcfs+lru"
    nulls = null_runs(runs, data)
    assert len(base) == 32 and len(nulls) == 11 and fcfs == old["fcfs"]
    t_mean, t_loss, _ = pc.afs_noise_thresholds(base, nulls, fcfs)
    assert (round(t_mean, 4), t_loss) == (0.0283, 2)
    mean = sum(math.log(base[k] / old["base"][k]) for k in base) / 32
    assert round(mean, 4) == -0.0181
    assert goal_cases(pc, base, fcfs) == 16
    assert any_rise_rejects(base, nulls) == 9
    assert pc.afs_noise_veto(base, base, fcfs, mean_log_max=0.0283, goal_loss_max=2)[0]


def test_judge_saved_reads_a_committedcalibration(veto_mods, tmp_path, capsys):
    """`judge-saved`: a candidate's run judged against tests/bench/afs_noise_s43.json's base,
    fcfs+lru and nulls. The base itself passes (rc 0); every ratio 6% higher fails the
    mean threshold (rc 1). `run --policy` names a bad spec before running anything."""
    _, noise, _ = veto_mods
    runs, _ = calibration("afs_noise_s43.json")

    def cand(scale: float) -> Path:
        rows = [{"mix": k[0], "seed": k[1], "frac": k[2], "ratio": x * scale}
                for k, x in runs["base"].items()]
        path = tmp_path / f"cand{scale}.json"
        path.write_text(json.dumps({"defaults": None, "null": None,
                                    "config": "workflow+graph[spread=1]", "rows": rows}))
        return path

    saved = str(Path(__file__).parent / "afs_noise_s43.json")
    assert noise.main(["judge-saved", saved, str(cand(1.0))]) == 0
    assert "the calibrated AFS veto: passes" in capsys.readouterr().out
    assert noise.main(["judge-saved", saved, str(cand(1.06))]) == 1
    out = capsys.readouterr().out
    assert "workflow+graph[spread=1]" in out and "the calibrated AFS veto: rejected" in out
    with pytest.raises(SystemExit) as e:
        noise.main(["run", str(tmp_path / "x.json"), "--seeds", "102", "--policy", "nope[a=1]"])
    assert "nope" in usage_error(e, capsys)


def test_tct_lines_read_each_case_weighted_by_its_tenants_sessions(veto_mods):
    """`scheduling_veto_noise.py tct`: a case's mean TCT weighs each tenant's mean by its
    sessions (noisy: a 32, b 8); the geometric mean and the largest rise are over cases."""
    _, veto, _ = veto_mods

    def run(a, b):
        return {"rows": [{"mix": "noisy", "seed": 1, "frac": 0.5,
                          "tenants": {"a": {"tct_mean_s": a}, "b": {"tct_mean_s": b}}},
                         {"mix": "mix", "seed": 1, "frac": 1.0,
                          "tenants": {"a": {"tct_mean_s": 10.0}, "b": {"tct_mean_s": 10.0}}}]}
    lines = veto.tct_lines(run(10.0, 10.0), {"c": run(11.0, 6.5)})
    # noisy: (32 x 11 + 8 x 6.5) / 40 = 10.1 -> x1.01; mix unchanged: sqrt(1.01) over both
    assert lines[2] == "| c | x1.0050 | x1.010 (noisy seed 1 50%) | x1.0488 | x0.8062 |"
    with pytest.raises(ValueError, match="other cases"):
        veto.tct_lines(run(1.0, 1.0), {"c": {"rows": run(1.0, 1.0)["rows"][:1]}})
