"""bench/scheduling_overflow.py observes without changing: its counts add up (every
demotion attributed to a rule and to the event that took the admitted working sets over the
tiers; every recomputed token to a session) and its rows equal an unobserved run's."""

from __future__ import annotations

import pytest

from tests.bench_scripts import bench_modules
from tests.exits import usage_error

mods = bench_modules("scheduling", "scheduling_overflow")


def _observed(mods, mode: str, family: str, fraction: float, seed: int):
    """bench/scheduling_overflow.py's `mode` on `family` at 1x load, `fraction`, `seed` under
    workflow+graph, and scheduling.py's plain row of the same run: the observed run's mean
    TCT is the plain one's (asserted). Returns (the mode's result, the plain row)."""
    sched, over = mods
    d = getattr(over, mode)(family, 1.0, fraction, seed, "graph")
    plain = sched._run((family, seed, 1.0, fraction, "workflow", "graph", None))
    assert d["row"]["tct_mean_s"] == plain["tct_mean_s"]
    return d, plain


def test_demotions_are_all_attributed_and_the_row_is_unchanged(mods):
    d, plain = _observed(mods, "demotions", "swe", 0.25, 101)
    n = plain["num_demotions"]
    assert n > 0 and sum(d["how"].values()) == n == sum(d["why"].values())
    assert "none" not in d["why"]  # each demotion followed a crossing of the tiers
    assert sum(c["demotions"] for c in d["sessions"].values()) == n
    assert sum(c["recomputed"] for c in d["sessions"].values()) == plain["recomputed_tokens"]
    f = d["finish"]
    assert 0 <= f["context beyond its predicted working set"] <= f["finishes"]


def test_memory_mode_covers_the_makespan(mods):
    d, _ = _observed(mods, "memory", "swe", 0.5, 103)
    t, r = d["time"], d["row"]
    bands = ("live < 0.5", "live 0.5-0.85", "live >= 0.85")
    covered = sum(t[b, w] for b in bands for w in (False, True))
    assert covered == pytest.approx(r["makespan_s"], rel=1e-6)


def test_waits_mode_splits_each_sessions_tct_and_changes_nothing(mods):
    sched, _ = mods
    d, plain = _observed(mods, "waits", "bfcl", 0.25, 101)
    base = sched._run(("bfcl", 101, 1.0, 0.25, "fcfs", "lru", None))
    per = d["sessions"]
    n = len(per)
    assert sum(p["tct"] for p in per.values()) / n == pytest.approx(plain["tct_mean_s"])
    assert sum(p["fcfs"] for p in per.values()) / n == pytest.approx(base["tct_mean_s"])
    assert sum(p["demotions"] for p in per.values()) == plain["num_demotions"] > 0
    waited = sum(p["first"] + p["again"] for p in per.values()) / n
    assert waited == pytest.approx(plain["admission_wait_s"])
    assert all(p["tct"] >= p["first"] + p["again"] >= 0 for p in per.values())


def test_growth_mode_compares_each_step_with_its_prediction_and_changes_nothing(mods):
    _, over = mods
    d, _ = _observed(mods, "growth", "bfcl", 0.25, 101)
    steps = d["steps"]
    assert steps and all(pred > 0 and from_prompt >= 0 for _, pred, _, from_prompt in steps)
    # the prompt repeats the last finish's context: growth from it is at least that since
    assert all(last is None or last >= p for _, _, last, p in steps)
    assert any(last is not None for _, _, last, _ in steps)
    assert all(line.startswith("  ") for line in over._growth_lines(steps))


def test_returns_mode_sees_every_demoted_sessions_return_and_changes_nothing(mods):
    d, plain = _observed(mods, "returns", "bfcl", 0.25, 104)
    seen = d["returns"]
    # a demoted session's step arrives once per demotion at most (its session may end or
    # be admitted again by an undo first: none here, undo_demotion is off)
    assert 0 < len(seen) <= plain["num_demotions"]
    assert all(0 <= c <= 1 and 0 <= new <= waiting for c, waiting, new, _, _ in seen)
    assert any(r[1] == 0 for r in seen) and any(r[1] > 0 for r in seen)
    # the tiers' two readings (short beside the admitted contexts; beyond the free blocks)
    # are booleans, and the first answers both ways over the seed's returns
    assert all(isinstance(r[3], bool) and isinstance(r[4], bool) for r in seen)
    assert any(r[3] for r in seen) and not all(r[3] for r in seen)


def test_params_reach_the_scheduler_and_bad_ones_are_refused(mods, capsys):
    _, over = mods
    tuned = over.demotions("bfcl", 2.0, 0.5, 104, "graph", {"growth_quantile": 0.9})
    plain = over.demotions("bfcl", 2.0, 0.5, 104, "graph")
    assert sum(tuned["how"].values()) != sum(plain["how"].values())  # 34 against 56
    assert tuned["row"]["tct_mean_s"] != plain["row"]["tct_mean_s"]
    for bad in ("[1]", "{not json"):
        with pytest.raises(SystemExit) as e:
            over.main(["bfcl", "1", "0.25", "101", "--params", bad])
        assert "--params must be a JSON object" in usage_error(e, capsys)
    for bad, named in (('{"no_such_knob": 1}', "no_such_knob"),
                       ('{"growth_alpha": 7}', "growth_alpha")):
        with pytest.raises(SystemExit) as e:
            over.main(["bfcl", "1", "0.25", "101", "--params", bad])
        assert named in usage_error(e, capsys)
