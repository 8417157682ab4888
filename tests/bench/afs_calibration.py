"""What the AFS veto calibration tests share (tests/bench/test_afs_noise_s33.py, _s34.py,
_s41.py, _s43.py, test_afs_noise_veto.py): the committed calibrations, their layout's checks,
the any-rise and leave-one-out judgements, and `save`'s round trip (bench/'s modules on the
path: tests/bench/conftest.py's `veto_mods`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
NULLS = ("jitter1", "jitter2", "jitter3", "jitter4", "slow", "fast", "slow2", "fast2",
         "slow3", "fast3", "swap")


def calibration(name: str) -> tuple[dict, dict]:
    """A committed calibration's runs: {run: {case: ratio}}, and the file's raw runs."""
    data = json.loads((HERE / name).read_text())["runs"]
    return {n: {tuple(k): x for k, x in r["ratios"]} for n, r in data.items()}, data


def null_runs(runs: dict, data: dict) -> dict[str, dict]:
    """A calibration's null runs by the null's name: {null: {case: ratio}}."""
    return {data[n]["null"]: r for n, r in runs.items() if n.startswith("null_")}


def checked_calibration(name: str) -> tuple[dict, dict, dict]:
    """A committed calibration of the current layout (session 33 on) as (base, fcfs, nulls),
    asserting that layout: the base is workflow+graph and no null, the other run fcfs+lru,
    no run records defaults, and the 11 nulls of `NULLS`, every run 32 cases."""
    runs, data = calibration(name)
    assert data["base"]["null"] is None and data["base"]["config"] == "workflow+graph"
    assert data["fcfs"]["config"] == "fcfs+lru"
    assert all(r["defaults"] is None for r in data.values())
    nulls = null_runs(runs, data)
    assert sorted(nulls) == sorted(NULLS) and all(len(r) == 32 for r in runs.values())
    return runs["base"], runs["fcfs"], nulls


def goal_cases(pc, run: dict, fcfs: dict) -> int:
    """The cases where `run` meets the AFS goal against fcfs+lru (`policies_check.goal_met`)."""
    return sum(pc.goal_met(run[k], fcfs[k]) for k in run)


def any_rise_rejects(base: dict, nulls: dict) -> int:
    """How many nulls the any-rise veto rejects: some case's ratio above the base's (as
    printed, two decimals)."""
    return sum(any(round(r[k], 2) > round(base[k], 2) for k in base) for r in nulls.values())


def leave_one_out(pc, base: dict, nulls: dict, fcfs: dict) -> list[tuple[str, float, int]]:
    """Each null judged with thresholds from the base and the other nulls only, both ways
    (the null against the base, the base against it): the judgements that reject, each with
    those thresholds (the mean's rounded to 4 places)."""
    rejected = []
    for n, r in nulls.items():
        tm, tl, _ = pc.afs_noise_thresholds(base, {m: x for m, x in nulls.items() if m != n},
                                            fcfs)
        for label, a, b in ((f"{n} against base", base, r), (f"base against {n}", r, base)):
            if not pc.afs_noise_veto(a, b, fcfs, mean_log_max=tm, goal_loss_max=tl)[0]:
                rejected.append((label, round(tm, 4), tl))
    return rejected


def recalibrated(pc, new_name: str, old_name: str) -> tuple[int, float, int, tuple[float, int]]:
    """A calibration against the one it replaced, asserting fcfs+lru's ratios are the old
    ones: (how many of the base's cases moved, |d log ratio| >= `AFS_NOISE_MOVED`; the mean
    d log ratio, 4 places; the old base's goal cases; the thresholds the old nulls give
    around the new base, the mean's to 4 places)."""
    new, _ = calibration(new_name)
    old, data = calibration(old_name)
    assert new["fcfs"] == old["fcfs"]
    d = [math.log(new["base"][k] / old["base"][k]) for k in old["base"]]
    goal = goal_cases(pc, old["base"], old["fcfs"])
    t_mean, t_loss, _ = pc.afs_noise_thresholds(new["base"], null_runs(old, data), new["fcfs"])
    return (sum(abs(x) >= pc.AFS_NOISE_MOVED for x in d), round(sum(d) / len(d), 4), goal,
            (round(t_mean, 4), t_loss))


def write_runs(tmp_path: Path, data: dict) -> dict[str, Path]:
    """The calibration's runs written back as `scheduling_veto_noise.py run` files (rows in
    `run`'s order, not sorted, so that `save` must sort them)."""
    paths = {}
    for name, run in data.items():
        rows = [{"mix": k[0], "seed": k[1], "frac": k[2], "ratio": x, "tenants": {}}
                for k, x in reversed(run["ratios"])]
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_text(json.dumps({"defaults": run["defaults"], "null": run["null"],
                                           "config": run["config"], "rows": rows}))
    return paths


def save_round_trip(noise, tmp_path: Path, name: str) -> tuple[str, dict[str, Path], list[str]]:
    """`save` on a committed calibration's runs, written back as run files: asserts it gives
    the committed file byte for byte; returns its `about`, the run files and `save`'s run
    arguments (for the caller's further checks)."""
    committed = (HERE / name).read_text()
    about = json.loads(committed)["about"]
    p = write_runs(tmp_path, json.loads(committed)["runs"])
    args = [str(p["base"]), str(p["fcfs"])] + [str(p[f"null_{n}"]) for n in NULLS]
    out = tmp_path / "out.json"
    assert noise.main(["save", str(out), *args, "--about", about]) == 0
    assert out.read_text() == committed
    return about, p, args
