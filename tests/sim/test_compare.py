"""compare / run_many: rows in order, Belady added as the reference, the same rows whatever
the number of worker processes."""

from __future__ import annotations

import pytest

from kvsaga.sim.compare import compare, run_many
from kvsaga.sim.simulator import SimConfig, simulate
from kvsaga.sim.workloads import generate

TRACE = generate("swe", 4, seed=2, scale=0.05, arrival_rate=1.0)
BASE = SimConfig(num_gpu_blocks=400)


def test_rows_do_not_depend_on_jobs():
    kwargs = dict(host_memory_bytes=2**31, schedulers=["fcfs", "workflow"])
    one = compare(TRACE, BASE, ["lru", "graph+host"], jobs=1, **kwargs)
    two = compare(TRACE, BASE, ["lru", "graph+host"], jobs=2, **kwargs)
    assert one == two
    assert [(r["scheduler"], r["policy"]) for r in one] == [
        ("fcfs", "lru"), ("fcfs", "graph+host"), ("workflow", "lru"), ("workflow", "graph+host")]
    # Each row's ratio is to Belady with its own host tier (run, though not asked for).
    ref = simulate(TRACE, SimConfig(num_gpu_blocks=400, policy="belady", scheduler="fcfs"))
    assert one[0]["belady_ratio"] == one[0]["recomputed_tokens"] / ref.recomputed_tokens


def test_run_many_keeps_the_order_and_checks_jobs():
    configs = [SimConfig(num_gpu_blocks=n) for n in (400, 100_000)]
    rows = run_many(TRACE, configs, jobs=2)
    assert [r["num_gpu_blocks"] for r in rows] == [400, 100_000]
    assert rows == run_many(TRACE, configs)
    for jobs in (0, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be an integer >= 1"):
            run_many(TRACE, configs, jobs=jobs)
