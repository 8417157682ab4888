"""Decode runs (`Simulator._decode_run`) change nothing: every figure of a run equals the
slow reference (`reference=True`, `Scheduler.schedule` for every batch step), under pressure
(preemptions, evictions mid-run), with a host tier (offloads, loads, prefetches, copy waits),
with several tenants, and on a cluster of simulated GPUs."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvsaga.sim.cluster import ClusterSimulator
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.workloads import generate


def tiny_trace(family: str = "swe", seed: int = 1, n: int = 12):
    # Dense and under pressure: arrivals far faster than the family default.
    return generate(family, n, seed=seed, scale=0.05, arrival_rate=1.0)


def same(a: dict, b: dict) -> bool:
    """Equal dicts, NaN equal to NaN."""
    if a.keys() != b.keys():
        return False
    for k, x in a.items():
        y = b[k]
        if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
            continue
        if x != y:
            return False
    return True


def run_both(sessions, config):
    """(reference result, fast result, schedule calls of each)."""
    out = []
    for reference in (True, False):
        sim = Simulator(sessions, config, reference=reference)
        calls = [0]
        schedule = sim.scheduler.schedule

        def counted(now, executor, _schedule=schedule, _calls=calls):
            _calls[0] += 1
            return _schedule(now, executor)

        sim.scheduler.schedule = counted
        result = sim.run()
        sim.manager.check_integrity()
        assert not sim.scheduler.has_work
        out += [result.to_dict(), calls[0]]
    ref, ref_calls, fast, fast_calls = out
    return ref, fast, ref_calls, fast_calls


@pytest.mark.parametrize("scheduler", ["fcfs", "workflow"])
@pytest.mark.parametrize("policy", ["lru", "ttl", "graph", "saga", "belady"])
@pytest.mark.parametrize("num_gpu_blocks", [380, 750, 100_000])
def test_decode_runs_equal_the_reference(scheduler, policy, num_gpu_blocks):
    config = SimConfig(num_gpu_blocks=num_gpu_blocks, scheduler=scheduler, policy=policy)
    ref, fast, ref_calls, fast_calls = run_both(tiny_trace(), config)
    assert same(ref, fast), {k: (ref[k], fast[k]) for k in ref if ref[k] != fast[k]}
    # The fast path ran: decode steps went without a scheduler call (most of them when
    # nothing waits for room).
    assert fast_calls < ref_calls
    assert fast_calls * 3 < ref_calls or num_gpu_blocks < 100_000


def test_pressure_is_exercised():
    """The traces above preempt and evict, so runs end at allocations that could fail."""
    config = SimConfig(num_gpu_blocks=380, scheduler="fcfs", policy="lru")
    ref, fast, _, _ = run_both(tiny_trace(), config)
    assert ref["num_preemptions"] > 0 and ref["num_evicted_blocks"] > 0
    assert same(ref, fast)


@pytest.mark.parametrize("policy", ["lru", "graph", "saga"])
@pytest.mark.parametrize("scheduler", ["fcfs", "workflow"])
def test_host_tier_runs_equal_the_reference(policy, scheduler):
    config = SimConfig(num_gpu_blocks=400, num_host_blocks=600, scheduler=scheduler,
                       policy=policy)
    ref, fast, _, _ = run_both(tiny_trace(), config)
    assert ref["bytes_offloaded"] > 0 and ref["bytes_reloaded"] > 0
    assert same(ref, fast), {k: (ref[k], fast[k]) for k in ref if ref[k] != fast[k]}


def test_tenants_and_other_families_equal_the_reference():
    sessions = [dataclasses.replace(s, tenant="a") for s in tiny_trace("bfcl", n=20)] + [
        dataclasses.replace(s, id=f"b-{s.id}", tenant="b") for s in tiny_trace("web", 2, 6)]
    for scheduler in ("fcfs", "workflow"):
        config = SimConfig(num_gpu_blocks=900, scheduler=scheduler, policy="graph")
        ref, fast, _, _ = run_both(sessions, config)
        assert ref["tenants"] is not None
        assert same(ref, fast)


@pytest.mark.parametrize("router", ["round-robin", "affinity", "kvsaga"])
def test_cluster_runs_equal_the_reference(router):
    sessions = generate("swe", 16, seed=3, scale=0.05, arrival_rate=2.0)
    rows = []
    for reference in (True, False):
        cluster = ClusterSimulator(sessions, SimConfig(num_gpu_blocks=400, policy="graph"),
                                   gpus=2, router=router)
        for gpu in cluster.gpus:
            gpu.reference = reference
        rows.append(cluster.run().row())
    assert same(*rows), rows


@pytest.mark.parametrize("scheduler", ["fcfs", "workflow"])
@pytest.mark.parametrize("num_host_blocks", [0, 600])
def test_runs_while_steps_wait_equal_the_reference(scheduler, num_host_blocks):
    """A decode run goes on while steps wait for room, asking the scheduler's admissions
    (`Scheduler.admit_waiting`) at each of its steps; the step that admits is run as
    `schedule`'s would be. Both happen here (and the host tier's step-by-step runs too),
    and every figure equals the reference's."""
    config = SimConfig(num_gpu_blocks=400, num_host_blocks=num_host_blocks,
                       scheduler=scheduler, policy="graph")
    sessions = tiny_trace()
    ref = Simulator(sessions, config, reference=True).run().to_dict()
    sim = Simulator(sessions, config)
    asked = {False: 0, True: 0}  # _admits answers, with something waiting
    admits = sim._admits

    def counted(running, start, j):
        out = admits(running, start, j)
        if sim._admit_budget:
            asked[out] += 1
        return out

    sim._admits = counted
    fast = sim.run().to_dict()
    sim.manager.check_integrity()
    assert asked[True] > 0 and asked[False] > asked[True]
    assert same(ref, fast), {k: (ref[k], fast[k]) for k in ref if ref[k] != fast[k]}
