"""What the AFS veto calibration tests share (tests/bench/test_afs_noise_s33.py, _s34.py):
the committed calibrations and `save`'s round trip (bench/'s modules on the path:
tests/bench/conftest.py's `veto_mods`)."""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCH = HERE.parents[1] / "bench"
NULLS = ("jitter1", "jitter2", "jitter3", "jitter4", "slow", "fast", "slow2", "fast2",
         "slow3", "fast3", "swap")


def calibration(name: str) -> tuple[dict, dict]:
    """A committed calibration's runs: {run: {case: ratio}}, and the file's raw runs."""
    data = json.loads((HERE / name).read_text())["runs"]
    return {n: {tuple(k): x for k, x in r["ratios"]} for n, r in data.items()}, data


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
