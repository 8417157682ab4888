"""A policy hook that raises in the eviction that makes room for a host hit's load (review
s50 diff-host 3): the eviction changes neither tier's blocks or index, and the host blocks
pinned for the load keep their content and index, coming back as the host tier's most
recently used (`HostTier.unpin`, as docs/architecture.md and kvsaga/manager_evict.py say:
their old place in the LRU order is not kept). Both cores."""

from __future__ import annotations

from kvsaga import KVCacheManager, KVSpec
from tests.test_manager_pool_hook_raises import UncachedFails

BS = 4
X = list(range(500, 513))  # 3 full blocks and one token


def run_step(m: KVCacheManager, sid: str, tokens: list[int]) -> None:
    """One whole step of `sid` over `tokens` (its hits reused), its transfers taken."""
    start = m.begin_step(sid, tokens)
    m.allocate_slots(sid, len(tokens) - start.num_cached_tokens)
    m.finish_step(sid)
    m.take_transfers()


def test_a_load_whose_eviction_raises_keeps_both_tiers(core):
    policy = UncachedFails()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 4, policy=policy, clock=lambda: 0.0,
                       core=core.name, num_host_blocks=6)
    run_step(m, "x", X)  # x's 3 full blocks on the GPU
    run_step(m, "y", list(range(700, 713)))  # x's go to the host tier (its oldest)
    run_step(m, "z", list(range(900, 913)))  # then y's
    host = m.host
    x_host = host.run(list(m.sessions["x"].block_hashes), 0, 3)
    assert len(x_host) == 3  # (the scenario: x's blocks are host hits)
    before = (sorted(host.index.items()), list(host.pool.state), list(m.pool.state),
              m.lookup("x", X + [1]), m.stats())
    order = list(host.order)
    policy.fail = True
    try:
        m.begin_step("x", X + [1])  # the load needs an eviction, whose hook raises
    except RuntimeError as e:
        assert "blocks_uncached failed" in str(e)
    else:
        raise AssertionError("the policy's hook did not raise")
    policy.fail = False
    m.check_integrity()
    assert (sorted(host.index.items()), list(host.pool.state), list(m.pool.state),
            m.lookup("x", X + [1]), m.stats()) == before
    after = list(host.order)
    assert after[:-3] == [b for b in order if b not in x_host]
    assert sorted(after[-3:]) == sorted(x_host)  # most recently used now
    assert m.begin_step("x", X + [1]).num_cached_tokens == 12  # the host hits, still there
