"""Past a session's first GPU miss, begin_step and prefetch walk its blocks: a block still
resident on the GPU is taken there, one the host tier holds is loaded, and the walk stops at
a block that neither holds; `lookup` counts the same walk. A host copy of a block still on
the GPU was loaded again (a second copy cannot be indexed: it was wasted, or, as the load's
evictions took the resident copy, it cost a transfer and a block that `blocks_to_admit`
counted twice). Both cores."""

from __future__ import annotations

from kvsaga import KVCacheManager, KVSpec
from kvsaga.pool import CACHED

PROMPT = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # session a's context [1..7] and 2 new tokens


def _gap_on_the_gpu(core) -> tuple[KVCacheManager, list[int]]:
    """Session "a" paused on blocks h0 h1 h2 (2 tokens each) and a tail [7]; h0 and h2 are on
    the GPU (h2 in another block than a's: a's copy was offloaded and another session loaded
    it back), h1 only on the host (h2 on the host too). Victims are chosen by hand (`plan`,
    else a filler session's blocks), so that nothing else of "a" is evicted. Returns the
    manager and the GPU blocks of h0 and h2."""
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 10, num_host_blocks=8, core=core.name,
                       clock=lambda: 0.0)
    plan: list[list[int]] = []
    filler: list[int] = []

    def choose(n, now, *rest):
        if plan:
            return plan.pop(0)
        return [b for b in filler if m.pool.state[b] == CACHED][:n]

    m.policy.choose_victims = choose
    m.begin_step("a", PROMPT[:7])
    m.allocate_slots("a", 7)
    m.finish_step("a")
    a0, a1, a2, _ = m.session("a").block_ids
    m.begin_step("w", list(range(100, 114)))
    plan.append([a2])  # offloaded
    m.allocate_slots("w", 14)
    filler.extend(m.block_table("w"))
    m.end_session("w")
    start = m.begin_step("c", [1, 2, 3, 4, 5, 6, 50])  # loads h2 back, into a new block
    assert start.num_cached_tokens == 6
    c2 = start.block_ids[2]
    m.allocate_slots("c", 1)
    m.end_session("c")
    plan.append([a1])  # offloaded
    m.begin_step("v", [200, 201, 202, 203])
    m.allocate_slots("v", 4)
    m.end_session("v")
    m.take_transfers()
    s = m.session("a")
    assert [m.index.get(h) for h in s.block_hashes] == [a0, None, c2]
    assert [m.host.has_copy(h) for h in s.block_hashes] == [False, True, True]
    assert m._tail_alive(s)
    return m, [a0, c2]


def test_begin_step_takes_resident_blocks_past_a_miss(core):
    m, (a0, c2) = _gap_on_the_gpu(core)
    look = m.lookup("a", PROMPT)
    assert (look.gpu_hit_blocks, look.gpu_cached_blocks, look.host_hit_blocks,
            look.tail_tokens, look.num_cached_tokens) == (2, 2, 1, 1, 7)
    available = m.pool.num_available
    start = m.begin_step("a", PROMPT)
    loads = m.take_transfers().loads
    assert start.num_cached_tokens == 7
    assert len(loads) == 1  # h1 only (was h1 and h2)
    assert start.block_ids[0] == a0 and start.block_ids[2] == c2
    assert start.block_ids[1] == loads[0][1]
    s = m.session("a")
    assert [m.pool.block_hash[b] for b in start.block_ids[:3]] == s.block_hashes[:3]
    m.allocate_slots("a", len(PROMPT) - start.num_cached_tokens)
    assert available - m.pool.num_available == look.blocks_to_admit(len(PROMPT))
    m.check_integrity()


def test_prefetch_loads_only_what_the_gpu_lacks(core):
    m, (a0, c2) = _gap_on_the_gpu(core)
    loaded_before = m.stats().loaded_blocks
    assert m.prefetch("a") == 1
    loads = m.take_transfers().loads
    assert len(loads) == 1 and m.stats().loaded_blocks - loaded_before == 1
    s = m.session("a")
    (_, target), = loads
    assert m.pool.state[target] == CACHED and m.pool.block_hash[target] == s.block_hashes[1]
    assert s.block_ids[1] == target
    assert [m.index.get(h) for h in s.block_hashes] == [a0, target, c2]
    assert m._tail_alive(s)
    assert m.stats().prefetched_blocks == 1
    m.check_integrity()
    look = m.lookup("a", PROMPT)
    assert (look.gpu_hit_blocks, look.host_hit_blocks, look.num_cached_tokens) == (3, 0, 7)
