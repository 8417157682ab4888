"""bench/sim_speed.py on one tiny case: it measures both paths, checks their results are
equal, and writes only its own section of RESULTS.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.bench_scripts import bench_on_path, load_bench

ROOT = Path(__file__).resolve().parents[2]


def load(name: str = "sim_speed"):
    with bench_on_path():  # it imports bench/results_blocks.py, as when run as a script
        return load_bench(name)


def test_measures_both_paths_and_writes_its_section(tmp_path):
    mod = load()
    cases = [mod.Case("tiny", "swe", 4, 0.05, "1G", "lru"),
             mod.Case("tiny cluster", "swe", 6, 0.05, "1G", "lru", gpus=2)]
    here = str(ROOT)  # this checkout as its own baseline: the same results
    rows = mod.measure(cases, repeat=1, baseline=here, previous=here)
    assert [r["case"] for r in rows] == ["tiny", "tiny cluster"]
    assert all(r["ref_s"] > 0 and r["fast_s"] > 0 and r["sessions"] in (4, 6) for r in rows)
    assert all(r["base_s"] > 0 and r["base_same"] for r in rows)
    assert all(r["prev_s"] > 0 and r["prev_same"] for r in rows)
    body = mod.report(rows, {}, "python bench/sim_speed.py", 1.0, baseline_name="itself",
                      previous_name="itself too")
    assert "tiny cluster" in body and "identical results" in body
    assert "checkout of itself too" in body and "Every result row equals" in body
    results = tmp_path / "RESULTS.md"
    results.write_text("# R\n\n## Other\n\nkept\n\n## Simulator speed\n\nby hand\n")
    mod.write_section(body, results)
    text = results.read_text()
    assert "kept" in text and text.count("## Simulator speed") == 1
    assert "by hand\n\n<!-- begin: written by bench/sim_speed.py (" in text  # its block


ROW = {"num_batch_steps": 10, "recomputed_tokens": 3, "tct_mean_s": 1.5, "hit_rate": 0.5}
PATHS = {"ref": "here", "fast": "here", "base": "base", "prev": "prev", "issue": None}
BEST = {"ref": 2.0, "fast": 1.0, "base": 4.0, "prev": 3.0}


def row_of(mod, **arms):
    """A case row from result rows equal to ROW except where `arms` changes one field."""
    rows = {arm: dict(ROW) for arm in ("ref", "fast", "base", "prev")}
    for arm, (field, value) in arms.items():
        rows[arm][field] = value
    return mod.case_row(mod.Case("tiny", "swe", 4, 0.05, "1G", "lru"), BEST, rows, PATHS)


def test_a_fast_path_that_differs_from_the_reference_stops_the_run():
    """The self-compare above never gives the checks differing rows: each gets one here."""
    mod = load()
    with pytest.raises(SystemExit, match="tiny: fast path and reference differ: "
                                         r"\{'hit_rate': \(0.5, 0.25\)\}"):
        row_of(mod, fast=("hit_rate", 0.25))


@pytest.mark.parametrize("field, base_same", [
    ("recomputed_tokens", False), ("tct_mean_s", False), ("hit_rate", True)])
def test_baseline_differs_only_on_its_two_fields(field, base_same):
    mod = load()
    r = row_of(mod, base=(field, 99))
    assert r["base_same"] is base_same and r["prev_same"] is True
    body = mod.report([r], {}, "cmd", 1.0, baseline_name="b")
    (line,) = [line for line in body.splitlines() if line.startswith("tiny ")]
    assert line.endswith(" (differs)") is not base_same


def test_previous_differs_on_any_field_and_the_report_names_the_case():
    mod = load()
    r = row_of(mod, prev=("hit_rate", 0.25))
    assert r["prev_same"] is False and r["base_same"] is True
    body = mod.report([r], {}, "cmd", 1.0, previous_name="p")
    assert "(row differs)" in body and "Rows that differ from this tree's: tiny." in body
    assert "Every result row equals" not in body


def test_case_filter_picks_cases_by_name():
    mod = load()
    assert [c.name for c in mod.select(["readme lru", "@1.0"])] == [
        "readme lru", "swe x20 @1.0, 20G, lru"]
    assert mod.select(None) == mod.CASES
    assert mod.select(["no such case"]) == []


def test_split_times_the_parts_and_puts_every_method_back():
    from kvsaga.manager import KVCacheManager
    from kvsaga.scheduler.base import Scheduler

    mod, prof = load(), load("sim_speed_profile")
    before = (Scheduler.schedule, KVCacheManager.begin_step)
    parts = prof.split(mod.Case("tiny", "swe", 4, 0.05, "1G", "lru"))
    assert (Scheduler.schedule, KVCacheManager.begin_step) == before
    total = parts["total"][1]
    assert parts["KVCacheManager.begin_step"][0] > 0 and parts["policy.blocks_cached"][0] > 0
    assert 0 < parts["schedule: admits a step"][0] <= parts["KVCacheManager.begin_step"][0]
    assert all(0 <= sec <= total for label, (_, sec) in parts.items())


def test_issue_baseline_gets_the_same_capacity_and_marks_what_it_cannot_run():
    mod = load()
    host = mod.Case("h", "swe", 4, 0.05, "1G", "graph", "fcfs", host_memory="2G")
    cfg = host.issue_config()
    assert cfg["num_gpu_blocks"] == host.config().blocks()
    assert cfg["num_host_blocks"] == host.config().host_blocks() > 0
    assert cfg["admission"] == "fifo" and cfg["policy"] == "graph"
    assert mod.Case("w", "swe", 4, 0.05, "1G", "lru").issue_config()["admission"] == "reserve"
    assert mod.Case("c", "swe", 4, 0.05, "1G", "lru", gpus=2).issue_config() is None
    rows = [dict(case="fast one", steps=10, ref_s=2.0, fast_s=1.0, ref_rate=1.0, fast_rate=2.0,
                 speedup=2.0, issue_s=20.0, issue_rate=0.1, issue_steps=12,
                 issue_recomputed=5, recomputed=3),
            dict(case="slow one", steps=10, ref_s=2.0, fast_s=1.0, ref_rate=1.0,
                 fast_rate=2.0, speedup=2.0, issue_s=3.0, issue_rate=0.7, issue_steps=10,
                 issue_recomputed=3, recomputed=3),
            dict(case="a cluster", steps=None, ref_s=2.0, fast_s=1.0, ref_rate=1.0,
                 fast_rate=2.0, speedup=2.0, issue_s=None, issue_rate=None)]
    body = mod.report(rows, {}, "python bench/sim_speed.py", 1.0, issue_name="f9d2af5")
    # Over the cases it ran: (20 + 3) / (1 + 1); per case the one under 10x is a miss.
    assert "**11.50x** (met)" in body and "1 of 2 under 10x (misses): slow one 3.00x" in body
    assert "Not run on it (no cluster simulator then): a cluster." in body
    assert "n/a" in body.split("a cluster")[1].splitlines()[0]
    # Only "slow one" made the same decisions in both (equal steps and recomputed tokens).
    assert "Over the 1 cases where both simulators made the same decisions" in body
    assert "3.0 CPU s against 1.0, 3.00x" in body


def test_issue_quickstart_wall_is_set_against_the_issue_simulators_cpu_time():
    mod = load()
    rows = [dict(case=f"issue quickstart {p}", issue_s=30.0) for p in mod.ISSUE_POLICIES]
    line = mod.issue_wall_line(rows, {1: 20.0, 2: 15.0})
    assert "`--jobs 1` 20.0 s, `--jobs 2` 15.0 s" in line
    assert "took 150 CPU s" in line
    assert "7.5x with `--jobs 1`, 10.0x with `--jobs 2`" in line
    # Without every policy's row it states only what it measured.
    assert "took" not in mod.issue_wall_line(rows[:2], {1: 20.0})
