"""A block `finish_step` disowned as a compacted context's dead block gets its owner back
when the same session's later prompt hits it again (`KVCacheManager._reown`, review s55
diffcompact MED-1).

A client may go back to the full context after compacting it (a retry or a restored
checkpoint after a failed compaction, a tree-search agent back on an old branch). The
begin-step hit loop treated the disowned blocks it hit like blocks shared with other
sessions and left them unowned: the session's live context had a hole of plain cache in
its owned run, and `saga` (tail first within a session's group) evicted its first block
right after its last, losing the whole 44-token context (the code before the disowning
lost only its last 8 tokens). Both cores (the C++ core reads the same `block_owner`)."""

from __future__ import annotations

import pytest

from tests.test_manager_compacted_disown import (
    PRICED,
    _check,
    _manager,
    _owned,
    _toks,
    refused_begin,
)


def _step(m, sid, ids, now, tool_s):
    start = m.begin_step(sid, ids, now=now)
    m.allocate_slots(sid, len(ids) - start.num_cached_tokens, now=now)
    m.finish_step(sid, now=now, tool="t", expected_s=tool_s)
    return start


def _reverted(core, policy):
    """a (40 tokens) paused, compacted to 4 tokens (its finish disowns blocks 1..9 of its
    old table), then back to the old 40 tokens + 4: the revert hits the 10 old blocks."""
    m = _manager(core, policy)
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    old = list(m.session("a").block_ids)
    _step(m, "a", _toks(0, 4), 1.0, 1.0)
    assert [m.block_owner[b] for b in old] == ["a"] + [None] * 9  # (the compact lane's rule)
    start = _step(m, "a", _toks(0, 44), 2.0, 1.0)
    assert start.num_cached_tokens == 40
    return m, old


@pytest.mark.parametrize("policy", PRICED)
def test_a_reverted_context_is_owned_whole_again(core, policy):
    """After the revert's finish the session owns every block of its table (was: 2 of 11,
    the disowned 1..9 plain cache in the middle of its context) and its record is gone."""
    m, old = _reverted(core, policy)
    table = m.session("a").block_ids
    assert table[:10] == old
    assert _owned(m, "a") == sorted(table)
    assert "a" not in m._disowned
    _check(m)


@pytest.mark.parametrize("policy", PRICED)
def test_a_reverted_context_keeps_its_head_under_pressure(core, policy):
    """revert3 (review s55 diffcompact): p (16 tokens) paused on a 30 s tool, a due back
    in 1 s; a new session takes 3 blocks. a keeps at least 36 of its 44 tokens (saga
    evicted a's first block right after its last: 0 kept) and p is not touched twice."""
    m, _ = _reverted(core, policy)
    _step(m, "p", _toks(1000, 16), 2.5, 30.0)
    m.begin_step("n", _toks(5000, 12), now=2.6)
    m.allocate_slots("n", 12, now=2.6)
    assert m.lookup("a", _toks(0, 45)).num_cached_tokens >= 36
    assert m.lookup("p", _toks(1000, 17)).num_cached_tokens >= 8
    _check(m)


def test_a_disowned_block_another_session_holds_stays_plain_cache(core):
    """b repeats a's old 40 tokens while a is compacted and pauses holding them: the
    blocks are shared, and a's revert must not take them as its own (b's context would be
    priced as a's, and dropped as dead at a's end); a's record forgets them."""
    m = _manager(core, "graph")
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    old = list(m.session("a").block_ids)
    _step(m, "a", _toks(0, 4), 1.0, 1.0)
    _step(m, "b", _toks(0, 41), 1.5, 50.0)
    assert m.session("b").block_ids[:10] == old
    _step(m, "a", _toks(0, 44), 2.0, 1.0)
    assert [m.block_owner[b] for b in old] == [None] * 10
    assert "a" not in m._disowned
    _check(m)


def test_a_refused_revert_leaves_the_blocks_disowned_and_its_retry_reowns(core):
    """The revert's `step_started` raising takes the begin back: the blocks it gave back
    are disowned again (before the take-back's release files them) and recorded again;
    the retry gives them back."""
    m = _manager(core, "saga")
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    old = list(m.session("a").block_ids)
    _step(m, "a", _toks(0, 4), 1.0, 1.0)
    recorded = dict(m._disowned["a"])
    refused_begin(m, "a", _toks(0, 44), 2.0)
    assert [m.block_owner[b] for b in old[1:]] == [None] * 9
    assert m._disowned["a"] == recorded
    _check(m)
    _step(m, "a", _toks(0, 44), 2.0, 1.0)
    assert _owned(m, "a") == sorted(m.session("a").block_ids)
    _check(m)


def test_a_revert_after_evictions_reowns_what_is_left_and_drops_the_rest(core):
    """Bounded: n's allocation evicts some of a's disowned blocks (their record entries now
    name blocks that hold n's tokens); a's revert gives back the ones still holding its
    old context, owns the recomputed rest as any allocation, and drops the stale entries
    (its record is empty: gone)."""
    m = _manager(core, "graph")
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    _step(m, "a", _toks(0, 4), 1.0, 1.0)
    assert len(m._disowned["a"]) == 9
    m.begin_step("n", _toks(5000, 40), now=1.1)  # 10 blocks: 5 free, the rest evicted
    m.allocate_slots("n", 40, now=1.1)
    m.finish_step("n", now=1.1, tool="t", expected_s=100.0)
    stale = [b for b, h in m._disowned["a"].items() if m.pool.block_hash[b] != h]
    assert stale
    start = _step(m, "a", _toks(0, 44), 2.0, 1.0)
    assert 4 <= start.num_cached_tokens < 40
    assert _owned(m, "a") == sorted(m.session("a").block_ids)
    assert "a" not in m._disowned
    _check(m)


def test_end_session_drops_the_record(core):
    """Bounded: the record goes with the session."""
    m = _manager(core, "saga")
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    _step(m, "a", _toks(0, 4), 1.0, 1.0)
    assert len(m._disowned["a"]) == 9
    m.end_session("a", now=1.3)
    assert "a" not in m._disowned
    _check(m)


def test_adaptives_shadow_caches_give_the_reverted_blocks_back_too(core):
    """Each of `adaptive`'s shadow caches mirrors the manager's ownership: after the revert
    its shadows own a's whole table again too (was: 2 of 11)."""
    m, _ = _reverted(core, "adaptive")
    shadows = m.policy._shadows
    assert shadows
    for sh in shadows:
        owned = [b for b, o in enumerate(sh.block_owner) if o == "a"]
        assert len(owned) == 11, (sh.policy.name, owned)
        assert "a" not in sh._disowned
        sh.check_integrity()
