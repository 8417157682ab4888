"""Cluster simulations of many GPUs: a GPU is built when a step first reaches it.

Every GPU used to be built up front, each a Simulator whose manager holds per-block lists
(~1.7 MB at the default preset), so `kvsaga sim --gpus 100000` ran out of memory before its
first step (1,024 GPUs: 1.8 GB on a 4-session trace). A GPU no step reaches now reports a
fresh GPU's stats to the router without being built; the results are those of building every
GPU first, and a count over MAX_GPUS is refused by name."""

from __future__ import annotations

import pytest

from kvsaga.cli import main
from kvsaga.sim.cluster import _GPU, MAX_GPUS, ClusterSimulator, simulate_cluster
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import generate

SESSIONS = generate("swe", 3, seed=5, scale=0.05, arrival_rate=1.0)
CONFIG = SimConfig(kv_memory_bytes=2**30, scheduler="workflow", policy="lru")
ROUTERS = ["round-robin", "affinity", "kvsaga"]


class CountedGPU(_GPU):
    built = 0

    def __init__(self, *args, **kwargs) -> None:
        CountedGPU.built += 1
        super().__init__(*args, **kwargs)


class Counted(ClusterSimulator):
    gpu_class = CountedGPU


@pytest.mark.parametrize("router", ROUTERS)
def test_only_the_gpus_steps_reach_are_built(router):
    CountedGPU.built = 0
    sim = Counted(SESSIONS, CONFIG, gpus=400, router=router)
    assert CountedGPU.built == 0 and len(sim.gpus) == 400
    res = sim.run()
    steps = sum(len(s.steps) for s in SESSIONS)
    # The GPUs routed to, gpu0 (the result names its policy) and one fresh GPU whose stats
    # stand for every GPU not built.
    assert len(sim.gpus.active) <= steps + 1
    assert CountedGPU.built <= len(sim.gpus.active) + 1
    assert res.gpus == 400 and res.num_sessions == len(SESSIONS)
    for g in sim.gpus.active:
        g.manager.check_integrity()
        assert not g.manager.sessions


@pytest.mark.parametrize("router", ROUTERS)
@pytest.mark.parametrize("gpus", [1, 2, 3, 5, 16])
def test_building_every_gpu_first_changes_nothing(router, gpus):
    """The run with GPUs built as steps reach them equals the run with every GPU built
    before it starts (as all were before), to the bit, GPU by GPU."""
    lazy = ClusterSimulator(SESSIONS, CONFIG, gpus=gpus, router=router)
    eager = ClusterSimulator(SESSIONS, CONFIG, gpus=gpus, router=router)
    assert len(list(eager.gpus)) == gpus and len(eager.gpus.active) == gpus
    assert lazy.run().row() == eager.run().row()
    for a, b in zip(lazy.gpus, eager.gpus, strict=True):  # builds the rest of `lazy`
        assert (a.name, a._busy, a.now, a._counts, a.tenant_service) == (
            b.name, b._busy, b.now, b._counts, b.tenant_service)
        assert a.manager.stats() == b.manager.stats()


def test_the_gpus_index_and_names_as_a_list():
    sim = ClusterSimulator(SESSIONS, CONFIG, gpus=5, router="round-robin")
    assert sim.gpus[-1] is sim.gpus[4] and sim.gpus[4].name == "gpu4"
    assert [g.name for g in sim.gpus[1:3]] == ["gpu1", "gpu2"]
    assert sim.by_name["gpu2"] is sim.gpus[2] and list(sim.by_name) == sim.gpus.names
    assert [g.name for g in sim.gpus.active] == ["gpu1", "gpu2", "gpu4"]  # index order
    with pytest.raises(IndexError, match="GPU index 5 out of range for 5 GPUs"):
        sim.gpus[5]


@pytest.mark.parametrize("gpus", [0, -1, True, 2.0, MAX_GPUS + 1])
def test_a_bad_gpu_count_is_refused_by_name(gpus):
    with pytest.raises(ValueError, match="gpus must be"):
        ClusterSimulator(SESSIONS, CONFIG, gpus=gpus)


def test_the_largest_count_runs_in_bounded_memory():
    """MAX_GPUS GPUs on a small trace: round-robin builds at most one GPU per step."""
    res = simulate_cluster(SESSIONS, CONFIG, gpus=MAX_GPUS, router="round-robin")
    assert res.gpus == MAX_GPUS and res.num_sessions == len(SESSIONS)


def test_the_cli_refuses_more_than_max_gpus_with_exit_2(capsys):
    args = ["sim", "--workload", "swe", "--sessions", "2", "--scale", "0.02", "--quiet",
            "--policy", "lru", "--router", "round-robin"]
    assert main([*args, "--gpus", str(MAX_GPUS + 1)]) == 2
    captured = capsys.readouterr()
    assert f"--gpus {MAX_GPUS + 1:,} is more than {MAX_GPUS:,}" in captured.err
    assert "Traceback" not in captured.err and "router  gpus" not in captured.out
    assert main([*args, "--gpus", "5000"]) == 0
    assert "on 5000 GPUs" in capsys.readouterr().out
