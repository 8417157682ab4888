"""bench/cluster.py's floor: a lower bound on any router's mean TCT, computed from the cost
model without simulating (what its RESULTS lines call a target out of any router's reach)."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
import cluster  # noqa: E402

from kvsaga.sim.cluster import simulate_cluster  # noqa: E402
from kvsaga.sim.config import SimConfig  # noqa: E402


@pytest.mark.parametrize("family", ["bfcl", "web"])
def test_the_floor_is_below_every_router_and_the_ideal_run(family):
    sessions = cluster.trace(family, gpus=2, spg=4, scale=0.1, seed=3, load=2.0)
    config = SimConfig(kv_memory_bytes=2 * 2**30, scheduler="workflow")
    floor = cluster.floor_tct(sessions, config.cost)
    tools = sum(st.tool_s for s in sessions for st in s.steps[:-1]) / len(sessions)
    assert floor > tools  # the steps' own compute counts too
    means = [simulate_cluster(sessions, config, gpus=2, router=r).tct_mean_s
             for r in ("round-robin", "affinity", "kvsaga")]
    ideal = simulate_cluster(sessions, SimConfig(kv_memory_bytes=64 * 2**30),
                             gpus=len(sessions), router="kvsaga").tct_mean_s
    assert all(floor <= m for m in [*means, ideal])
    assert ideal <= 1.1 * floor  # one GPU per session comes within 10% of it


def test_verdicts_name_the_targets_the_floor_puts_out_of_reach():
    row = {"scheduler": "fcfs", "policy": "lru", "load_imbalance": 1.0}
    rows = [{**row, "router": "round-robin", "tct_mean_s": 30.0},
            {**row, "router": "affinity", "tct_mean_s": 12.0},
            {**row, "router": "kvsaga", "scheduler": "workflow", "tct_mean_s": 10.0}]
    lines = cluster.verdicts(rows, floor_s=10.0)
    assert "at most 3.00x over round-robin, 1.20x over affinity" in lines[0]
    # 3x over round-robin is reachable; 1.64x over affinity is not (1.2x at most).
    assert [ln for ln in lines if "out of any router's reach" in ln] == [
        "- the 1.64x target over affinity is out of any router's reach here: the floor "
        "bounds it at 1.20x."]
    assert "3.00x better than round-robin" in lines[-1] and "target 2.0x: met" in lines[-1]


@pytest.mark.parametrize(("gpus", "spg", "load", "title"), [
    ("8", 64, "thrash", "## Cluster routing (simulated)"),
    ("64", 64, "thrash", "## Cluster routing (simulated, 64 GPUs)"),
    ("64", 16, "thrash",
     "## Cluster routing (simulated, 64 GPUs, 16 sessions per GPU at the thrash load)"),
    ("8", 64, "8", "## Cluster routing (simulated, 64 sessions per GPU at 8x)"),
    ("8", 16, "thrash", "## Cluster routing (simulated, 16 sessions per GPU at the thrash load)"),
])
def test_each_fleet_and_load_writes_its_own_section(gpus, spg, load, title):
    args = SimpleNamespace(report_period=None, gpus=gpus, sessions_per_gpu=spg, load=load)
    assert cluster.section_title(args) == title


@pytest.mark.parametrize(("gpus", "spg", "period", "title"), [
    ("8", 64, 0.5, "## Cluster routing (simulated, reports every 0.5 s)"),
    ("64", 16, 2.0, "## Cluster routing (simulated, 64 GPUs, 16 sessions per GPU at the "
                    "thrash load, reports every 2 s)"),
])
def test_lagging_reports_write_a_section_of_their_own(gpus, spg, period, title):
    """--report-period's rows never replace the live reports' section of the fleet."""
    args = SimpleNamespace(report_period=period, gpus=gpus, sessions_per_gpu=spg,
                           load="thrash")
    assert cluster.section_title(args) == title


@pytest.mark.parametrize(("value", "said"), [
    ("-0.5", "--report-period must be a finite number of seconds >= 0"),
    ("nan", "--report-period must be a finite number of seconds >= 0"),
    ("inf", "--report-period must be a finite number of seconds >= 0"),
    ("soon", "argument --report-period: invalid float value: 'soon'"),
])
def test_a_bad_report_period_exits_2_naming_the_flag(value, said, capsys):
    with pytest.raises(SystemExit) as e:
        cluster.main(["--report-period", value, "--no-write"])
    assert e.value.code == 2
    assert said in capsys.readouterr().err


def test_a_lagged_run_passes_its_period_and_counts_the_refusals():
    job = ("web", 2, 2, 0.1, 7, 1.0, 2 * 2**30, ("kvsaga", "workflow", "lru"), None, 0.5)
    row = cluster.run_one(job)
    assert (row["report_period_s"], row["num_refused"]) == (0.5, 0)
    args = SimpleNamespace(report_period=0.5)
    reused = {k: v for k, v in row.items() if k not in ("num_refused", "refused_gb")}
    assert cluster.refusal_lines([row, reused], args) == [
        "- imports refused (reports every 0.5 s): kvsaga + workflow + lru 0 (0.00 GB)."]
    assert cluster.refusal_lines([row], SimpleNamespace(report_period=None)) == []


class _Serial:
    map = staticmethod(map)


def test_the_thrash_load_is_the_first_where_one_gpu_keeps_half_its_roomy_hit_rate(
        monkeypatch):
    """Seed 1 keeps 0.8 / load of its roomy hit rate, seed 2 0.9 / load: the mean drops to
    0.425 at load 2 (0.85 at load 1); only the fit seeds are simulated."""
    seen = []

    def hit(job):
        family, spg, scale, seed, load, kv = job
        seen.append(seed)
        return 0.9 if kv == cluster.ROOMY_KV else 0.9 * (0.8 if seed == 1 else 0.9) / load

    monkeypatch.setattr(cluster, "one_gpu_hit_rate", hit)
    load, lines = cluster.thrash_load("bfcl", 8, 0.1, "1G", _Serial())
    assert load == 2.0
    assert set(seen) == set(cluster.FIT_SEEDS)
    assert [ln.split(":")[1] for ln in lines] == [" load 0.5x", " load 1x", " load 2x"]
    assert lines[-1].endswith("(mean 0.43)")


def test_no_thrash_on_the_grid_says_so_and_takes_the_largest_load(monkeypatch):
    monkeypatch.setattr(cluster, "one_gpu_hit_rate", lambda job: 0.5)
    load, lines = cluster.thrash_load("bfcl", 8, 0.1, "1G", _Serial())
    assert load == cluster.LOAD_GRID[-1]
    assert "no load of the grid thrashes one GPU" in lines[-1]


def test_one_gpu_thrashes_with_less_memory_on_a_real_trace():
    """The criterion's measurement itself: the same trace on one GPU keeps less of its hit
    rate with a small pool than with the roomy one."""
    job = ("swe", 6, 0.05, 1, 4.0)
    small = cluster.one_gpu_hit_rate((*job, "1G"))
    roomy = cluster.one_gpu_hit_rate((*job, cluster.ROOMY_KV))
    assert 0 <= small < roomy <= 1


def test_a_section_written_before_the_end_names_the_cases_not_finished():
    """A fleet run writes its section after each case: a stopped run keeps what finished,
    and the section says which cases it lacks (the last write has no such line)."""
    args = SimpleNamespace(report_period=None, sessions_per_gpu=64, fit_seeds=False)
    row = {"scheduler": "fcfs", "policy": "lru", "load_imbalance": 1.0}
    rows = [{**row, "router": "round-robin", "tct_mean_s": 30.0},
            {**row, "router": "affinity", "tct_mean_s": 20.0},
            {**row, "router": "kvsaga", "scheduler": "workflow", "tct_mean_s": 10.0}]
    done = [(64, "bfcl", 11, 4.0, rows)]
    partial = cluster.section_body(args, "python bench/cluster.py", [], done, ["(lines)"],
                                   [(64, "swe", 11), (64, "web", 11)])
    assert "**Partial**: written after 1 of 3 cases; not finished then (GPUs, family, " \
           "seed): (64, swe, 11), (64, web, 11)." in partial
    assert "| 64 | bfcl | 11 | 4x | 3.00x | 2.00x | 1.000 | met |" in partial
    final = cluster.section_body(args, "python bench/cluster.py", [], done, ["(lines)"], [])
    assert "Partial" not in final and final.startswith("`python bench/cluster.py`")


def test_a_family_no_load_thrashes_is_outside_the_goals_not_a_miss(monkeypatch):
    """When no load of the grid thrashes one GPU (one GPU keeps its whole roomy hit rate,
    as bfcl does at 16 sessions per GPU), the goals' premise fails: the family is named,
    its rows say n/a (not missed) and the section says why; a family that thrashes keeps
    its verdict."""
    monkeypatch.setattr(cluster, "one_gpu_hit_rate",
                        lambda job: 0.8 if job[0] == "bfcl" or job[5] == cluster.ROOMY_KV
                        else 0.1)
    args = SimpleNamespace(family="bfcl,swe", load="thrash", sessions_per_gpu=16,
                           scale=0.1, kv_memory="1G", fit_seeds=False, report_period=None)
    loads, lines, no_thrash = cluster.family_loads(args, _Serial())
    assert no_thrash == frozenset({"bfcl"})
    assert loads == {"bfcl": cluster.LOAD_GRID[-1], "swe": cluster.LOAD_GRID[0]}
    row = {"scheduler": "fcfs", "policy": "lru", "load_imbalance": 1.3}
    rows = [{**row, "router": "round-robin", "tct_mean_s": 15.0},
            {**row, "router": "affinity", "tct_mean_s": 12.0},
            {**row, "router": "kvsaga", "scheduler": "workflow", "tct_mean_s": 10.0}]
    done = [(64, "bfcl", 7, 16.0, rows), (64, "swe", 7, 0.5, rows)]
    body = cluster.section_body(args, "python bench/cluster.py", lines, done, [], [],
                                no_thrash)
    assert "| 64 | bfcl | 7 | 16x | 1.50x | 1.20x | 1.300 | n/a (one GPU does not thrash) |" \
        in body
    assert "| 64 | swe | 7 | 0.5x | 1.50x | 1.20x | 1.300 | missed |" in body
    assert "bfcl: no load of the grid thrashes one GPU (above), so the goals' premise" in body
    assert "n/a" not in "\n".join(cluster.summary(done))


def _goal_rows(rr_s: float, aff_s: float, mine_s: float, imbalance: float = 1.0) -> list[dict]:
    row = {"scheduler": "fcfs", "policy": "lru", "load_imbalance": imbalance, "tct_p95_s": 1.0,
           "tasks_per_hour": 1.0, "migrated_gb": 0.0, "num_moved": 1234, "recomputed_tokens": 0,
           "hit_rate": 0.5, "gpus": 64}
    return [{**row, "router": "round-robin", "tct_mean_s": rr_s},
            {**row, "router": "affinity", "tct_mean_s": aff_s},
            {**row, "router": "kvsaga", "scheduler": "workflow", "tct_mean_s": mine_s}]


def test_the_goal_text_says_where_the_floor_leaves_a_target_no_room():
    """1.64x over affinity with a floor of 100 s: affinity at 160 s puts it out of reach,
    at 166 s it needs a mean TCT within 1.2% of the floor (no practical room), at 200 s
    there is room (22%); an n/a family gets no text."""
    results = [(64, "assistant", 7, 4.0, _goal_rows(300.0, 160.0, 120.0), 100.0),
               (64, "assistant", 11, 4.0, _goal_rows(300.0, 166.0, 120.0), 100.0),
               (64, "assistant", 12, 4.0, _goal_rows(300.0, 200.0, 120.0), 100.0),
               (64, "bfcl", 7, 16.0, _goal_rows(300.0, 100.0, 120.0), 100.0)]
    text = "\n".join(cluster.goal_text(results, frozenset({"bfcl"})))
    assert ("over affinity (target 1.64x) the floor bounds any router at 1.60x, 1.66x, 2.00x "
            "(seeds 7, 11, 12): out of any router's reach on seed 7; no practical room on "
            "seed 11 (1.2%); room on seed 12 (22.0%)") in text
    assert "over round-robin (target 2.0x) the floor bounds any router at 3.00x, 3.00x, " \
           "3.00x (seeds 7, 11, 12): room on seeds 7 (50.0%), 11 (50.0%), 12 (50.0%)" in text
    assert "bfcl" not in text
    lines = cluster.verdicts(results[1][4], floor_s=100.0)
    assert ("- the 1.64x target over affinity leaves no practical room here: it needs a mean "
            "TCT of at most 101.2 s, within 1.2% of the floor, which counts no queueing at "
            "all.") in lines
    assert lines[-1].endswith("mean TCT 20.0% above the floor.")


def test_baseline_rows_read_back_what_a_section_printed(tmp_path):
    """--routers reuses a previous run's rows from its tables: each printed cell comes back
    as the value it printed (commas and all), by (GPUs, family, seed)."""
    rows = _goal_rows(473.2, 424.2, 306.3, 1.182)
    args = SimpleNamespace(report_period=None, gpus="64", sessions_per_gpu=16, load="thrash")
    title = cluster.section_title(args)
    table = cluster.format_rows(rows)
    path = tmp_path / "RESULTS.md"
    path.write_text(f"## Other\n\n### 64 GPUs: 1024 assistant sessions (seed 9, x)\n\n```\n"
                    f"{table}\n```\n\n{title}\n\ntext\n\n### 64 GPUs: 1024 assistant sessions "
                    f"(seed 7, load 4x, scale 0.2), 3G KV per GPU (574 s of simulation)\n\n"
                    f"```\n{table}\n```\n\n- verdicts\n")
    found = cluster.baseline_rows(path, title)
    assert list(found) == [(64, "assistant", 7)]
    for got, want in zip(found[(64, "assistant", 7)], rows, strict=True):
        assert {k: got[k] for k in want} == want
        assert got["reused"] and got["wall_s"] == 0.0 and got["case_wall_s"] == 574.0
    with pytest.raises(ValueError, match="has no section"):
        cluster.baseline_rows(path, "## Cluster routing (simulated, 3 GPUs)")


class _Now:
    """A pool that runs each job at once."""

    @staticmethod
    def submit(fn, job):
        from concurrent.futures import Future
        f = Future()
        f.set_result(fn(job))
        return f


def test_routers_simulates_only_the_named_router_and_reuses_the_baselines(tmp_path,
                                                                          monkeypatch):
    args = SimpleNamespace(gpus="64", family="assistant", seed="7", sessions_per_gpu=16,
                           scale=0.2, load="thrash", kv_memory="3G", runs="goal", ideal=False,
                           routers={"kvsaga"}, baselines=tmp_path / "RESULTS.md",
                           report_period=None)
    old = _goal_rows(473.2, 424.2, 306.3, 1.182)
    args.baselines.write_text(
        f"{cluster.section_title(args)}\n\n### 64 GPUs: 1024 assistant sessions (seed 7, "
        f"load 4x, scale 0.2), 3G KV per GPU (574 s of simulation)\n\n```\n"
        f"{cluster.format_rows(old)}\n```\n")
    ran, mine = [], old[2]

    def run_one(job):
        ran.append(job[7])
        return {**mine, "tct_mean_s": 300.0, "wall_s": 5.0}

    monkeypatch.setattr(cluster, "run_one", run_one)
    monkeypatch.setattr(cluster, "floor_tct", lambda sessions, cost: 250.0)
    monkeypatch.setattr(cluster, "trace", lambda *a: [None] * 1024)
    results, lines = cluster.report(args, 3 * 2**30, {"assistant": 4.0}, _Now())
    assert ran == [("kvsaga", "workflow", "lru")]
    rows = results[0][4]
    assert [r["tct_mean_s"] for r in rows] == [473.2, 424.2, 300.0]
    assert lines[0].endswith("(5 s of simulation; the affinity, round-robin rows reused "
                             "from RESULTS.md, whose run of the case took 574 s)")
    # A section written from reused rows alone names the first run's time again.
    args.routers = set()
    monkeypatch.setattr(cluster, "run_one", None)
    results, lines = cluster.report(args, 3 * 2**30, {"assistant": 4.0}, _Now())
    assert lines[0].endswith("(0 s of simulation; the affinity, kvsaga, round-robin rows "
                             "reused from RESULTS.md, whose run of the case took 574 s)")
    monkeypatch.setattr(cluster, "run_one", run_one)
    args.routers = {"affinity"}  # no kvsaga row to reuse: a clear error
    old.pop()
    args.baselines.write_text(
        f"{cluster.section_title(args)}\n\n### 64 GPUs: 1024 assistant sessions (seed 7, "
        f"load 4x, scale 0.2), 3G KV per GPU (9 s of simulation)\n\n```\n"
        f"{cluster.format_rows(old)}\n```\n")
    with pytest.raises(ValueError, match="has no kvsaga \\+ workflow \\+ lru row for 64 GPUs"):
        cluster.report(args, 3 * 2**30, {"assistant": 4.0}, _Now())


@pytest.mark.parametrize("heading, wrong", [
    ("load 4x, scale 0.1), 3G KV", "scale 0.1 (this run: 0.2)"),
    ("load 2x, scale 0.2), 3G KV", "load 2x (this run: 4x)"),
    ("load 4x, scale 0.2), 2G KV", "KV 2G (this run: 3G)"),
])
def test_baselines_of_another_scale_load_or_kv_are_refused(tmp_path, monkeypatch, heading,
                                                            wrong):
    """A section of the same fleet can hold a run at another scale, load or KV memory (the
    title does not name them): its rows are another experiment, so reusing them is an
    error naming what differs; the same KV spelled otherwise ("3GiB") is the same run."""
    args = SimpleNamespace(gpus="64", family="assistant", seed="7", sessions_per_gpu=16,
                           scale=0.2, load="thrash", kv_memory="3G", runs="goal", ideal=False,
                           routers={"kvsaga"}, baselines=tmp_path / "RESULTS.md",
                           report_period=None)
    old = _goal_rows(473.2, 424.2, 306.3, 1.182)
    monkeypatch.setattr(cluster, "run_one", lambda job: {**old[2], "wall_s": 5.0})
    monkeypatch.setattr(cluster, "floor_tct", lambda sessions, cost: 250.0)
    monkeypatch.setattr(cluster, "trace", lambda *a: [None] * 1024)

    def write(head):
        args.baselines.write_text(
            f"{cluster.section_title(args)}\n\n### 64 GPUs: 1024 assistant sessions (seed 7, "
            f"{head} per GPU (574 s of simulation)\n\n```\n{cluster.format_rows(old)}\n```\n")

    write(heading)
    with pytest.raises(ValueError, match=re.escape(f"were run at another {wrong}")):
        cluster.report(args, 3 * 2**30, {"assistant": 4.0}, _Now())
    write("load 4x, scale 0.2), 3GiB KV")
    results, _ = cluster.report(args, 3 * 2**30, {"assistant": 4.0}, _Now())
    assert [r["tct_mean_s"] for r in results[0][4]] == [473.2, 424.2, 306.3]


def test_a_lagged_run_reuses_the_live_sections_baselines(tmp_path, monkeypatch, capsys):
    """Round-robin and affinity read no reports, so a `--report-period` run that simulates
    kvsaga takes their rows from the live section (its own section has none yet); one that
    would reuse kvsaga's live rows is refused, as those depend on the period."""
    args = SimpleNamespace(gpus="64", family="assistant", seed="7", sessions_per_gpu=16,
                           scale=0.2, load="thrash", kv_memory="3G", runs="goal", ideal=False,
                           routers={"kvsaga"}, baselines=tmp_path / "RESULTS.md",
                           report_period=0.5)
    old = _goal_rows(473.2, 424.2, 306.3, 1.182)
    live = cluster.section_title(SimpleNamespace(**{**vars(args), "report_period": None}))
    args.baselines.write_text(
        f"{live}\n\n### 64 GPUs: 1024 assistant sessions (seed 7, load 4x, scale 0.2), 3G KV "
        f"per GPU (574 s of simulation)\n\n```\n{cluster.format_rows(old)}\n```\n")
    ran = []

    def run_one(job):
        ran.append((job[7], job[9]))
        return {**old[2], "tct_mean_s": 310.0, "wall_s": 5.0, "num_refused": 0,
                "refused_gb": 0.0, "report_period_s": 0.5}

    monkeypatch.setattr(cluster, "run_one", run_one)
    monkeypatch.setattr(cluster, "floor_tct", lambda sessions, cost: 250.0)
    monkeypatch.setattr(cluster, "trace", lambda *a: [None] * 1024)
    results, _ = cluster.report(args, 3 * 2**30, {"assistant": 4.0}, _Now())
    assert ran == [(("kvsaga", "workflow", "lru"), 0.5)]
    assert [r["tct_mean_s"] for r in results[0][4]] == [473.2, 424.2, 310.0]
    with pytest.raises(SystemExit) as e:
        cluster.main(["--report-period", "0.5", "--routers", "affinity", "--baselines",
                      str(args.baselines), "--no-write"])
    assert e.value.code == 2
    assert "--report-period with --routers must simulate kvsaga" in capsys.readouterr().err
