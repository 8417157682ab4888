"""bench/fit_seeds.py: one registry of every seed a fit or tune read, refused by every
held-out or fresh entry point (review s48, bench findings 1, 2 and 7). One seed is the same
sessions in every bench, so each entry point used to refuse only its own fit's seeds:
`scheduling_mix.py --report --seeds 201,202` (session 45's "fresh" AFS seeds) replayed the
eviction-policy tune's sessions, and `policies.py --from-json` rendered fit seeds' rows."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.bench_scripts import bench_modules, import_bench
from tests.exits import usage_error

mods = bench_modules("scheduling_fit", "scheduling_mix", "policies")


def test_the_registry_holds_every_fits_own_seeds(mods):
    """Each fit's constant is the registry's (nothing refitted), and every one is refused."""
    fs, sched, mix, pol, cluster, gate, check = import_bench(
        "fit_seeds", "scheduling", "scheduling_mix", "policies", "cluster", "vllm_gate_fit",
        "policies_check")
    for seeds in (sched.FIT_SEEDS, mix.FIT_SEEDS, pol.TUNE_SEEDS, cluster.FIT_SEEDS,
                  gate.FIT_SEEDS, check.AFS_FIT_SEEDS):
        assert set(seeds) <= fs.ALL_FIT_SEEDS
    assert sched.FIT_SEEDS == (101, 102, 103, 104, 105, 106)
    assert mix.FIT_SEEDS == check.AFS_FIT_SEEDS == tuple(range(102, 110))
    assert pol.TUNE_SEEDS == (1, 101, 102, 103, 201, 202, 301, 302, 401, 402, 951, 952)
    assert cluster.FIT_SEEDS == (1, 2) and gate.FIT_SEEDS == (0, 1, 2, 3, 4)
    every = {0, 1, 2, 3, 4, *range(101, 110), 201, 202, 301, 302, 401, 402, 951, 952,
             *fs.POLICY_SEEN_SEEDS}
    assert every == fs.ALL_FIT_SEEDS
    assert fs.fits_reading(201) == ["the eviction policy tune (bench/policies.py --tune)"]
    assert fs.fit_seed_error([211, 212], "--x") is None


def _no_simulation(*_a, **_k):
    raise AssertionError("simulated a seed that should have been refused")


def test_held_out_refuses_every_fits_seeds_naming_the_fit(mods, capsys, monkeypatch):
    fit = mods[0]
    monkeypatch.setattr(fit, "run", _no_simulation)
    for seed, fit_name in ((201, "eviction policy tune"), (107, "AFS compute-share fit"),
                           (2, "cluster router fit"), (0, "vLLM connector's gate fit")):
        with pytest.raises(SystemExit) as e:
            fit.main(["--held-out", f"211,{seed}"])
        err = usage_error(e, capsys)
        assert f"--held-out: seed(s) read by a fit, so not held out: {seed} by the" in err
        assert fit_name in err and "211" not in err


def test_mix_report_seeds_refuses_fit_seeds_and_seeds_need_report(mods, capsys,
                                                                   monkeypatch):
    """`--report --seeds` on the AFS fit seeds (104, 105) or the policy tune's (201, 202) is
    refused; `--seeds` or `--params` without their mode is refused, not ignored (before,
    `--seeds` alone ran the several-minute AFS fit)."""
    mix = mods[1]
    ran = []
    monkeypatch.setattr(mix, "report", lambda *a: ran.append(("report", a)))
    monkeypatch.setattr(mix, "fit_share", lambda *a: ran.append(("fit", a)))
    for argv, says in ((["--report", "--seeds", "104,105"], "104 by the workflow scheduler"),
                       (["--report", "--seeds", "201,202"], "201 by the eviction policy tune"),
                       (["--seeds", "211"], "--seeds applies to --report only"),
                       (["--params", "{}"], "--params applies to --floors only"),
                       (["--report", "--seeds", "3x"], "comma-separated integers, got '3x'")):
        with pytest.raises(SystemExit) as e:
            mix.main(argv)
        assert says in usage_error(e, capsys)
    assert ran == []
    assert mix.main(["--report", "--seeds", "211,212"]) == 0
    assert ran == [("report", (2, [211, 212]))]


def test_policies_evaluation_refuses_other_fits_seeds_and_from_json_fit_seeds(
        mods, capsys, tmp_path, monkeypatch):
    pol = mods[2]
    monkeypatch.setattr(pol, "run", _no_simulation)
    with pytest.raises(SystemExit) as e:  # the scheduler's fit seeds (104, 105)
        pol.main(["--seeds", "104,931", "--no-write"])
    assert "--seeds: seed(s) read by a fit, so not held out: 104 by the workflow" in \
        usage_error(e, capsys)
    saved = tmp_path / "policies.json"
    saved.write_text(json.dumps({"seeds": [1, 101], "rows": [], "skipped": [],
                                 "command": "x", "wall_s": 0.0, "policies": ["lru"]}))
    with pytest.raises(SystemExit) as e:  # the command line's seeds are not the file's
        pol.main(["--from-json", str(saved), "--no-write"])
    assert f"--from-json {saved} (its seeds) 1,101: fit seeds" in usage_error(e, capsys)


def test_the_seen_seeds_the_default_policy_was_kept_on_are_registered(mods):
    """Session 34 kept graph[demoted_release=1] over the tune's pick because it led on the 24
    seen held-out seeds (policies_seen.SEEN_ALL): a choice that read them, so the registry
    holds them (review s48 benchdiff 1), the policy evaluation's own default among them."""
    fs, pol, seen = import_bench("fit_seeds", "policies", "policies_seen")
    assert fs.POLICY_SEEN_SEEDS == seen.SEEN_ALL and len(set(seen.SEEN_ALL)) == 24
    assert set(pol.EVAL_SEEDS) <= set(fs.POLICY_SEEN_SEEDS)
    assert fs.fits_reading(941) == [fs.POLICY_SEEN[0]] and "session 34" in fs.POLICY_SEEN[0]
    assert fs.fits_reading(941, seen_ok=True) == []
    assert fs.fit_seed_error([941, 211], "--x", seen_ok=True) is None


