"""What `kvsaga sim` rows measure, said where a row cannot: a cluster row (--gpus/--router)
carries the tenants and their slowdowns as a single-GPU row does (they were missing without
a word), and says that it has no kv_utilization or slo_attainment; a --trace whose first
arrival lies far from 0 is told that the makespan, tasks/h and the kv_* shares count the
idle lead (the makespan runs from t=0 of the trace clock)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from kvsaga.cli import main
from kvsaga.sim.cluster import simulate_cluster
from kvsaga.sim.cluster_tenants import add_cluster_tenant_slowdowns
from kvsaga.sim.compare import compare
from kvsaga.sim.simulator import SimConfig
from kvsaga.sim.trace import write_trace
from kvsaga.sim.workloads import generate


def _two_tenants(shift: float = 0.0):
    sessions = generate("bfcl", 6, seed=2, scale=0.05, arrival_rate=2.0)
    return [dataclasses.replace(s, tenant="ab"[i % 2], arrival_s=s.arrival_s + shift)
            for i, s in enumerate(sessions)]


def _run(tmp_path, sessions, *flags):
    trace, out = tmp_path / "t.jsonl", tmp_path / "r.json"
    write_trace(sessions, trace)
    assert main(["sim", "--trace", str(trace), "--policy", "lru", "--kv-memory", "1G",
                 "--json", str(out), "--quiet", *flags]) == 0
    return json.loads(out.read_text())["results"]


def test_cluster_rows_carry_tenants_and_their_slowdowns(tmp_path, capsys):
    rows = _run(tmp_path, _two_tenants(), "--gpus", "2", "--router", "round-robin,kvsaga")
    assert len(rows) == 2
    for r in rows:
        assert set(r["tenants"]) == {"a", "b"}
        assert sum(t["tasks"] for t in r["tenants"].values()) == 6
        for t in r["tenants"].values():
            assert t["slowdown"] == pytest.approx(t["tct_mean_s"] / t["tct_alone_s"])
        slow = [t["slowdown"] for t in r["tenants"].values()]
        assert r["afs_max_slowdown_ratio"] == pytest.approx(max(slow) / min(slow))
        assert "kv_utilization" not in r and "slo_attainment" not in r
    err = capsys.readouterr().err
    assert "carry no kv_utilization or slo_attainment" in err
    assert "no tenant slowdowns" not in err


def test_a_one_gpu_cluster_row_has_the_single_gpu_rows_slowdowns():
    sessions = _two_tenants()
    cfg = SimConfig(kv_memory_bytes=1 << 30, policy="lru")
    single = compare(sessions, cfg, ["lru"])[0]
    row = simulate_cluster(sessions, cfg, gpus=1, router="round-robin").row()
    add_cluster_tenant_slowdowns(row, sessions, cfg, 1, "round-robin")
    for t, entry in single["tenants"].items():
        for key in ("tasks", "tct_mean_s", "tct_alone_s", "slowdown"):
            assert row["tenants"][t][key] == pytest.approx(entry[key], rel=1e-9), (t, key)
    assert row["afs_max_slowdown_ratio"] == pytest.approx(single["afs_max_slowdown_ratio"])


def test_one_tenant_cluster_rows_have_none(tmp_path):
    sessions = [dataclasses.replace(s, tenant=None) for s in _two_tenants()]
    for r in _run(tmp_path, sessions, "--gpus", "2", "--router", "round-robin"):
        assert r["tenants"] is None and "afs_max_slowdown_ratio" not in r


def test_a_tenant_too_long_for_its_share_is_said_and_the_run_goes_on(tmp_path, capsys):
    sessions = _two_tenants()
    cfg = SimConfig()
    need = max(cfg.cost.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    memory = (need + 1) * cfg.cost.block_bytes  # the longest fits a GPU, not half of one
    trace, out = tmp_path / "t.jsonl", tmp_path / "r.json"
    write_trace(sessions, trace)
    assert main(["sim", "--trace", str(trace), "--policy", "lru", "--kv-memory", str(memory),
                 "--gpus", "2", "--router", "round-robin", "--json", str(out),
                 "--quiet"]) == 0
    assert "no tenant slowdowns with --gpus: tenant" in capsys.readouterr().err
    (row,) = json.loads(out.read_text())["results"]
    assert set(row["tenants"]) == {"a", "b"} and "afs_max_slowdown_ratio" not in row


@pytest.mark.parametrize("cluster", [[], ["--gpus", "2", "--router", "round-robin"]])
def test_a_trace_starting_far_from_zero_is_told_its_idle_lead(tmp_path, capsys, cluster):
    _run(tmp_path, _two_tenants(), *cluster)
    assert "idle lead" not in capsys.readouterr().err  # a generated trace starts near 0
    _run(tmp_path, _two_tenants(shift=1000.0), *cluster)
    err = capsys.readouterr().err
    assert "kvsaga sim: note: the trace's first arrival is at 1,0" in err
    assert "makespan_s runs from t=0 of the trace clock" in err
    assert "tasks_per_hour and the kv_* shares count that idle lead" in err
