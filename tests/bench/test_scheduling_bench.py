"""bench/scheduling.py and bench/scheduling_fit.py on one grid point: a row carries the
admission wait split by cause, and the fit's score and the held-out table read rows as
their docstrings say."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture(scope="module")
def mods():
    sys.path.insert(0, str(BENCH))
    try:
        import scheduling
        import scheduling_fit
        yield scheduling, scheduling_fit
    finally:
        sys.path.remove(str(BENCH))


def test_a_row_splits_its_admission_wait_by_cause(mods):
    sched, _ = mods
    row = sched._run(("swe", 101, 1.0, 0.25, "workflow", "ttl", None))
    causes = row["wait_causes"]
    assert set(causes) == {"pool", "contexts", "growth", "reserve", "batch"}
    assert row["admission_wait_s"] > 0  # this point is under pressure
    assert sum(causes.values()) == pytest.approx(row["admission_wait_s"])
    assert 0 < row["waiting_share"] <= 1 and 0 < row["waiting_context_fill"] <= 1
    assert "held the next session back" in sched.waits(row)


def test_fit_score_and_held_out_table(mods):
    sched, fit = mods

    def row(scheduler, policy, seed, frac, tct, p95, tph, hit=0.5, params=None):
        return {"family": "swe", "seed": seed, "load": 1.0, "frac": frac,
                "scheduler": scheduler, "policy": policy, "params": params,
                "tct_mean_s": tct, "tct_p95_s": p95, "tasks_per_hour": tph,
                "hit_rate": hit, "tct_unloaded_mean_s": 1.0, "admission_wait_s": 0.5,
                "wait_causes": {"pool": 0.1, "contexts": 0.3, "growth": 0.1}}

    base = {("swe", s, 1.0, 0.5): row("fcfs", "lru", s, 0.5, 8.0, 16.0, 100.0)
            for s in (1, 2)}
    rows = [row("workflow", "ttl", 1, 0.5, 2.0, 8.0, 200.0),
            row("workflow", "ttl", 2, 0.5, 8.0, 16.0, 50.0)]
    got = fit.score(rows, base, None)["swe 1x 50%"]
    assert got == pytest.approx({"gain": 2.0, "p95": 2 ** 0.5, "tph": 1.0})  # geomeans
    sched_name, policy = sched.DEFAULT.split("+")
    held = []
    for seed in fit.HELD_OUT_SEEDS:
        for load, frac in sched.GRID:
            hit = 0.9 if frac == 1.0 else 0.5  # unpressured at 100%: left out of the table
            for s, p, tct in (("fcfs", "lru", 8.0), (sched_name, policy, 4.0)):
                r = row(s, p, seed, frac, tct, tct, 100.0, hit=hit)
                r["load"] = load
                held.append(r)
    table = fit.held_out_table(held, ["swe"]).splitlines()
    # header, rule, and per seed the three pressured points
    assert len(table) == 2 + 3 * len(fit.HELD_OUT_SEEDS)
    assert all("| 2.00x |" in line for line in table[2:])