def test_scheduling_entry_points_refuse_the_seen_policy_seeds(mods, capsys, monkeypatch):
    fit, mix, _ = mods
    monkeypatch.setattr(fit, "run", _no_simulation)
    monkeypatch.setattr(mix, "report", _no_simulation)
    for main, argv, flag in ((fit.main, ["--held-out", "211,941,942"], "--held-out"),
                             (mix.main, ["--report", "--seeds", "501,502"],
                              "--report --seeds")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = usage_error(e, capsys)
        assert f"{flag}: seed(s) read by a fit, so not held out:" in err
        assert "the default eviction policy's keep over the tune's pick, session 34" in err


class _Ran(Exception):
    """Raised by a stub where the run would have simulated: the seeds were accepted."""


def _ran(*_a, **_k):
    raise _Ran


def test_policies_evaluation_still_runs_its_own_seen_seeds(mods, monkeypatch):
    """The evaluation's seen seeds are in the registry now, but they are its own (its default
    `EVAL_SEEDS`, and the pairs run with --seeds since): it labels them seen, not fresh."""
    pol = mods[2]
    monkeypatch.setattr(pol, "run", _ran)
    for argv in (["--no-write"], ["--seeds", "941,942", "--no-write"]):
        with pytest.raises(_Ran):
            pol.main(argv)


def test_mix_report_fit_seeds_runs_a_labelled_diagnosis_on_registry_seeds_only(
        mods, capsys, monkeypatch):
    """RESULTS records `--report --seeds 102,103` (and 102-109) on the AFS fit seeds as
    diagnoses; the registry's refusal left no way to rerun them (review s48 benchdiff 3).
    `--fit-seeds` runs them and says first that they are fit seeds; it refuses a seed no fit
    read (a fresh seed would be used up) and needs `--seeds`."""
    mix = mods[1]
    ran = []
    monkeypatch.setattr(mix, "report", lambda *a: ran.append(a))
    with pytest.raises(SystemExit) as e:
        mix.main(["--report", "--seeds", "102,103"])
    assert usage_error(e, capsys).endswith("; a diagnosis on fit seeds alone: --fit-seeds")
    assert mix.main(["--report", "--seeds", "102,103", "--fit-seeds"]) == 0
    assert ran == [(2, [102, 103])]
    out = capsys.readouterr().out
    assert out.startswith("fit seeds, not held out (a diagnosis): 102 by the workflow "
                          "scheduler's fit")
    assert "103 by" in out
    for argv, says in ((["--report", "--seeds", "102,211", "--fit-seeds"],
                        "--report --seeds with --fit-seeds: seed(s) no fit read: 211"),
                       (["--report", "--fit-seeds"], "--fit-seeds applies to --report --seeds"),
                       (["--fit-seeds"], "--fit-seeds applies to --report --seeds")):
        with pytest.raises(SystemExit) as e:
            mix.main(argv)
        assert says in usage_error(e, capsys)
    assert ran == [(2, [102, 103])]


@pytest.fixture
def cluster_stubbed(mods, monkeypatch):
    """bench/cluster.py with its simulations stubbed: `main` reaching `report` means the
    seeds were accepted."""
    cluster = import_bench("cluster")
    monkeypatch.setattr(cluster, "family_loads", lambda *_: ({}, [], frozenset()))
    monkeypatch.setattr(cluster, "report", _ran)
    return cluster


def test_cluster_report_refuses_fit_seeds_unless_a_labelled_diagnosis(cluster_stubbed, capsys,
                                                                     tmp_path):
    """The report's section says the router was fitted on seeds 1 and 2, "not on the seeds
    reported here", but only `--fit` checked its seeds: `--seed 1,2` and `--seed 101` ran
    (review s48 benchdiff 2). Now every registry seed is refused, its default seeds run, and
    `--fit-seeds` runs a diagnosis (as docs/cluster_history.md's seed-1 reading was), said
    so, never into bench/RESULTS.md."""
    cluster = cluster_stubbed
    for argv, says in ((["--seed", "1,2"], "--seed: seed(s) read by a fit, so not held out: 1 "
                        "by the eviction policy tune"),
                       (["--seed", "7,101"], "101 by the workflow scheduler's fit"),
                       (["--seed", "941"], "session 34"),
                       (["--seed", "1", "--fit-seeds"], "--fit-seeds: a diagnosis is not "
                        "written into"),
                       (["--seed", "7", "--fit-seeds", "--no-write"],
                        "--seed with --fit-seeds: seed(s) no fit read: 7"),
                       (["--fit", "--seed", "1", "--fit-seeds"],
                        "--fit-seeds applies to the report only")):
        with pytest.raises(SystemExit) as e:
            cluster.main([*argv, "--workers", "1"])
        assert says in usage_error(e, capsys), argv
    with pytest.raises(_Ran):  # the default report seeds 7, 11, 12 are held out
        cluster.main(["--no-write", "--workers", "1"])
    with pytest.raises(_Ran):
        cluster.main(["--seed", "1,2", "--fit-seeds", "--results", str(tmp_path / "r.md"),
                      "--workers", "1"])
    assert capsys.readouterr().out.startswith(
        "fit seeds, not held out (a diagnosis): 1 by the eviction policy tune")


def test_cluster_section_on_fit_seeds_says_so_not_held_out(mods):
    cluster = import_bench("cluster")
    args = SimpleNamespace(sessions_per_gpu=64, fit_seeds=True, report_period=None)
    body = cluster.section_body(args, "python bench/cluster.py --fit-seeds", [], [], [], [])
    assert "**on fit seeds, not held out** (`--fit-seeds`: a diagnosis" in body
    assert "not on the seeds reported here" not in body
    args.fit_seeds = False
    body = cluster.section_body(args, "python bench/cluster.py", [], [], [], [])
    assert "not on the seeds reported here" in body
