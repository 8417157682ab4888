"""A multi-tenant trace whose tenants cannot each run alone on 1/k of the GPU (the
slowdowns' denominators) is refused before any simulation, naming the tenant, its share and
--kv-memory (review repro t_ab.jsonl at --kv-memory 2G: every simulation ran, then the
first "alone" run failed with an error naming num_gpu_blocks)."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

from kvsaga.cli import main
from kvsaga.sim.compare import add_tenant_slowdowns, compare, tenant_share_misfit
from kvsaga.sim.config import SimConfig
from kvsaga.sim.trace import write_trace
from kvsaga.sim.workloads import generate

# the module (kvsaga.sim re-exports the function `compare` under the same name)
compare_mod = importlib.import_module("kvsaga.sim.compare")


def _two_tenants():
    sessions = generate("swe", 4, seed=3, scale=0.05)
    return [dataclasses.replace(s, tenant="ab"[i % 2]) for i, s in enumerate(sessions)]


def _blocks_between():
    """A capacity that holds the longest session but not on half of it."""
    sessions = _two_tenants()
    cfg = SimConfig(num_gpu_blocks=1)
    need = max(cfg.cost.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    return sessions, need + need // 2


def test_misfit_names_the_tenant_share_and_flag():
    sessions, blocks = _blocks_between()
    problem = tenant_share_misfit(sessions, SimConfig(num_gpu_blocks=blocks))
    assert problem is not None
    assert f"1/2: {blocks // 2:,} of its {blocks:,} KV blocks" in problem
    assert "--kv-memory" in problem and "tenant '" in problem
    assert tenant_share_misfit(sessions, SimConfig(num_gpu_blocks=4 * blocks)) is None
    one = [dataclasses.replace(s, tenant=None) for s in sessions]
    assert tenant_share_misfit(one, SimConfig(num_gpu_blocks=blocks)) is None


def test_compare_refuses_before_any_simulation(monkeypatch):
    sessions, blocks = _blocks_between()

    def no_run(*args, **kwargs):
        raise AssertionError("a simulation ran before the refusal")

    monkeypatch.setattr(compare_mod, "run_many", no_run)
    monkeypatch.setattr(compare_mod, "simulate", no_run)
    with pytest.raises(ValueError, match="its share of the GPU"):
        compare(sessions, SimConfig(num_gpu_blocks=blocks), ["lru"])
    with pytest.raises(ValueError, match="its share of the GPU"):
        add_tenant_slowdowns({"tenants": {}}, sessions, SimConfig(num_gpu_blocks=blocks))


def test_cli_exits_2_naming_the_flag(tmp_path, capsys):
    sessions, blocks = _blocks_between()
    trace = tmp_path / "t.jsonl"
    write_trace(sessions, trace)
    size = blocks * SimConfig(num_gpu_blocks=1).cost.block_bytes
    assert main(["sim", "--trace", str(trace), "--policy", "lru", "--kv-memory", str(size),
                 "--quiet", "--jobs", "1"]) == 2
    err = capsys.readouterr().err
    assert "its share of the GPU" in err and "--kv-memory" in err
    assert "num_gpu_blocks must be" not in err
