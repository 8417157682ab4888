"""A preempted compacted step disowns its old context's dead blocks at the preempt, as its
finish would (`KVCacheManager.preempt` -> `_disown_dead`, review s55 diffcompact MED-2).

`begin_step` of a compacted prompt cuts the session's hashes at the common prefix; the old
blocks past it stayed owned by the session until the step's finish. A preempted step is
neither running nor finished: its retry (the same prompt) only finishes later, so meanwhile
every policy that prices ownership (ttl, graph, saga, adaptive) kept the dead blocks as that
session's context and evicted another paused session's live context first. Both cores."""

from __future__ import annotations

from collections import Counter

import pytest

from kvsaga.pool import CACHED
from tests.test_manager_compacted_disown import (
    PRICED,
    _check,
    _graph_a_paused,
    _manager,
    _owned,
    _toks,
    disowned_past_kept,
    refuse_disowning,
)
from tests.test_manager_compacted_reown import _step


def _preempted(core, policy, **kw):
    """a (40 tokens, 10 blocks) paused; p (16 tokens) paused on a 100 s tool; a's next step
    keeps only its first 4 tokens (compacted), is allocated and preempted. Returns the
    manager and a's old table."""
    m = _manager(core, policy, **kw)
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    old = list(m.session("a").block_ids)
    _step(m, "p", _toks(1000, 16), 0.5, 100.0)
    m.begin_step("a", _toks(0, 4), now=1.0)
    m.allocate_slots("a", 4, now=1.0)
    assert all(m.block_owner[b] == "a" for b in old)  # running: still its own
    m.preempt("a", now=1.05)
    return m, old


@pytest.mark.parametrize("policy", PRICED + ["lru"])
def test_the_preempt_disowns_the_blocks_past_the_kept_context(core, policy):
    """Old blocks 1-9 (past a's 4 tokens) are plain cache from the preempt on, filed dead
    by a grouped policy (was: owned by a until the retry's finish); old block 0 holds a's
    first block's hash and stays its own."""
    m, old = _preempted(core, policy)
    disowned_past_kept(m, old, policy)


@pytest.mark.parametrize("policy", PRICED)
def test_a_preempted_compacted_session_keeps_no_dead_blocks_over_a_live_context(core, policy):
    """A new 44-token session takes 11 of the 16 blocks after the preempt: the room comes
    from a's dead old context, not from p's live one (was: p hit 0 of its 4 blocks, 4 of
    a's 9 dead blocks still cached; /tmp/c2/preempt.py)."""
    m, old = _preempted(core, policy)
    m.begin_step("n", _toks(5000, 44), now=1.1)
    m.allocate_slots("n", 44, now=1.1)
    assert len(_owned(m, "p")) == 4
    assert m.lookup("p", _toks(1000, 17)).gpu_hit_blocks == 4
    assert not any(m.pool.state[b] == CACHED for b in old[1:])
    _check(m)


@pytest.mark.parametrize("policy", ["graph", "saga"])
def test_the_retry_runs_and_finishes_on_the_compacted_context(core, policy):
    """The retry (the same prompt) hits a's live block, finishes, and a owns exactly its
    table; nothing is left remembered."""
    m, old = _preempted(core, policy)
    _step(m, "a", _toks(0, 5), 1.2, 1.0)
    assert [m.block_owner[b] for b in old[1:]] == [None] * 9
    assert _owned(m, "a") == sorted(m.session("a").block_ids)
    assert "a" not in m._left_owned
    _check(m)


@pytest.mark.parametrize("policy", ["graph", "saga"])
def test_a_retry_back_on_the_old_context_owns_it_again(core, policy):
    """A retry that goes back to the old 40 tokens + 4 (the client dropped its compaction)
    hits the 10 old blocks and, the preempt having disowned 1-9, gets them back
    (`_reown`): its finish leaves a owning its whole table."""
    m, old = _preempted(core, policy)
    start = m.begin_step("a", _toks(0, 44), now=1.2)
    assert start.num_cached_tokens == 40
    m.allocate_slots("a", 4, now=1.2)
    m.finish_step("a", now=1.2, tool="t", expected_s=1.0)
    assert m.session("a").block_ids[:10] == old
    assert _owned(m, "a") == sorted(m.session("a").block_ids)
    _check(m)


