"""Host loads (begin_step's and prefetch's) make room by evicting, and must not evict the
loading session's own retained tail: `lookup` counts it (lookup == begin_step whenever
blocks_to_admit fits), and a prefetch is for the session's resume. Both cores."""

from __future__ import annotations

from kvsaga import KVCacheManager, KVSpec

PROMPT = [0, 2, 1, 2, 2, 3, 0]  # s3's resumed step (blocks of 2 tokens)


def _s3_offloaded_head_kept_tail(core) -> KVCacheManager:
    """A 7-block pool whose session s3 paused on a full block [0 2] and a tail [1]; the
    full block (shared by another session, then evicted) is only on the host, the tail is
    CACHED, and no block is free: a load of s3's block must evict one (the graph policy
    picks s3's tail)."""
    t = [0.0]
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 7, policy="graph", num_host_blocks=2,
                       core=core.name, clock=lambda: t[0])
    t[0] = 4.6
    m.begin_step("s0", [2, 3, 1, 1, 1, 3, 3, 0, 2])
    t[0] = 5.6
    m.allocate_slots("s0", 3)
    m.begin_step("s3", PROMPT)
    t[0] = 6.7
    m.allocate_slots("s0", 6)
    t[0] = 7.6
    m.finish_step("s0", tool="t", expected_s=0.5)
    t[0] = 7.9
    m.allocate_slots("s3", 3)  # block [0 2], tail [1]
    m.finish_step("s3", tool="t", expected_s=0.5)
    m.resume_hint("s0")
    t[0] = 8.1
    m.resume_hint("s3")
    t[0] = 10.4
    m.begin_step("s1", [0, 2, 1, 2, 0, 0])  # shares s3's block
    m.end_session("s1")
    t[0] = 11.2
    m.begin_step("s1", [0, 3, 3, 2, 0, 1], salt="a")
    m.allocate_slots("s1", 2)  # evicts (offloads) s3's block, keeps its tail
    s3 = m.session("s3")
    assert s3.tail is not None and m._tail_alive(s3)
    assert m.index.get(s3.block_hashes[0]) is None and m.host.has_copy(s3.block_hashes[0])
    assert m.pool.num_free == 0
    m.take_transfers()
    return m


def test_begin_step_host_load_keeps_the_sessions_tail(core):
    m = _s3_offloaded_head_kept_tail(core)
    look = m.lookup("s3", PROMPT)
    assert (look.host_hit_blocks, look.tail_tokens, look.num_cached_tokens) == (1, 1, 3)
    assert look.blocks_to_admit(len(PROMPT)) <= m.pool.num_available
    tail = m.session("s3").tail[0]
    start = m.begin_step("s3", PROMPT)
    assert start.num_cached_tokens == look.num_cached_tokens == 3  # was 2: tail evicted
    assert start.block_ids[-1] == tail
    m.check_integrity()
    m.allocate_slots("s3", len(PROMPT) - start.num_cached_tokens)
    m.check_integrity()


def test_prefetch_keeps_the_sessions_tail(core):
    m = _s3_offloaded_head_kept_tail(core)
    s3 = m.session("s3")
    tail = s3.tail[0]
    assert m.prefetch("s3") == 1
    assert m._tail_alive(s3) and s3.tail[0] == tail  # was: evicted for the load
    m.check_integrity()
    look = m.lookup("s3", PROMPT)
    assert (look.gpu_hit_blocks, look.host_hit_blocks, look.tail_tokens) == (1, 0, 1)
    start = m.begin_step("s3", PROMPT)
    assert start.num_cached_tokens == 3 and start.block_ids[-1] == tail
    m.check_integrity()
