"""What docs/simulator.md and ClusterResult's docstring now state (they said otherwise):
the tenant share's per-step overhead is multiplied by k, not divided; a cluster's makespan is
the latest GPU clock, not a sum over GPUs."""

from __future__ import annotations

import pytest

from kvsaga.sim.cluster import ClusterSimulator
from kvsaga.sim.compare import tenant_share
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import generate


@pytest.mark.parametrize("k", [2, 3])
def test_tenant_share_multiplies_the_step_overhead(k):
    base = SimConfig(num_gpu_blocks=600)
    share = tenant_share(base, k)
    assert share.cost.step_overhead_s == pytest.approx(base.cost.step_overhead_s * k)
    assert share.cost.gpu.peak_flops == pytest.approx(base.cost.gpu.peak_flops / k)
    assert share.blocks() == 600 // k


def test_cluster_makespan_is_the_latest_gpu_clock():
    sim = ClusterSimulator(generate("swe", 4, seed=1, scale=0.05),
                           SimConfig(kv_memory_bytes=2**30, policy="lru"), gpus=2,
                           router="round-robin")
    res = sim.run()
    clocks = [g.now for g in sim.gpus.active]
    assert len(clocks) == 2 and res.makespan_s == max(clocks) < sum(clocks)
