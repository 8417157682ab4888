"""compare / run_many: rows in order, Belady added as the reference, the same rows whatever
the number of worker processes."""

from __future__ import annotations

import dataclasses

import pytest

from kvsaga.sim.compare import compare, peak_working_set, run_many
from kvsaga.sim.simulator import SimConfig, simulate
from kvsaga.sim.workloads import WORKLOADS, generate

TRACE = generate("swe", 4, seed=2, scale=0.05, arrival_rate=1.0)
BASE = SimConfig(num_gpu_blocks=400)


def test_rows_do_not_depend_on_jobs():
    # 120 blocks: Belady recomputes tokens with and without a host tier (at 400 nothing is
    # evicted and it recomputes none; it used to count the prefix's partial block).
    tight = SimConfig(num_gpu_blocks=120)
    kwargs = dict(host_memory_bytes=2**31, schedulers=["fcfs", "workflow"])
    one = compare(TRACE, tight, ["lru", "graph+host"], jobs=1, **kwargs)
    two = compare(TRACE, tight, ["lru", "graph+host"], jobs=2, **kwargs)
    assert one == two
    assert [(r["scheduler"], r["policy"]) for r in one] == [
        ("fcfs", "lru"), ("fcfs", "graph+host"), ("workflow", "lru"), ("workflow", "graph+host")]
    # Each row's ratio is to Belady with its own host tier (run, though not asked for).
    ref = simulate(TRACE, SimConfig(num_gpu_blocks=120, policy="belady", scheduler="fcfs"))
    ref_host = simulate(TRACE, SimConfig(num_gpu_blocks=120, policy="belady", scheduler="fcfs",
                                         host_memory_bytes=2**31))
    assert ref.recomputed_tokens > ref_host.recomputed_tokens > 0
    assert one[0]["belady_ratio"] == one[0]["recomputed_tokens"] / ref.recomputed_tokens
    assert one[1]["belady_ratio"] == one[1]["recomputed_tokens"] / ref_host.recomputed_tokens


def test_run_many_keeps_the_order_and_checks_jobs():
    configs = [SimConfig(num_gpu_blocks=n) for n in (400, 100_000)]
    rows = run_many(TRACE, configs, jobs=2)
    assert [r["num_gpu_blocks"] for r in rows] == [400, 100_000]
    assert rows == run_many(TRACE, configs)
    for jobs in (0, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
            run_many(TRACE, configs, jobs=jobs)


def _two_tenants(seed: int, n: int, scale: float = 0.15) -> list:
    out = []
    for tenant, family in (("a", "swe"), ("b", "web")):
        spec = WORKLOADS[family]
        rate = spec.arrival_rate * 2.0 / scale
        for s in spec.generate(n, seed, arrival_rate=rate, scale=scale):
            out.append(dataclasses.replace(s, id=f"{tenant}-{s.id}", tenant=tenant))
    return sorted(out, key=lambda s: (s.arrival_s, s.id))


def test_the_peak_working_set_does_not_depend_on_the_scheduler_under_test():
    # Two tenants: the workflow scheduler's compute share reorders their steps, which moved
    # this trace's peak under it (1555 blocks against fcfs's 1507) when the peak was taken
    # under the base config's scheduler; benchmarks size capacities by the peak.
    trace = _two_tenants(seed=2, n=4)
    base = SimConfig(preset="a100-llama3-8b")
    room = sum(base.cost.kv_spec.num_blocks_for(s.total_tokens) for s in trace) + 1
    fcfs = simulate(trace, dataclasses.replace(base, scheduler="fcfs", num_gpu_blocks=room))
    for cfg in (base, dataclasses.replace(base, scheduler="fcfs"),
                dataclasses.replace(base, scheduler_params={"share_step_tokens": 64})):
        assert peak_working_set(trace, cfg) == fcfs.peak_live_blocks
