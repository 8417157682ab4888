"""bench/scheduling_kv_ceiling.py: the KV ceiling's figures from its runs, and on a small
trace that unbounded KV makes the schedulers coincide with no admission wait."""

from __future__ import annotations

import math

import pytest

from tests.bench_scripts import bench_modules

ceiling = bench_modules("scheduling_kv_ceiling")


def test_seed_row_figures(ceiling):
    f = {"mean": 20.0, "p95": 40.0, "solo": 8.0}
    w, fu, wu = {"mean": 12.5, "p95": 32.0}, {"mean": 10.0}, {"mean": 10.0}
    r = ceiling.seed_row(f, w, fu, wu)
    assert r["gain"] == pytest.approx(1.6) and r["p95_gain"] == pytest.approx(1.25)
    assert r["bound"] == pytest.approx(2.5) and r["ceiling"] == pytest.approx(2.0)
    assert r["reached"] == pytest.approx(math.log(1.6) / math.log(2.0))
    assert r["same_unbounded"]
    assert not ceiling.seed_row(f, w, fu, {"mean": 10.5})["same_unbounded"]
    assert math.isnan(ceiling.seed_row(f, w, fu, {"mean": 20.0})["reached"])


def test_unbounded_kv_runs_alike_under_both_schedulers(ceiling):
    """16 bfcl sessions at 2x load: at 25% of the peak working set workflow waits for
    memory; with unbounded KV neither waits, both reach the same mean TCT, and it is no
    more than either at the point."""
    args = ("bfcl", 2.0, 0.25, 101)
    runs = [ceiling.run_arm(*args, *arm, sessions=16) for arm in ceiling._arms(None, "graph")]
    f, w, fu, wu = runs
    assert w["wait"] > 0.0  # the point is pressured: workflow holds sessions back
    assert fu["mean"] == wu["mean"] and wu["wait"] == 0.0
    assert wu["mean"] <= min(f["mean"], w["mean"])
    assert f["solo"] <= wu["mean"]



def test_table_rows_and_geomean_row(ceiling):
    """One seed: a header, its row and a geomean row whose gain, ceiling and share are the
    seed's own (the geomean of one figure is itself)."""
    lines = ceiling.table("bfcl", 2.0, 0.25, [101], None, workers=1, sessions=16)
    assert len(lines) == 4 and lines[2].startswith("| 101 |") and lines[3].startswith("| geomean")
    row, geo = ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:4])
    assert len(row) == len(geo) == 12
    for col in (3, 4, 6, 8, 9):  # gain, p95 gain, gain bound, KV ceiling, share reached
        assert geo[col] == row[col] != ""
    assert row[-1] == "yes"
