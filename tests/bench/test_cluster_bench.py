"""bench/cluster.py's floor: a lower bound on any router's mean TCT, computed from the cost
model without simulating (what its RESULTS lines call a target out of any router's reach)."""

from __future__ import annotations

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
    args = SimpleNamespace(gpus=gpus, sessions_per_gpu=spg, load=load)
    assert cluster.section_title(args) == title


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
    args = SimpleNamespace(sessions_per_gpu=64)
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
                           scale=0.1, kv_memory="1G")
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
