"""bench/fit_seeds.py: one registry of every seed a fit or tune read, refused by every
held-out or fresh entry point (review s48, bench findings 1, 2 and 7). One seed is the same
sessions in every bench, so each entry point used to refuse only its own fit's seeds:
`scheduling_mix.py --report --seeds 201,202` (session 45's "fresh" AFS seeds) replayed the
eviction-policy tune's sessions, and `policies.py --from-json` rendered fit seeds' rows."""

from __future__ import annotations

import json

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
    every = {0, 1, 2, 3, 4, *range(101, 110), 201, 202, 301, 302, 401, 402, 951, 952}
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
