"""kvsaga.sim.metrics: the usage recorder's time integrals."""

from __future__ import annotations

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
