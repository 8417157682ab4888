import re

import pytest

from kvsaga import InvalidRequest, KVCacheManager, KVSpec, OutOfBlocks, UnknownSession

BS = 4


def make(num_blocks=8, **kw) -> KVCacheManager:
    return KVCacheManager(KVSpec(2, 2, 8, block_size=BS), num_blocks, clock=lambda: 0.0, **kw)


def run_step(m, sid, tokens, **finish):
    """Begin, allocate the uncached prompt, finish; return the StepStart."""
    st = m.begin_step(sid, tokens)
    m.allocate_slots(sid, len(tokens) - st.num_cached_tokens)
    m.check_integrity()
    m.finish_step(sid, **finish)
    m.check_integrity()
    return st


def test_slots_follow_the_block_table():
    m = make()
    st = m.begin_step("a", list(range(10)))
    assert st.num_cached_tokens == 0 and st.block_ids == []
    slots = m.allocate_slots("a", 6)
    assert slots == [0, 1, 2, 3, 4, 5]
    slots = m.allocate_slots("a", 4)
    assert slots == [6, 7, 8, 9]
    assert m.block_table("a") == [0, 1, 2]
    m.append_tokens("a", [77])
    assert m.allocate_slots("a", 1) == [10]
    m.check_integrity()


def test_prefix_hit_across_sessions_sharing_a_system_prompt():
    m = make()
    system = list(range(100, 108))  # two full blocks
    run_step(m, "a", system + [1, 2, 3])
    st = m.begin_step("b", system + [5, 6])
    assert st.num_cached_tokens == 8 and st.block_ids == [0, 1]
    # Shared blocks are referenced, not copied; b's own tokens go to a new block.
    assert m.allocate_slots("b", 2) == [12, 13]
    assert m.pool.refcount[0] == 1
    st2 = m.begin_step("c", system + [9])
    assert st2.block_ids == [0, 1]
    assert m.pool.refcount[0] == 2
    m.check_integrity()


def test_partial_blocks_are_never_shared():
    m = make()
    run_step(m, "a", [1, 2, 3, 4, 5, 6])  # one full block, one partial
    st = m.begin_step("b", [1, 2, 3, 4, 5, 6, 7])
    assert st.num_cached_tokens == 4  # the partial block of "a" is not reused by "b"
    m.check_integrity()


