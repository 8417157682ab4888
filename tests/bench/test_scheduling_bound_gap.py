"""bench/scheduling_bound_gap.py observes without changing: its run's row equals an
unobserved run's, each session's TCT is its solo time plus its waits and run, every
recomputed token and every demotion is accounted for, and every flag has help."""

from __future__ import annotations

import pytest

from tests.bench_scripts import bench_modules, import_bench
from tests.exits import usage_error

mods = bench_modules("scheduling", "scheduling_bound_gap")


@pytest.mark.parametrize("scheduler,policy", [("workflow", "graph"), ("fcfs", "lru")])
def test_it_observes_without_changing_and_its_parts_add_up(mods, scheduler, policy):
    sched, gap = mods
    out = gap.observe("bfcl", 1.0, 0.25, 101, policy, scheduler, None)
    plain = sched._run(("bfcl", 101, 1.0, 0.25, scheduler, policy, None))
    assert out["row"]["tct_mean_s"] == plain["tct_mean_s"]
    per = out["sessions"]
    for p in per.values():
        assert p["solo"] > 0 and min(p[f"wait {c}"] for c in gap.WAITS) >= 0
        assert p["tct"] == pytest.approx(p["solo"] + p["run"]
                                         + sum(p[f"wait {c}"] for c in gap.WAITS))
        assert p["stall first-time"] >= 0 and p["stall recomputed"] >= 0
        assert p["stall first-time"] == pytest.approx(  # `--stall-split`'s classes add up
            sum(p[f"stall first-time {k}"] for k in gap.KINDS), abs=1e-9)
        assert sum(p["stall by tenant"].values()) == pytest.approx(  # and its tenants
            p["stall first-time"] + p["stall recomputed"], abs=1e-9)
    total = sum(p["stall first-time"] for p in per.values())
    assert total > 0 and sum(out["first_by_state"].values()) == pytest.approx(total)
    assert set(out["first_by_state"]) <= set(gap.STATES)
    assert "by the queue at the batch step" in gap.stall_line(101, out)
    assert sum(p[f"rec {k}"] for p in per.values() for k in gap.KINDS) == (
        plain["recomputed_tokens"])
    assert len(out["demotions"]) == plain["num_demotions"]
    if scheduler == "fcfs":
        assert not out["demotions"] and all(p["wait again"] == 0 for p in per.values())
    else:
        assert out["demotions"] and {d["why"] for d in out["demotions"]} <= {
            "on prediction", "on contexts"}
        assert out["room"]["fits"] + out["room"]["short"] == pytest.approx(
            sum(p["wait again"] for p in per.values()))


def test_every_flag_has_help_and_bad_params_are_named(mods, capsys):
    _, gap = mods
    with pytest.raises(SystemExit) as e:
        gap.main(["--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--params", "--no-fcfs", "--write", "--policy", "--stall-split"):
        assert flag in text
    with pytest.raises(SystemExit) as e:
        gap.main(["bfcl", "1", "0.25", "101", "--params", '{"readmit_charge": "nope"}'])
    line = usage_error(e, capsys)
    assert "readmit_charge" in line and "'nope'" in line


def test_demotion_line_guards_empty_figures_and_unwaited_demotions(mods):
    """No demoted step waited and no time observed: "n/a", not nan%; a demotion whose
    session's next step was queued while admitted (no "wait again") is left out of the
    wait's mean, and the line says so."""
    _, gap = mods
    out = {"demotions": [{"why": "on contexts", "wait": 3.0, "recompute_s": 0.1},
                         {"why": "on contexts", "recompute_s": 0.3}],
           "room": {"fits": 0.0, "short": 0.0}, "gpu": {"seconds": 0.0}}
    line = gap.demotion_line(7, out)
    assert "nan" not in line
    assert "on contexts 2 (wait again 3.00 s, recompute 0.200 s a demotion; 3 s in all; " \
           "1 whose next step was queued while admitted, left out of the wait's mean)" in line
    assert "fitting beside the running steps' contexts n/a (none waited)" in line
    assert line.endswith("n/a (no time observed)")
    out["demotions"] = [{"why": "on prediction", "recompute_s": 0.0}]
    assert "on prediction 1 (wait again n/a" in gap.demotion_line(7, out)


def test_reference_observation_equals_the_fast_run_and_reads_every_step(mods):
    """`reference=True` (every step through `schedule`) gives the same run, and reads each
    session's decodes beside other decodes ("stall batch") and its prefill chunks' steps
    beyond the chunk alone ("prefill beside"): both >= 0, and positive somewhere."""
    _, gap = mods
    fast = gap.observe("bfcl", 1.0, 0.25, 101, "graph", "workflow", None)
    ref = gap.observe("bfcl", 1.0, 0.25, 101, "graph", "workflow", None, reference=True)
    assert ref["row"]["tct_mean_s"] == fast["row"]["tct_mean_s"]
    assert "stall batch" not in next(iter(fast["sessions"].values()))
    per = ref["sessions"].values()
    assert all(p["stall batch"] >= -1e-12 and p["prefill beside"] >= -1e-12 for p in per)
    assert sum(p["stall batch"] for p in per) > 0 and sum(p["prefill beside"] for p in per) > 0
    assert all(p["prefill chunks"] >= 1 for p in per)


def test_afs_time_split_adds_up_to_each_tenants_tct(mods):
    """`bench/scheduling_afs_split.py --time`: per tenant, the parts add up to the mean TCT
    `split` reports for the same shared run."""
    afs = import_bench("scheduling_afs_split")
    per = afs.time_split("noisy", 102, 0.5)
    tcts = afs.split("noisy", 102, 0.5)
    assert set(per) == {"a", "b"} and per["a"]["sessions"] == 32 and per["b"]["sessions"] == 8
    for t, v in per.items():
        assert v["tct"] == pytest.approx(tcts[t]["tct"])
        assert v["tct"] == pytest.approx(v["solo"] + v["run"] + v["wait first"]
                                         + v["wait again"] + v["wait admitted"])
        assert v["run"] == pytest.approx(sum(v[k] for k in afs.RUN_PARTS))
