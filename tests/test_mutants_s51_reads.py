"""Session 51 mutation testing of kvsaga/manager_reads.py: `lookup`'s count of a paused
session's retained tail, which must be what `begin_step` then takes. Each test names the
mutant it kills."""

from __future__ import annotations

from kvsaga import KVCacheManager, KVSpec

BS = 4


def make(core, num_blocks=8):
    return KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_blocks, clock=lambda: 0.0,
                          core=core.name)


def computed_and_paused(m, sid, tokens):
    start = m.begin_step(sid, tokens)
    m.allocate_slots(sid, len(tokens) - start.num_cached_tokens)
    m.finish_step(sid)


def test_a_tail_after_hits_of_another_context_is_not_counted(core):
    """Mutants `(p == 1 or ...)` and `(p >= 0 or ...)` (was `p == 0`): a's context is
    [0 1 2 3 | 8 9] (its tail, 2 tokens, at block 1); c's is [50 51 52 53]. a's prompt
    [50 51 52 53 8 9 10] hits c's block, which ends where a's tail starts, but a's tail
    followed another block ([0 1 2 3]): its K/V is not the prompt's. No tail tokens: 4
    cached, as begin_step takes."""
    m = make(core)
    computed_and_paused(m, "a", [0, 1, 2, 3, 8, 9])
    computed_and_paused(m, "c", [50, 51, 52, 53])
    assert m.session("a").tail is not None
    prompt = [50, 51, 52, 53, 8, 9, 10]
    found = m.lookup("a", prompt)
    assert (found.gpu_hit_blocks, found.tail_tokens, found.num_cached_tokens) == (1, 0, 4)
    assert m.begin_step("a", prompt).num_cached_tokens == found.num_cached_tokens
    m.check_integrity()


def test_a_tail_after_hits_of_another_context_deeper_is_not_counted(core):
    """The same at block 2 (`p >= 0` there too): a [0..3 | 4..7 | 8 9], c [0..3 | 60..63];
    the prompt [0..3 60..63 8 9 10] hits 2 blocks, a's tail followed [4..7]."""
    m = make(core)
    computed_and_paused(m, "a", [*range(8), 8, 9])
    computed_and_paused(m, "c", [*range(4), 60, 61, 62, 63])
    prompt = [*range(4), 60, 61, 62, 63, 8, 9, 10]
    found = m.lookup("a", prompt)
    assert (found.gpu_hit_blocks, found.tail_tokens, found.num_cached_tokens) == (2, 0, 8)
    assert m.begin_step("a", prompt).num_cached_tokens == 8
    m.check_integrity()


def test_lookup_leaves_the_last_prompt_token_out_of_the_tail(core):
    """Mutant `limit = min(ntok, len(old) - start)` (was also `max_hit - start`): the
    prompt is a's whole context [0..3 | 4 5]; its last token is left to compute, so the
    tail counts 1 token, as begin_step takes: 5 cached, not 6."""
    m = make(core)
    computed_and_paused(m, "a", list(range(6)))
    found = m.lookup("a", list(range(6)))
    assert (found.tail_tokens, found.num_cached_tokens) == (1, 5)
    assert m.begin_step("a", list(range(6))).num_cached_tokens == 5
    m.check_integrity()


def test_can_allocate_when_the_need_is_exactly_the_available_blocks(core):
    """Mutant `can_allocate`'s `<` (was <=): 3 blocks needed for 11 tokens; with a's
    block held by its running step, 2 are available: it cannot; once a pauses, 3 are (2
    free, 1 evictable): it can, and allocate_slots does."""
    m = make(core, num_blocks=3)
    m.begin_step("a", [0, 1, 2, 3, 4])
    m.allocate_slots("a", 4)
    m.begin_step("b", list(range(100, 112)))
    assert m.num_blocks_needed("b", 11) == 3 and m.pool.num_available == 2
    assert not m.can_allocate("b", 11)
    m.finish_step("a")
    assert m.pool.num_available == 3 and m.can_allocate("b", 11)
    m.allocate_slots("b", 11)
    m.check_integrity()


def test_a_gpu_block_past_a_host_block_counts_as_cached_in_lookup(core):
    """Mutant `lookup` not counting the host run's GPU blocks that are CACHED: a's block 0
    was evicted to the host, its block 1 is still cached on the GPU; the lookup counts
    that hit as cached, so `blocks_to_admit` is the free-or-evictable blocks that
    begin_step and the last token's slot then take (3, not 2)."""
    from tests.test_mutants_s51_survivors import Picky

    p = Picky()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 4, policy=p, clock=lambda: 0.0,
                       core=core.name, num_host_blocks=4)
    computed_and_paused(m, "a", list(range(8)))
    first = m.session("a").block_ids[0]
    m.begin_step("b", list(range(100, 112)))
    p.pick = [first]  # a's block 0 is offloaded and freed, its block 1 stays
    m.allocate_slots("b", 12)
    p.pick = None
    m.finish_step("b")
    m.take_transfers()
    prompt = [*range(8), 9]
    found = m.lookup("a", prompt)
    assert (found.gpu_hit_blocks, found.gpu_cached_blocks, found.host_hit_blocks) == (1, 1, 1)
    available = m.pool.num_available
    start = m.begin_step("a", prompt)
    m.allocate_slots("a", len(prompt) - start.num_cached_tokens)
    assert available - m.pool.num_available == found.blocks_to_admit(len(prompt)) == 3
    m.check_integrity()


def test_lookup_of_a_whole_block_prompt_leaves_its_last_block_to_compute(core):
    """Mutant `max_hit = len(tokens)` (was - 1) in `lookup`: a prompt of exactly 2 full
    blocks, both cached, hits only the first (its last token is computed for logits), as
    begin_step takes."""
    m = make(core)
    computed_and_paused(m, "c", list(range(9)))
    found = m.lookup("a", list(range(8)))
    assert (found.gpu_hit_blocks, found.num_cached_tokens) == (1, 4)
    assert m.begin_step("a", list(range(8))).num_cached_tokens == 4
    m.check_integrity()


def test_lookup_of_a_prompt_that_rewrites_the_context_hits_only_the_common_prefix(core):
    """Mutant `s.block_hashes[: max(keep // bs, max_blocks)]` (was min) in `lookup`: a's
    context is 3 full blocks; its prompt keeps the first and rewrites the rest, so only
    that block hits (the old hashes past the common prefix are not the prompt's)."""
    m = make(core)
    computed_and_paused(m, "a", list(range(13)))
    prompt = [0, 1, 2, 3, *range(50, 58), 9]
    found = m.lookup("a", prompt)
    assert (found.gpu_hit_blocks, found.num_cached_tokens) == (1, 4)
    assert m.begin_step("a", prompt).num_cached_tokens == 4
    m.check_integrity()


def test_stats_count_running_and_paused_sessions_apart(core):
    """Mutant `num_paused_sessions=len(self.sessions)` (was less the running ones)."""
    m = make(core)
    computed_and_paused(m, "a", [0, 1, 2])
    m.begin_step("b", [5, 6, 7])
    st = m.stats()
    assert (st.num_running_sessions, st.num_paused_sessions) == (1, 1)