def test_resume_reuses_own_partial_tail():
    m = make()
    run_step(m, "a", [1, 2, 3, 4, 5, 6], tool="grep", expected_s=0.1)
    tail = m.session("a").tail
    assert tail is not None and tail[2] == 2
    st = m.begin_step("a", [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert st.num_cached_tokens == 6 and st.block_ids == [0, 1]
    assert m.allocate_slots("a", 3) == [6, 7, 8]
    m.check_integrity()


def test_full_hit_still_computes_last_token():
    m = make()
    run_step(m, "a", list(range(8)))
    st = m.begin_step("b", list(range(8)))
    assert st.num_cached_tokens == 4  # block 2 holds token 7, which must be recomputed
    m.check_integrity()


def test_tenants_with_different_salts_never_share():
    m = make()
    st = m.begin_step("a", list(range(9)), salt="tenant-1")
    m.allocate_slots("a", 9)
    m.finish_step("a")
    assert m.begin_step("b", list(range(9)), salt="tenant-2").num_cached_tokens == 0
    assert m.begin_step("c", list(range(9)), salt="tenant-1").num_cached_tokens == 8
    assert m.begin_step("d", list(range(9))).num_cached_tokens == 0
    del st
    m.check_integrity()


def test_lru_eviction_order_is_tail_first_oldest_context_first():
    m = make(num_blocks=6)
    run_step(m, "a", list(range(0, 12)))  # blocks 0,1,2: 2 full+hashed? 12 tokens = 3 full
    run_step(m, "b", list(range(100, 108)))  # blocks 3,4
    # a released first (tail first: 2,1,0), then b (4,3).
    assert m.policy.eviction_order() == [2, 1, 0, 4, 3]
    st = m.begin_step("c", list(range(200, 212)))
    m.allocate_slots("c", 12)  # 3 blocks: 1 free (5) + evict 2, 1
    assert m.block_table("c") == [5, 2, 1]
    assert m.stats().num_evicted_blocks == 2
    # "a" keeps only its head block: a resume hits 4 tokens.
    m.finish_step("c")
    assert m.begin_step("a", list(range(0, 13))).num_cached_tokens == 4
    assert st.num_cached_tokens == 0
    m.check_integrity()


def test_cache_hit_refreshes_recency():
    m = make(num_blocks=4)
    run_step(m, "a", list(range(0, 8)))  # blocks 0,1 -> order [1, 0]
    run_step(m, "b", list(range(50, 58)))  # blocks 2,3 -> order [1, 0, 3, 2]
    run_step(m, "c", list(range(0, 5)))  # hits block 0 of "a", block 1 evicted for its tail
    order = m.policy.eviction_order()
    assert order[-1] == 0  # the block just hit is now the most recent
    m.check_integrity()


def test_failed_allocation_changes_nothing():
    m = make(num_blocks=4)
    m.begin_step("a", list(range(12)))
    m.allocate_slots("a", 12)  # 3 blocks
    m.begin_step("b", list(range(50, 60)))
    before = (m.stats(), m.block_table("a"), m.block_table("b"), m.num_computed_tokens("b"))
    with pytest.raises(OutOfBlocks) as e:
        m.allocate_slots("b", 10)
    assert e.value.needed == 3 and e.value.available == 1
    after = (m.stats(), m.block_table("a"), m.block_table("b"), m.num_computed_tokens("b"))
    assert before == after
    assert m.can_allocate("b", 4) and not m.can_allocate("b", 5)
    m.check_integrity()


def test_end_session_keeps_full_blocks_as_plain_cache():
    m = make()
    run_step(m, "a", list(range(6)), tool="x")
    m.end_session("a")
    assert m.stats().num_evictable_blocks == 1  # the full block; the partial tail is freed
    assert m.begin_step("b", list(range(6))).num_cached_tokens == 4
    with pytest.raises(UnknownSession):
        m.end_session("a")
    m.check_integrity()


def test_last_step_ends_the_session():
    m = make()
    run_step(m, "a", list(range(6)), last_step=True)
    assert "a" not in m.sessions
    m.check_integrity()


def test_preempt_releases_and_retry_hits_full_blocks():
    m = make()
    m.begin_step("a", list(range(10)))
    m.allocate_slots("a", 10)
    m.preempt("a")
    m.check_integrity()
    assert m.stats().num_used_blocks == 0
    st = m.begin_step("a", list(range(10)))
    assert st.num_cached_tokens == 8
    m.check_integrity()


def test_edited_history_truncates_to_common_prefix():
    m = make()
    run_step(m, "a", list(range(10)))
    st = m.begin_step("a", list(range(6)) + [99, 98, 97, 96, 95])
    assert st.num_cached_tokens == 4  # block 0 only; block 1 diverges at token 6
    m.allocate_slots("a", 7)
    m.check_integrity()


@pytest.mark.parametrize(
    "call, exc, needle",
    [
        (lambda m: m.allocate_slots("nope", 1), UnknownSession, "nope"),
        (lambda m: m.finish_step("nope"), UnknownSession, "nope"),
        (lambda m: m.begin_step("", [1]), InvalidRequest, "''"),
        (lambda m: m.begin_step(3, [1]), InvalidRequest, "3"),
        (lambda m: m.begin_step("a", [1, "x"]), InvalidRequest, "'x'"),
        (lambda m: m.begin_step("a", [1, -5]), InvalidRequest, "-5"),
        (lambda m: m.begin_step("a", [1, 2.0]), InvalidRequest, "2.0"),
        (lambda m: m.begin_step("a", "hello"), InvalidRequest, "str"),
        (lambda m: m.begin_step("a", []), InvalidRequest, "empty"),
        (lambda m: m.begin_step("a", list(range(40))), InvalidRequest, "40 tokens"),
    ],
)
def test_bad_input_names_the_value(call, exc, needle):
    m = make()
    with pytest.raises(exc, match=needle):
        call(m)
    assert m.stats().queried_tokens == 0
    m.check_integrity()


def test_bad_counts_and_hints():
    m = make()
    m.begin_step("a", list(range(5)))
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InvalidRequest, match=str(bad)):
            m.allocate_slots("a", bad)
    with pytest.raises(InvalidRequest, match="exceeds"):
        m.allocate_slots("a", 6)
    with pytest.raises(InvalidRequest, match="already has an open step"):
        m.begin_step("a", [1])
    with pytest.raises(ValueError, match="-2"):
        m.finish_step("a", expected_s=-2)
    assert m.session("a").is_running  # a rejected finish leaves the step open
    m.finish_step("a")
    with pytest.raises(InvalidRequest, match="no open step"):
        m.allocate_slots("a", 1)
    with pytest.raises(InvalidRequest, match="max_model_len"):
        make(max_model_len=4).begin_step("z", list(range(5)))
    m.check_integrity()


def test_unknown_policy_name():
    with pytest.raises(ValueError, match="'nope'"):
        make(policy="nope")


@pytest.mark.parametrize("seed", range(6))
def test_cache_version_changes_whenever_a_lookup_answer_does(core, seed):
    """Random steps of a few sessions sharing a prefix over a small pool (evictions, tails,
    ended sessions): between two moments with the same cache_version every lookup answers
    the same, so a scheduler may keep the answers of its waiting steps."""
    import random

    rng = random.Random(seed)
    m = KVCacheManager(KVSpec(2, 2, 8, block_size=BS), 12, clock=lambda: 0.0,
                       core=core.name)
    shared = list(range(500, 508))
    ctx = {sid: shared + [rng.randrange(100) for _ in range(3)] for sid in "abc"}
    probes = {sid: list(tokens) for sid, tokens in ctx.items()}
    seen: dict = {}
    for _ in range(60):
        sid = rng.choice("abc")
        s = m.sessions.get(sid)
        if s is None or s.state.name != "RUNNING":
            prompt = ctx[sid] + [rng.randrange(100) for _ in range(rng.randrange(1, 6))]
            try:
                st = m.begin_step(sid, prompt)
                m.allocate_slots(sid, len(prompt) - st.num_cached_tokens)
            except OutOfBlocks:
                m.preempt(sid)
            else:
                ctx[sid] = prompt
        elif rng.random() < 0.4:  # decode a few tokens: allocations that may evict
            more = [rng.randrange(100) for _ in range(rng.randrange(1, 6))]
            m.append_tokens(sid, more)
            ctx[sid] = ctx[sid] + more
            try:
                m.allocate_slots(sid, len(more))
            except OutOfBlocks:
                m.preempt(sid)
        elif rng.random() < 0.2:
            m.end_session(sid)
            ctx[sid] = shared + [rng.randrange(100)]
        else:
            m.finish_step(sid)
        m.check_integrity()
        answers = {}
        for p, tokens in probes.items():
            s = m.sessions.get(p)
            if s is None or s.state.name != "RUNNING":
                answers[p] = m.lookup(p, tokens + [1])
        version = m.cache_version
        for p, lk in answers.items():
            if (version, p) in seen:
                assert seen[version, p] == lk
            seen[version, p] = lk


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_bad_max_model_len_is_refused(core, bad):
    with pytest.raises(InvalidRequest, match=f"max_model_len must be a positive int.*{bad!r}"):
        make(max_model_len=bad, core=core.name)
    assert make(max_model_len=None, core=core.name).max_model_len is None


@pytest.mark.parametrize("bad", [0, -1, True, 2.0, "4"])
def test_bad_num_gpu_blocks_is_refused_by_its_name(core, bad):
    """The message names the argument, num_gpu_blocks (it named the pool's num_blocks)."""
    message = rf"^num_gpu_blocks must be a positive int, got {re.escape(repr(bad))}$"
    with pytest.raises(InvalidRequest, match=message):
        KVCacheManager(KVSpec(1, 1, 1), bad, core=core.name)


@pytest.mark.parametrize("bad", [3, 1.5, b"chat", ["chat"]])
def test_non_string_workflow_is_refused_before_anything_changes(core, bad):
    m = make(core=core.name)
    message = rf"workflow must be a str or None, got {re.escape(repr(bad))}"
    with pytest.raises(InvalidRequest, match=message):
        m.begin_step("a", list(range(5)), workflow=bad)
    assert "a" not in m.sessions and m.stats().queried_tokens == 0
    m.check_integrity()
    run_step(m, "a", list(range(5)))  # the same step, well formed, still opens
    m.begin_step("b", list(range(5)), workflow=None)  # a workflow-less session is allowed
    assert m.session("b").workflow is None


@pytest.mark.parametrize("bad", ["x", float("nan"), float("inf"), True, [1.0]])
def test_tick_refuses_a_time_that_is_not_a_finite_number(core, bad):
    m = make(core=core.name, policy="ttl")
    run_step(m, "a", list(range(5)))
    before = m.session("a").paused_at
    with pytest.raises(InvalidRequest, match=r"now must be a finite number of seconds"):
        m.tick(bad)
    assert m.session("a").paused_at == before
    m.tick(1.0)
    m.check_integrity()
