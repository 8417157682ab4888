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
    ("8", 16, 2.0, "## Cluster routing (simulated)"),
    ("64", 8, 2.0, "## Cluster routing (simulated, 64 GPUs)"),
    ("8", 64, 8.0, "## Cluster routing (simulated, 64 sessions per GPU at 8x)"),
    ("8", 16, 4.0, "## Cluster routing (simulated, 16 sessions per GPU at 4x)"),
])
def test_each_fleet_and_load_writes_its_own_section(gpus, spg, load, title):
    args = SimpleNamespace(gpus=gpus, sessions_per_gpu=spg, load=load)
    assert cluster.section_title(args) == title
