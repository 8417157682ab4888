"""The side-effect-free `KVCacheManager.lookup` that admission relies on: it predicts
`begin_step` exactly and changes nothing, eviction order included."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga import KVCacheManager
from kvsaga.errors import InvalidRequest
from tests.scheduler.helpers import manager, toks


def _state(m: KVCacheManager):
    """Everything lookup must leave alone, eviction order included."""
    victims = m.policy.choose_victims(m.pool.num_cached, 0.0) if m.pool.num_cached else []
    return (m.stats(), list(m.pool.state), list(m.pool.refcount), list(m.pool.generation),
            victims, {s: (list(x.block_ids), x.num_computed, list(x.token_ids), x.tail)
                      for s, x in m.sessions.items()})


def test_lookup_predicts_begin_step_and_changes_nothing():
    m = manager(16)
    st0 = m.begin_step("a", toks(0, 10), now=0.0)
    m.allocate_slots("a", 10 - st0.num_cached_tokens)
    m.append_tokens("a", [99])
    m.finish_step("a", now=1.0)  # 2 full blocks + a tail of 2 computed tokens (8, 9)
    prompt = toks(0, 10) + [99, 5, 6]
    before = _state(m)
    lk = m.lookup("a", prompt)
    assert _state(m) == before
    assert (lk.gpu_hit_blocks, lk.gpu_cached_blocks, lk.host_hit_blocks, lk.tail_tokens) == \
        (2, 2, 0, 2)
    assert lk.num_cached_tokens == 10 and lk.num_prompt_tokens == 13
    # the cached hits, then blocks 2 (the tail's) and 3: the tail is counted once
    assert lk.blocks_to_admit(13) == 2 + 4 - 2
    assert m.begin_step("a", prompt, now=2.0).num_cached_tokens == lk.num_cached_tokens


def test_lookup_errors_match_begin_step():
    m = manager(4)
    with pytest.raises(InvalidRequest, match="non-empty str"):
        m.lookup("", [1])
    with pytest.raises(InvalidRequest, match="must not be empty"):
        m.lookup("a", [])
    with pytest.raises(InvalidRequest, match="the pool has only 4"):
        m.lookup("a", toks(0, 17))
    m.begin_step("a", [1, 2])
    with pytest.raises(InvalidRequest, match="already has an open step"):
        m.lookup("a", [1, 2, 3])


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("abc"), st.lists(st.integers(0, 2), min_size=1,
                                                                max_size=9),
                              st.booleans(), st.sampled_from([None, "x"])),
                    min_size=1, max_size=25),
       host=st.sampled_from([0, 6]), policy=st.sampled_from(["lru", "graph", "ttl"]))
def test_lookup_matches_begin_step_on_random_histories(ops, host, policy):
    """For any history, lookup then begin_step: same cached tokens (host loads fitting),
    and lookup changed nothing, however often it is asked."""
    m = manager(10, policy=policy, num_host_blocks=host)
    ctx: dict[str, list[int]] = {}
    now = 0.0
    for sid, extra, extend, salt in ops:
        now += 1.0
        prompt = (ctx.get(sid, []) if extend else []) + extra
        prompt = prompt[-36:]
        if sid in m.sessions:
            salt = None
        before = _state(m)
        lk = m.lookup(sid, prompt, salt=salt)
        assert m.lookup(sid, prompt, salt=salt) == lk
        assert _state(m) == before
        if lk.blocks_to_admit(len(prompt)) > m.pool.num_available:
            continue  # the scheduler would not admit it
        available = m.pool.num_available
        start = m.begin_step(sid, prompt, now=now, salt=salt)
        assert start.num_cached_tokens == lk.num_cached_tokens
        m.allocate_slots(sid, len(prompt) - start.num_cached_tokens, now=now)
        # blocks_to_admit is exact: what the step took from the free-or-evictable blocks
        assert available - m.pool.num_available == lk.blocks_to_admit(len(prompt))
        m.append_tokens(sid, [extra[0]])
        m.finish_step(sid, now=now, tool="t")
        ctx[sid] = prompt + [extra[0]]
        m.check_integrity()


def test_lookup_uses_given_block_hashes():
    m = manager(16)
    prompt = toks(0, 13)
    st0 = m.begin_step("a", prompt)
    m.allocate_slots("a", 13 - st0.num_cached_tokens)
    m.finish_step("a")
    hashes: list[bytes] = []
    m.hasher.extend(hashes, m.sessions["a"].root, prompt)
    assert m.lookup("b", prompt, block_hashes=hashes).gpu_hit_blocks == 3
    assert m.lookup("b", prompt, block_hashes=hashes[:1]).gpu_hit_blocks == 3  # rest hashed
    assert m.lookup("b", prompt).gpu_hit_blocks == 3


def test_lookup_hashes_new_blocks_only_as_far_as_the_hits_go():
    """A resumed prompt's new blocks are hashed up to the first miss (the session's own
    hashes cover its context), not to the prompt's end; the answer is begin_step's."""
    m = manager(16)
    st0 = m.begin_step("a", toks(0, 9), now=0.0)
    m.allocate_slots("a", 9 - st0.num_cached_tokens)
    m.finish_step("a", now=1.0)  # 2 full blocks (4 tokens each) and a tail
    prompt = toks(0, 9) + toks(50, 40)  # 49 tokens: 12 full blocks before the last token
    hashed = []
    real = m.hasher

    class Counting:
        block_size = real.block_size

        def extend(self, hashes, root, token_ids, num_blocks=None):
            before = len(hashes)
            real.extend(hashes, root, token_ids, num_blocks)
            hashed.append(len(hashes) - before)

    m.hasher = Counting()
    lk = m.lookup("a", prompt)
    m.hasher = real
    assert sum(hashed) == 1  # block 2, the first new one: a miss
    assert lk.gpu_hit_blocks == 2
    assert m.begin_step("a", prompt, now=2.0).num_cached_tokens == lk.num_cached_tokens
