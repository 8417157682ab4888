"""Session 51 mutation testing of kvsaga/manager.py: the decisions of `begin_step` (the
retained tail's reuse, ownership of hits), the prompt's limits and the slot allocation that
the suite's other tests let a mutant change unseen. Each test names the mutant it kills."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.errors import InvalidRequest
from kvsaga.policy import LRUPolicy

BS = 4


def make(core, num_blocks=8, **kw):
    return KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_blocks, clock=lambda: 0.0,
                          core=core.name, **kw)


def paused_with_tail(m, sid="a", n=6):
    """`sid` computed tokens 0..n-1 and paused: with n = 6, one full block and a retained
    partial tail of 2 tokens (4, 5)."""
    m.begin_step(sid, list(range(n)))
    m.allocate_slots(sid, n)
    m.finish_step(sid)
    assert m.session(sid).tail is not None


def test_a_prompt_that_diverges_inside_the_tail_hits_only_the_tokens_it_repeats(core):
    """Mutant `usable_end = max(keep, max_hit)` (was min): the prompt keeps 5 tokens of the
    context (0..4) and goes on with 77, 78; the tail's token 5 is not the prompt's, so 5
    tokens are cached, not 6 (K/V of token 5 would stand for token 77)."""
    m = make(core)
    paused_with_tail(m)
    start = m.begin_step("a", [0, 1, 2, 3, 4, 77, 78])
    assert start.num_cached_tokens == 5
    tail = start.block_ids[1]  # the retained tail, reused: tokens 5, 6 go at offsets 1, 2
    assert m.allocate_slots("a", 2) == [tail * BS + 1, tail * BS + 2]
    m.check_integrity()


def test_the_same_prompt_again_leaves_its_last_token_to_compute(core):
    """Mutant `usable_end = max(keep, max_hit)`: the prompt is the whole context (6 tokens,
    2 in the tail); the last token is left to compute for its logits: 5 cached."""
    m = make(core)
    paused_with_tail(m)
    start = m.begin_step("a", list(range(6)))
    assert start.num_cached_tokens == 5
    m.check_integrity()


def test_a_resumed_session_with_another_salt_is_refused_and_the_same_salt_taken(core):
    """Mutant `root_hash(salt) == s.root` (was !=): a paused session resumed with another
    salt is refused (nothing changes), with its own salt it resumes."""
    m = make(core)
    m.begin_step("a", list(range(6)), salt="x")
    m.allocate_slots("a", 6)
    m.finish_step("a")
    before = (m.cache_version, m.stats(), list(m.session("a").token_ids))
    with pytest.raises(InvalidRequest, match="opened with another salt"):
        m.begin_step("a", list(range(8)), salt="y")
    assert (m.cache_version, m.stats(), list(m.session("a").token_ids)) == before
    start = m.begin_step("a", list(range(8)), salt="x")
    assert start.num_cached_tokens == 6
    m.check_integrity()


def test_a_block_that_leaves_the_table_last_is_disowned_at_the_end(core):
    """Mutant `old[:-1] == new[: len(old) - 1]` in `_note_left` (was the whole table): a
    resume that hits all but the LAST block of the old table (its prompt diverges there)
    must remember that block, which a still owns, for `end_session` to disown."""
    m = make(core)
    m.begin_step("a", list(range(8)))
    m.allocate_slots("a", 8)  # two full blocks
    m.finish_step("a")
    old = list(m.session("a").block_ids)
    start = m.begin_step("a", [0, 1, 2, 3, 50, 51, 52, 53, 54])
    assert start.block_ids == old[:1]
    assert m.block_owner[old[1]] == "a" and m.is_cached(old[1])  # left the table, owned
    m.allocate_slots("a", 9 - start.num_cached_tokens)
    m.end_session("a")
    assert m.block_owner[old[1]] is None
    m.check_integrity()


def test_a_prompt_ending_where_the_tail_starts_loads_its_host_blocks(core):
    """Mutant `_reusable_tail`'s `> 0` made `>= 0`: s3's prompt [0 2 9] repeats its host
    block and ends where its retained tail [1] starts, so the tail continues no hit (no
    tokens of it usable); it must not be held for the load (the held tail was then dropped
    as ACTIVE: the C++ core raised, the Python one lost the session)."""
    from tests.test_offload_tail_hold import _s3_offloaded_head_kept_tail

    m = _s3_offloaded_head_kept_tail(core)
    look = m.lookup("s3", [0, 2, 9])
    assert (look.host_hit_blocks, look.tail_tokens, look.num_cached_tokens) == (1, 0, 2)
    start = m.begin_step("s3", [0, 2, 9])
    assert start.num_cached_tokens == 2 and m.session("s3").tail is None
    m.check_integrity()
    m.allocate_slots("s3", 1)
    m.check_integrity()


def test_a_prompt_of_exactly_max_model_len_is_taken_and_one_more_refused(core):
    """Mutant `len(tokens) >= self.max_model_len` (was >) in `_check_prompt`: a prompt of
    exactly max_model_len tokens is looked up and begun; one token more is refused."""
    m = make(core, max_model_len=10)
    with pytest.raises(InvalidRequest, match="exceeds max_model_len 10"):
        m.lookup("a", list(range(11)))
    with pytest.raises(InvalidRequest, match="exceeds max_model_len 10"):
        m.begin_step("a", list(range(11)))
    assert "a" not in m.sessions
    assert m.lookup("a", list(range(10))).num_prompt_tokens == 10
    assert m.begin_step("a", list(range(10))).num_prompt_tokens == 10
    m.allocate_slots("a", 10)
    m.check_integrity()


def test_a_context_may_grow_to_exactly_max_model_len(core):
    """Mutants `... >= self.max_model_len` (was >) in `_append` (append_tokens) and in the
    Python `decode_step`: a context may reach max_model_len tokens, not pass it; a refusal
    changes nothing."""
    m = make(core, max_model_len=10)
    m.begin_step("a", list(range(7)))
    m.allocate_slots("a", 7)
    m.append_tokens("a", [7, 8])  # 9 tokens
    m.allocate_slots("a", 2)
    assert len(m.decode_step(["a"], [9])) == 1  # 10 tokens: exactly the limit
    with pytest.raises(InvalidRequest, match="exceeds max_model_len 10"):
        m.decode_step(["a"], [10])
    with pytest.raises(InvalidRequest, match="exceeds max_model_len 10"):
        m.append_tokens("a", [10])
    assert (len(m.session("a").token_ids), m.num_computed_tokens("a")) == (10, 10)
    m.begin_step("b", list(range(100, 108)))  # (no hits)
    m.allocate_slots("b", 8)
    m.append_tokens("b", [8, 9])  # 10 tokens by append_tokens
    assert m.allocate_slots("b", 2) is not None
    m.check_integrity()


def test_free_blocks_that_exactly_suffice_ask_the_policy_for_no_victim(core):
    """Mutant `need >= pool.num_free` (was >) in `_make_room`: an allocation that the free
    blocks exactly cover evicts nothing and asks the policy nothing (it asked for 0
    victims, and moved `cache_version` with no change)."""
    class Counting(LRUPolicy):
        def choose_victims(self, num_blocks, now):
            self.asked.append(num_blocks)
            return super().choose_victims(num_blocks, now)

    p = Counting()
    p.asked = []
    m = make(core, num_blocks=4, policy=p)
    m.begin_step("a", list(range(5)))
    m.allocate_slots("a", 4)  # one full block
    m.finish_step("a")
    m.begin_step("b", list(range(100, 112)))
    assert m.pool.num_free == 3 and m.num_blocks_needed("b", 12) == 3
    version = m.cache_version[0]
    m.allocate_slots("b", 12)
    assert p.asked == [] and m.stats().num_evicted_blocks == 0
    assert m.cache_version[0] == version
    assert m.lookup("a", list(range(6))).gpu_hit_blocks == 1
    m.check_integrity()


class _Times(LRUPolicy):
    """LRU that records the `now` of each step_started it sees, in `times`."""

    def __init__(self) -> None:
        super().__init__()
        self.times: list[float] = []

    def step_started(self, session, now):
        self.times.append(now)
        super().step_started(session, now)


def test_the_policy_sees_a_clock_that_never_steps_back(core):
    """Mutant `_time` not keeping the latest time (its `self._latest_now = t` removed): a
    call whose `now` is before an earlier call's reaches the policy as that earlier time."""
    p = _Times()
    m = make(core, policy=p)
    m.begin_step("a", [1, 2, 3], now=10.0)
    m.begin_step("b", [4, 5, 6], now=5.0)  # behind: taken as still 10
    m.begin_step("c", [7, 8, 9], now=12.0)
    assert p.times == [10.0, 10.0, 12.0]