def test_a_raising_blocks_disowned_at_the_preempt_disowns_nothing_then_the_finish_does(core):
    """`blocks_disowned` raising at the preempt: the step is preempted (a paused, its
    references dropped), nothing disowned, the books consistent; the retry's finish
    disowns them."""
    m, old = _graph_a_paused(core)
    real = m.policy.blocks_disowned
    m.begin_step("a", _toks(0, 4), now=1.0)
    m.allocate_slots("a", 4, now=1.0)
    m.policy.blocks_disowned = refuse_disowning
    with pytest.raises(RuntimeError, match="refused"):
        m.preempt("a", now=1.05)
    assert m.session("a").state.name == "PAUSED"
    assert all(m.block_owner[b] == "a" for b in old)
    _check(m)
    m.policy.blocks_disowned = real
    _step(m, "a", _toks(0, 4), 1.2, 1.0)
    assert [m.block_owner[b] for b in old] == ["a"] + [None] * 9
    _check(m)


def _shadow_owned(sh, sid) -> list[int]:
    return [b for b, o in enumerate(sh.block_owner) if o == sid]


def test_adaptives_shadow_caches_disown_at_the_preempt_as_the_manager(core):
    """Each shadow cache still runs a's step at the preempt (it learns of it at the
    retry), but the manager's `blocks_disowned` reaches it through adaptive: it disowns its
    own dead blocks by the same rule then, and its owners are the manager's (no eviction
    here), by hash (was: a's 11 blocks until the retry's finish)."""
    m, _ = _preempted(core, "adaptive")
    shadows = m.policy._shadows
    assert shadows
    real = Counter((m.block_owner[b], m.pool.block_hash[b]) for b in range(16)
                   if m.pool.state[b] == CACHED and m.pool.block_hash[b] is not None)
    for sh in shadows:
        assert len(_shadow_owned(sh, "a")) <= 2, (sh.policy.name, _shadow_owned(sh, "a"))
        mirrored = Counter((sh.block_owner[b], sh.block_hash[b]) for b in range(16)
                           if sh.is_cached(b) and sh.block_hash[b] is not None)
        assert mirrored == real
        sh.check_integrity()


def _untold(m) -> None:
    """Each shadow misses the manager's disowning at the preempt (as when its real cache
    had evicted every dead block already: nothing to tell)."""
    for sh in m.policy._shadows:
        sh.blocks_disowned = lambda session, now: None


def _preempted_untold(core):
    """An adaptive manager whose a (40 tokens) ran a compacted step (its first 4 tokens),
    allocated, then preempted with its shadows left untold (`_untold`)."""
    m = _manager(core, "adaptive")
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    m.begin_step("a", _toks(0, 4), now=1.0)
    m.allocate_slots("a", 4, now=1.0)
    _untold(m)
    m.preempt("a", now=1.05)
    return m


def test_a_shadow_untold_at_the_preempt_disowns_at_the_retry(core):
    """A shadow learns of the preempt at the retry's `step_started`, where it releases
    the step's blocks: it disowns the dead blocks its real cache no longer had there."""
    m = _preempted_untold(core)
    assert all(len(_shadow_owned(sh, "a")) == 11 for sh in m.policy._shadows)
    m.begin_step("a", _toks(0, 4), now=1.2)
    for sh in m.policy._shadows:
        assert len(_shadow_owned(sh, "a")) <= 2, (sh.policy.name, _shadow_owned(sh, "a"))
        sh.check_integrity()
    m.allocate_slots("a", 4, now=1.2)
    m.finish_step("a", now=1.2)
    _check(m)


def test_a_shadow_untold_at_the_preempt_disowns_at_the_abort(core):
    """The preempted step aborted while requeued (`resume_withdrawn`): each shadow
    releases its blocks and disowns the dead ones."""
    m = _preempted_untold(core)
    m.resume_withdrawn("a", now=1.2)
    for sh in m.policy._shadows:
        assert len(_shadow_owned(sh, "a")) <= 2, (sh.policy.name, _shadow_owned(sh, "a"))
        sh.check_integrity()
    _check(m)
