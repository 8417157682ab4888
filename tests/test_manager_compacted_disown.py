"""A compacted context's old blocks are disowned when the compacted step finishes
(`KVCacheManager._disown_dead`, review s54 mutsched2 section 2).

A client that compacts an agent session's context sends a prompt that keeps only a prefix of
the last context; `begin_step` cuts the session's hashes there. The old context's blocks past
the prefix stayed owned by the session until its end, and every policy that prices ownership
(ttl, graph, saga, adaptive) ranked them as that session's paused context: a session due
back soon kept its dead blocks while another paused session, due later, lost its live
context, and the `workflow` scheduler charged only the compacted context. From the finish
on they are plain cache, filed `dead` by the grouped policies (as an ended session's
blocks). While the compacted step runs they stay the session's own
(tests/scheduler/test_compacted_running_charge.py pins why). Both cores."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.policy.groups import DEAD
from kvsaga.pool import CACHED

PRICED = ["ttl", "graph", "saga", "adaptive"]  # the policies that price block ownership
BS = 4


def _toks(base: int, n: int) -> list[int]:
    return list(range(base, base + n))


def _manager(core, policy: str, **kw) -> KVCacheManager:
    return KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, policy=policy,
                          clock=lambda: 0.0, core=core.name, **kw)


def _step(m, sid, ids, now, tool_s):
    m.begin_step(sid, ids, now=now)
    m.allocate_slots(sid, len(ids), now=now)
    m.finish_step(sid, now=now, tool="t", expected_s=tool_s)


def _owned(m, sid) -> list[int]:
    return [b for b, o in enumerate(m.block_owner) if o == sid]


def _check(m) -> None:
    m.check_integrity()
    check = getattr(m.policy, "check_integrity", None)
    if check is not None:
        check()


def refused_begin(m, sid, ids, now) -> None:
    """`begin_step(sid, ids)` whose policy's `step_started` raises: refused, the hook put
    back after."""
    real = m.policy.step_started

    def refuse(session, now):
        raise RuntimeError("refused")

    m.policy.step_started = refuse
    with pytest.raises(RuntimeError, match="refused"):
        m.begin_step(sid, ids, now=now)
    m.policy.step_started = real


def disowned_past_kept(m, old, policy) -> None:
    """a's old 10-block table after a step kept only its first 4 tokens: old block 0 (its
    first block's hash) still a's own, blocks 1-9 plain cache, filed dead by a grouped
    policy (adaptive: its first expert's)."""
    assert [m.block_owner[b] for b in old] == ["a"] + [None] * 9
    assert all(m.pool.state[b] == CACHED for b in old)
    assert m._left_owned.get("a", set()) <= {old[0]}
    grouped = getattr(m.policy, "_where", None)
    if policy == "adaptive":
        grouped = m.policy.experts[0].policy._where
    if grouped is not None:
        assert all(grouped[b] == DEAD for b in old[1:])
    _check(m)


def _compacted(core, policy, **kw):
    """a (40 tokens, 10 blocks) paused; p (16 tokens, 4 blocks) paused on a 100 s tool;
    a's next step keeps only its first 4 tokens (compacted) and finishes on a 1 s tool.
    Returns the manager and a's old table."""
    m = _manager(core, policy, **kw)
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    old = list(m.session("a").block_ids)
    _step(m, "p", _toks(1000, 16), 0.5, 100.0)  # p is due back late
    _step(m, "a", _toks(0, 4), 1.0, 1.0)  # a is due back at 2.0
    return m, old


@pytest.mark.parametrize("policy", PRICED)
def test_a_compacted_session_due_soon_keeps_no_dead_blocks_over_a_later_context(core, policy):
    """A new 44-token session takes 11 of the 16 blocks: the room comes from a's dead old
    context, not from p's live one (was, for every policy here: a kept 5 dead blocks and p
    lost all 4 of its context; /tmp/ms2/probe_evict4.py)."""
    m, old = _compacted(core, policy)
    m.begin_step("n", _toks(5000, 44), now=1.1)
    m.allocate_slots("n", 44, now=1.1)
    assert len(_owned(m, "p")) == 4
    assert m.lookup("p", _toks(1000, 17)).gpu_hit_blocks == 4
    assert m.lookup("a", _toks(0, 5)).num_cached_tokens == 4  # a's live block too
    assert not any(m.block_owner[b] == "a" for b in old[1:])
    _check(m)


@pytest.mark.parametrize("policy", PRICED + ["lru"])
def test_the_finish_disowns_exactly_the_blocks_past_the_kept_context(core, policy):
    """Old blocks 1-9 hold none of a's context (hashes past its 4 tokens): plain cache, filed
    dead by a grouped policy, and no longer remembered for `end_session`. Old block 0 holds
    its first block's hash (its new step computed a duplicate, left unhashed): a's next
    prompt hits it, so it stays a's own. Nothing was disowned while the step ran."""
    m = _manager(core, policy)
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    old = list(m.session("a").block_ids)
    m.begin_step("a", _toks(0, 4), now=1.0)
    m.allocate_slots("a", 4, now=1.0)
    assert all(m.block_owner[b] == "a" for b in old)  # running: still its own
    m.finish_step("a", now=1.0, tool="t", expected_s=1.0)
    disowned_past_kept(m, old, policy)
    m.end_session("a")
    assert _owned(m, "a") == []
    _check(m)


@pytest.mark.parametrize("policy", ["graph", "ttl"])
def test_an_edited_context_disowns_only_the_abandoned_branch(core, policy):
    """A prompt that keeps 2 of a's 7 tokens and adds 3 others: the old blocks past its
    first (the abandoned branch) are disowned at the finish, its first block stays its
    own."""
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 8, core=core.name, policy=policy)
    m.begin_step("a", [1, 2, 3, 4, 5, 6, 7])
    m.allocate_slots("a", 7)
    m.finish_step("a")
    first, *branch = m.session("a").block_ids
    m.begin_step("a", [1, 2, 9, 9, 9])
    m.allocate_slots("a", 3)
    m.finish_step("a")
    assert m.block_owner[first] == "a" and first in m.session("a").block_ids
    assert [m.block_owner[b] for b in branch[:2]] == [None, None]  # were: "a"
    _check(m)