def test_a_refused_begin_step_leaves_the_latest_time_as_it_was(core):
    """Mutant `_begin` not restoring `_latest_now` when `_open` refuses: a refused call
    saw no time, so a later call at an earlier time than the refused one's is taken as
    it is (not as the refused call's time)."""
    p = _Times()
    m = make(core, policy=p)
    m.begin_step("a", [1, 2, 3], now=10.0)
    with pytest.raises(InvalidRequest, match="already has an open step"):
        m.begin_step("a", [1, 2, 3], now=100.0)
    m.begin_step("b", [4, 5, 6], now=11.0)
    assert p.times == [10.0, 11.0]


def test_stats_count_the_queried_and_hit_tokens_of_each_begin_step(core):
    """Mutant `_begin` not adding `num_cached` to the hit tokens: stats' hit_tokens."""
    m = make(core)
    m.begin_step("a", list(range(9)))
    m.allocate_slots("a", 9)
    m.finish_step("a")
    start = m.begin_step("a", list(range(12)))
    assert start.num_cached_tokens == 9  # 2 full blocks and the retained tail's token
    st = m.stats()
    assert (st.queried_tokens, st.hit_tokens) == (21, 9)


def test_a_resumed_step_drops_the_pause_hint(core):
    """Mutant `_begin` not clearing `s.hint`: the hint of a pause describes that pause; the
    session's next step has none (and a preemption of it leaves none either)."""
    m = make(core)
    m.begin_step("a", list(range(5)))
    m.allocate_slots("a", 5)
    m.finish_step("a", tool="grep", expected_s=3.0)
    assert m.session("a").hint is not None and m.session("a").paused_at == 0.0
    m.begin_step("a", list(range(8)))
    assert m.session("a").hint is None and m.session("a").paused_at is None
    m.preempt("a")
    assert m.session("a").hint is None
