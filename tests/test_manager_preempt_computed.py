"""`preempt` frees a running step's partial block, and `num_computed_tokens` (tokens of the
context with KV slots) drops to its full blocks' tokens: a mid-prefill preemption left it
pointing into the freed block, where a decode-phase one already dropped it. Both cores."""

from __future__ import annotations

from kvsaga import KVCacheManager, KVSpec


def test_mid_prefill_preempt_drops_the_partial_blocks_tokens(core):
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=4), 8, core=core.name)
    prompt = list(range(10))
    m.begin_step("a", prompt)
    m.allocate_slots("a", 6)  # chunked prefill: block 0 full, block 1 holds 2 tokens
    partial = m.block_table("a")[1]
    m.preempt("a")
    assert m.pool.state_name(partial) == "free"
    assert m.num_computed_tokens("a") == 4  # was 6: 2 of them in the freed block
    assert m.lookup("a", prompt).num_cached_tokens == 4
    start = m.begin_step("a", prompt)
    assert start.num_cached_tokens == m.num_computed_tokens("a") == 4
    m.check_integrity()


def test_decode_phase_preempt_keeps_the_full_blocks_tokens(core):
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=4), 8, core=core.name)
    m.begin_step("a", list(range(8)))
    m.allocate_slots("a", 8)  # two full blocks
    m.append_tokens("a", [9])
    m.allocate_slots("a", 1)  # a decode token in a third block
    m.preempt("a")
    assert m.num_computed_tokens("a") == 8
    m.check_integrity()