def test_a_refused_compacted_begin_then_its_retry_disowns_at_the_finish(core):
    """The rollback case: a compacted begin_step whose policy hook raises is taken back
    (`_unbegin`: a paused at the common prefix, its old blocks its own as before the call,
    nothing disowned by a begin); the retry's finish disowns them."""
    m = _manager(core, "graph")
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    old = list(m.session("a").block_ids)
    refused_begin(m, "a", _toks(0, 4), 1.0)
    assert all(m.block_owner[b] == "a" for b in old)
    _check(m)
    _step(m, "a", _toks(0, 4), 1.0, 1.0)
    assert [m.block_owner[b] for b in old] == ["a"] + [None] * 9
    _check(m)


def _graph_a_paused(core):
    """A `graph` manager with a (40 tokens, 10 blocks) paused on a 1 s tool; returns it and
    a's table."""
    m = _manager(core, "graph")
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    return m, list(m.session("a").block_ids)


def refuse_disowning(session, block_ids, now):
    """A policy's `blocks_disowned` that raises."""
    raise RuntimeError("refused")


def test_a_raising_blocks_disowned_disowns_nothing_and_the_next_finish_does(core):
    """The policy's `blocks_disowned` raising: the step is finished (a paused), nothing is
    disowned and the policy's books are as they were; the next finish disowns them."""
    m, old = _graph_a_paused(core)
    real = m.policy.blocks_disowned
    m.policy.blocks_disowned = refuse_disowning
    m.begin_step("a", _toks(0, 4), now=1.0)
    m.allocate_slots("a", 4, now=1.0)
    with pytest.raises(RuntimeError, match="refused"):
        m.finish_step("a", now=1.0)
    assert m.session("a").state.name == "PAUSED"
    assert all(m.block_owner[b] == "a" for b in old)
    _check(m)
    m.policy.blocks_disowned = real
    start = m.begin_step("a", _toks(0, 5), now=2.0)
    m.allocate_slots("a", 5 - start.num_cached_tokens, now=2.0)
    m.finish_step("a", now=2.0, tool="t", expected_s=1.0)
    assert [m.block_owner[b] for b in old] == ["a"] + [None] * 9
    _check(m)


def test_the_dead_blocks_are_not_offloaded_as_the_sessions_context(core):
    """With a host tier, `graph` offloads an evicted block of a session it expects back
    and counts it toward that session's prefetch. a's dead blocks were offloaded so (9
    host copies of blocks nobody reads, a named for a prefetch that finds nothing to
    load); filed dead, they are discarded. p's context is still kept whole."""
    m, old = _compacted(core, "graph", num_host_blocks=16)
    hashes = [m.pool.block_hash[b] for b in old[1:]]
    m.begin_step("n", _toks(5000, 44), now=1.1)
    m.allocate_slots("n", 44, now=1.1)
    assert not any(m.host.has_copy(h) for h in hashes)
    assert "a" not in m.policy._on_host
    assert len(_owned(m, "p")) == 4
    _check(m)


def test_adaptives_shadow_caches_disown_the_dead_blocks_too(core):
    """Each of `adaptive`'s shadow caches mirrors the manager's ownership (its
    `_left_owned`): its finish disowns the compacted context's blocks as the manager's
    does, and its policy files them dead."""
    m, _ = _compacted(core, "adaptive")
    shadows = m.policy._shadows
    assert shadows
    for sh in shadows:
        owned = [b for b, o in enumerate(sh.block_owner) if o == "a"]
        assert len(owned) <= 2, (sh.policy.name, owned)  # a's 4-token context (was 11)
        assert "a" not in sh._left_owned or len(sh._left_owned["a"]) <= 1
        sh.check_integrity()


def test_belady_keys_the_disowned_blocks_as_plain_cache(core):
    """`belady` (grouped, offline) asks its oracle of a disowned block as of plain cache
    (no session: never used again here) and keys it in its heap, so the new session's room
    comes from a's dead blocks, not from p's context, due at 100 s (was: asked as a's, due
    at 2 s, they outranked p's)."""
    from kvsaga.policy import BeladyPolicy
    from tests.policy.helpers import TableOracle

    oracle = TableOracle({"a": 2.0, "p": 100.0})
    m, old = _compacted(core, BeladyPolicy(oracle))
    m.begin_step("n", _toks(5000, 44), now=1.1)
    m.allocate_slots("n", 44, now=1.1)
    assert len(_owned(m, "p")) == 4
    assert not any(m.pool.state[b] == CACHED for b in old[1:])
    _check(m)
