"""kvsaga.sim.metrics: the usage recorder's time integrals."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from kvsaga.pool import BlockPool
from kvsaga.sim.metrics import UsageRecorder
from kvsaga.sim.simulator import SimConfig, simulate
from kvsaga.sim.workloads import generate


def test_live_share_integrates_live_blocks_capped_at_the_pool():
    pool = BlockPool(10)
    rec = UsageRecorder(pool)
    rec.live_blocks = 4
    rec.advance(2.0)  # 4 blocks x 2 s
    rec.live_blocks = 25  # more live context than the pool: counts as the whole pool
    rec.advance(3.0)  # 10 x 1 s
    rec.live_blocks = 0
    rec.advance(5.0)
    assert rec.live_s == pytest.approx(18.0)
    assert rec.active_s == rec.occupied_s == 0.0  # nothing allocated


@pytest.mark.parametrize("num_gpu_blocks", [None, 750])
def test_utilization_stays_near_the_live_share(num_gpu_blocks):
    """Blocks reused later belong to live sessions, or are a shared prefix that a later
    session hits; the latter is at most the prefix's few blocks."""
    sessions = generate("swe", 6, seed=3, scale=0.05)
    r = simulate(sessions, SimConfig(num_gpu_blocks=num_gpu_blocks))
    assert 0 < r.kv_live_share <= 1
    assert r.kv_utilization <= r.kv_live_share + 0.05


@pytest.mark.parametrize("times", [
    [0.1 * k + 0.013 * k * k for k in range(1, 40)],  # a run's step ends: arrays
    [0.5, 0.5, 0.7, 0.7, 0.9, 1.3, 1.3, 2.0, 2.5, 3.1],  # repeated ends add nothing
    [0.5, 0.4, 0.9, 1.3, 1.2, 2.0, 2.2, 2.4, 2.6, 3.0],  # falling: step by step
    [0.2, 0.3],  # too short for arrays
])
def test_advance_through_equals_advance_step_by_step(times):
    counts = [(0, 3, 2), (4, 5, 1), (7, 6, 0)] if len(times) > 7 else [(0, 3, 2)]
    recs = []
    for _ in range(2):
        pool = SimpleNamespace(num_blocks=10, num_active=0, num_cached=0, reused_s=0.0)
        rec = UsageRecorder(pool)
        rec.live_blocks = 7
        rec.advance(0.05)
        recs.append(rec)
    each, through = recs
    bounds = [c[0] for c in counts[1:]] + [len(times)]
    for (first, active, cached), end in zip(counts, bounds, strict=True):
        each.pool.num_active, each.pool.num_cached = active, cached  # as the pool's counts
        for t in times[first:end]:
            each.advance(t)
    through.advance_through(times, counts)
    for name in ("active_s", "occupied_s", "live_s", "_last", "now"):
        assert getattr(through, name) == getattr(each, name), name  # to the bit
