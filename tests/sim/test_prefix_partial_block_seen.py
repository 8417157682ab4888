"""The simulator's recomputed-token count with nothing evicted: a shared prefix's partial last
block is never a hit (hits are whole blocks), so each later session of the group computes it
for the first time; it used to be charged as recomputed (prefix % block_size tokens per later
session) because the group's high-water mark ran to the prefix's last token."""

from __future__ import annotations

import dataclasses

import pytest

from kvsaga.sim.simulator import SimConfig, simulate
from kvsaga.sim.workloads import generate


@pytest.mark.parametrize("policy", ["lru", "belady"])
def test_unbounded_cache_recomputes_nothing(policy: str) -> None:
    sessions = generate("swe", 6, seed=3, scale=0.05)
    cfg = SimConfig(preset="a100-llama3-8b")
    bs = cfg.cost.kv_spec.block_size
    prefix = sessions[0].shared_prefix.tokens
    assert prefix % bs, "the case needs a prefix that ends inside a block"
    assert len({(s.tenant, s.shared_prefix.group) for s in sessions}) < len(sessions)
    room = sum(cfg.cost.kv_spec.num_blocks_for(s.total_tokens) for s in sessions) + 10
    r = simulate(sessions, dataclasses.replace(cfg, num_gpu_blocks=room, policy=policy,
                                               scheduler="fcfs"))
    assert r.num_evicted_blocks == 0 and r.num_preemptions == 0
    assert r.recomputed_tokens == 0
    # What was computed is all first-time: every prompt token not served from the cache.
    assert r.first_time_tokens == r.queried_tokens - r.hit_tokens
