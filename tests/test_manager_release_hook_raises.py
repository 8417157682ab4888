"""A release whose pool hook `blocks_cached` raises (`finish_step`, `preempt`, a running
session's `end_session`): the call completes consistently, the blocks that release cached
dropped unseen, so the session can go on (review s50 hooks, item 2); so do the releases of
`discard_writes`, `drop_transfer` and `prefetch` (review s50 diff-hooks, finding 2). A paused
session's `end_session` whose tail eviction raises changes nothing (finding 1). Both cores;
LRU and a grouped policy.
"""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.policy import make_policy
from kvsaga.session import SessionState

BS = 4
CORES = ["python", *(["cpp"] if cpp_available() else [])]
POLICIES = ["lru", "saga"]


def _raising(p, told):
    """`told` (a batch `blocks_cached`) raising while `p.fail` is set, before it records
    anything, as a batch hook must."""
    def blocks_cached(ids):
        if p.fail:
            raise RuntimeError("blocks_cached failed (a policy bug)")
        told(ids)

    return blocks_cached


def manager(name: str, core: str, num_blocks: int = 8, num_host_blocks: int = 0):
    """A manager over policy `name`, whose `blocks_cached` raises while `p.fail` is set."""
    p = make_policy(name)
    p.fail = False
    if name == "lru":  # its hooks are bound to its queue in `bind`
        bind = p.bind

        def bind_wrapped(view):
            bind(view)
            p.blocks_cached = _raising(p, p.blocks_cached)
            p.victim_queue = None

        p.bind = bind_wrapped
    else:
        p.blocks_cached = _raising(p, p.blocks_cached)
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_blocks, policy=p,
                       clock=lambda: 0.0, core=core, num_host_blocks=num_host_blocks)
    return m, p


def cached_ids(m: KVCacheManager) -> list[int]:
    return sorted(b for b in range(m.pool.num_blocks) if m.pool.state_name(b) == "cached")


def consistent(m: KVCacheManager, p) -> None:
    """The manager's books hold and the policy orders exactly the pool's CACHED blocks."""
    m.check_integrity()
    if hasattr(p, "eviction_order"):
        assert sorted(p.eviction_order()) == cached_ids(m)
    else:
        p.check_integrity()  # grouped: tracked blocks are exactly the CACHED ones
    held = {b for s in m.sessions.values() if s.state is SessionState.RUNNING
            for b in s.block_ids}
    assert {b for b in range(m.pool.num_blocks) if m.pool.refcount[b]} == held


def running_a(m: KVCacheManager) -> None:
    m.begin_step("a", list(range(14)))
    m.allocate_slots("a", 14)  # 3 full blocks and a partial tail


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("core", CORES)
def test_a_finish_step_whose_release_hook_raises_leaves_a_session_that_resumes(core, policy):
    """Before the fix the released blocks stayed CACHED, unseen by the policy: every
    resume of the session raised in the hit's `blocks_uncached` ('block 0 is not queued')
    until it was ended."""
    m, p = manager(policy, core)
    running_a(m)
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.finish_step("a", tool="t")
    p.fail = False
    s = m.sessions["a"]
    assert s.state is SessionState.PAUSED and s.hint.tool == "t"
    assert s.tail is None and s.num_computed == 0 and s.block_ids == []
    assert cached_ids(m) == [] and list(m.index.items()) == []  # dropped: freed and unindexed
    consistent(m, p)
    start = m.begin_step("a", [*s.token_ids, 5])  # it goes on: recomputes its context
    assert start.num_cached_tokens == 0
    m.allocate_slots("a", 15)
    m.finish_step("a")
    consistent(m, p)
    assert m.begin_step("a", [*s.token_ids, 6]).num_cached_tokens == 15
    consistent(m, p)


@pytest.mark.parametrize("core", CORES)
def test_a_raising_release_keeps_the_prefix_a_running_step_holds(core):
    """The blocks another running step still holds were not released to the policy: they
    stay in the paused session's table (its computed tokens cut after them), and the
    session resumes hitting them."""
    m, p = manager("lru", core, num_blocks=12)
    m.begin_step("b", list(range(8)))  # b holds 2 blocks a's prompt hits
    m.allocate_slots("b", 8)
    m.finish_step("b")
    m.begin_step("b", [*range(8), 50])
    m.begin_step("a", list(range(14)))
    m.allocate_slots("a", 14 - m.sessions["a"].num_computed)
    shared = m.sessions["a"].block_ids[:2]
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.finish_step("a")
    p.fail = False
    s = m.sessions["a"]
    assert s.block_ids == shared and s.num_computed == 8
    consistent(m, p)
    assert m.begin_step("a", [*s.token_ids, 5]).num_cached_tokens == 8
    consistent(m, p)


@pytest.mark.parametrize("core", CORES)
def test_a_preempt_whose_release_hook_raises_can_be_retried(core):
    m, p = manager("lru", core)
    running_a(m)
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.preempt("a")
    p.fail = False
    consistent(m, p)
    assert m.sessions["a"].state is SessionState.PAUSED
    assert m.begin_step("a", list(range(14))).num_cached_tokens == 0
    m.allocate_slots("a", 14)
    consistent(m, p)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("core", CORES)
def test_an_end_session_whose_release_hook_raises_still_ends_it(core, policy):
    """Before the fix the session stayed, RUNNING, its references dropped: a second
    `end_session` released them again."""
    m, p = manager(policy, core)
    running_a(m)
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.end_session("a")
    p.fail = False
    assert "a" not in m.sessions
    assert all(o is None for o in m.block_owner)
    consistent(m, p)
    m.begin_step("c", list(range(100, 132)))  # every block free: none lost
    m.allocate_slots("c", 32)
    consistent(m, p)


def manager_uncached_raising(name: str, core: str, num_blocks: int = 8):
    """A manager over policy `name`, whose `blocks_uncached` raises while `p.fail` is set
    (before it records anything, as a batch hook must)."""
    p = make_policy(name)
    p.fail = False

    def raising(told):
        def blocks_uncached(ids):
            if p.fail:
                raise RuntimeError("blocks_uncached failed (a policy bug)")
            told(ids)

        return blocks_uncached

    if name == "lru":
        bind = p.bind

        def bind_wrapped(view):
            bind(view)
            p.blocks_uncached = raising(p.blocks_uncached)
            p.victim_queue = None

        p.bind = bind_wrapped
    else:
        p.blocks_uncached = raising(p.blocks_uncached)
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), num_blocks, policy=p,
                       clock=lambda: 0.0, core=core)
    return m, p


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("core", CORES)
def test_an_end_session_whose_tail_eviction_raises_changes_nothing(core, policy):
    """A paused session keeping a partial tail, ended while the policy's `blocks_uncached`
    (the tail's eviction) raises. Before the fix the policy was told the end first and the
    session was forgotten anyway, its tail left CACHED, unhashed and no session's tail
    (`check_integrity` failed; review s50 diff-hooks, finding 1). Now the call changes
    nothing: the session stays paused with its tail, and a second `end_session` ends it."""
    m, p = manager_uncached_raising(policy, core)
    m.begin_step("a", list(range(6)))
    m.allocate_slots("a", 6)  # a full block and a partial tail
    m.finish_step("a")
    s = m.sessions["a"]
    tail = s.tail
    assert tail is not None
    owners, cached = list(m.block_owner), cached_ids(m)
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_uncached failed"):
        m.end_session("a")
    p.fail = False
    assert m.sessions.get("a") is s and s.state is SessionState.PAUSED and s.tail == tail
    assert list(m.block_owner) == owners and cached_ids(m) == cached
    consistent(m, p)
    if policy == "saga":
        assert sorted(p.groups["a"]) == s.block_ids  # the policy still has the session's blocks
    m.end_session("a")
    assert "a" not in m.sessions and m.pool.state_name(tail[0]) == "free"
    consistent(m, p)
    m.begin_step("c", list(range(100, 132)))  # every block evictable: none lost
    m.allocate_slots("c", 32)
    consistent(m, p)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("core", CORES)
def test_a_discard_writes_whose_release_hook_raises_completes(core, policy):
    """`discard_writes` cuts a stale hit out of another running table (b's), whose later
    hashed block its release caches, and `blocks_cached` raises there. Before the fix that
    block stayed CACHED and indexed but unknown to the policy: b's resume hit it and raised
    'block N is not queued' (review s50 diff-hooks, finding 2). Now it is dropped unseen,
    every running session is still cut, and the error propagates."""
    m, p = manager(policy, core, num_blocks=12)
    m.begin_step("a", list(range(8)))
    m.allocate_slots("a", 8)
    m.finish_step("a")
    m.begin_step("a", list(range(17)))
    m.allocate_slots("a", 9)  # a's pass writes its blocks 2, 3 and a tail
    m.begin_step("b", [*range(16), 90, 91, 92, 93, 94])  # b hits a's blocks 0-3
    m.allocate_slots("b", 5)  # b's own hashed block 4 and a tail
    assert m.sessions["b"].block_ids[:4] == m.sessions["a"].block_ids[:4]
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.discard_writes({"a": 8})  # a's pass failed: blocks 2 and 3 were never written
    p.fail = False
    a, b = m.sessions["a"], m.sessions["b"]
    assert a.num_computed == 8 and len(a.block_ids) == 2
    assert b.num_computed == 8 and b.block_ids == a.block_ids  # cut before the stale block
    assert cached_ids(m) == []  # b's block 4, cached by the raising release, dropped
    assert len(m.index) == 2  # a's blocks 0, 1 only
    consistent(m, p)
    m.allocate_slots("a", 9)  # a computes its pass again
    m.allocate_slots("b", 13)
    m.finish_step("a")
    m.finish_step("b")
    consistent(m, p)
    assert m.begin_step("b", [*range(16), 90, 91, 92, 93, 94, 95]).num_cached_tokens == 21
    consistent(m, p)


@pytest.mark.parametrize("core", CORES)
def test_a_discard_writes_raising_release_still_cuts_every_session(core):
    """A third session to cut after the one whose release raises (b's, as above): before
    the fix the loop stopped at the raise, and c kept its never-written block and the
    tokens in it as computed."""
    m, p = manager("lru", core, num_blocks=16)
    m.begin_step("a", list(range(8)))
    m.allocate_slots("a", 8)
    m.finish_step("a")
    m.begin_step("a", list(range(17)))
    m.allocate_slots("a", 9)
    m.begin_step("b", [*range(16), 90, 91, 92, 93, 94])
    m.allocate_slots("b", 5)
    m.begin_step("c", list(range(100, 108)))
    m.allocate_slots("c", 8)
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.discard_writes({"a": 8, "c": 4})
    p.fail = False
    assert [m.sessions[sid].num_computed for sid in "abc"] == [8, 8, 4]
    assert len(m.sessions["c"].block_ids) == 1
    assert len(m.index) == 3  # a's blocks 0, 1 and c's block 0
    consistent(m, p)


def a_offloaded(policy: str, core: str):
    """A manager with a host tier where paused a's last block was evicted to the host by b's
    step (both paused on a tool), the offload's copies taken."""
    m, p = manager(policy, core, num_host_blocks=8)
    m.begin_step("a", list(range(12)))
    m.allocate_slots("a", 12)
    m.finish_step("a", tool="t")
    m.begin_step("b", list(range(100, 124)))
    m.allocate_slots("b", 24)  # evicts a's last block to the host tier
    m.finish_step("b", tool="t")
    m.take_transfers()
    return m, p


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("core", CORES)
def test_a_drop_transfer_whose_release_hook_raises_completes(core, policy):
    """`drop_transfer` of a failed load cuts a's table at the loaded block; a's own hashed
    block after it, cached by the release, is dropped unseen when `blocks_cached` raises
    (the same `_take_back` as `discard_writes`). Before the fix it stayed CACHED and
    indexed, unknown to the policy."""
    m, p = a_offloaded(policy, core)
    start = m.begin_step("a", list(range(20)))  # 2 GPU hits, 1 host hit (a load)
    assert start.num_cached_tokens == 12
    m.allocate_slots("a", 8)  # a's own block 3, full: hashed
    plan = m.take_transfers()
    assert len(plan.loads) == 1
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.drop_transfer(plan)
    p.fail = False
    a = m.sessions["a"]
    assert a.num_computed == 8 and len(a.block_ids) == 2
    consistent(m, p)
    m.allocate_slots("a", 12)
    m.finish_step("a")
    consistent(m, p)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("core", CORES)
def test_a_prefetch_whose_closing_release_hook_raises_completes(core, policy):
    """A prefetch loads a's offloaded block back and holds a's resident head meanwhile;
    its closing release (which caches them all again) raises in `blocks_cached`. Before
    the fix they stayed CACHED and indexed but unknown to the policy: a's resume hit them
    and raised 'block N is not queued' (review s50 diff-hooks, finding 2). Now they are
    dropped unseen (the loaded ones keep their host copies), and the error propagates."""
    m, p = a_offloaded(policy, core)
    found = m.lookup("a", list(range(13)))  # the prefetch holds 2 and loads 1
    assert (found.gpu_hit_blocks, found.host_hit_blocks) == (2, 1)
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.prefetch("a")
    p.fail = False
    consistent(m, p)
    m.take_transfers()
    start = m.begin_step("a", list(range(13)))  # goes on: its blocks from the host again
    m.allocate_slots("a", 13 - start.num_cached_tokens)
    m.finish_step("a")
    consistent(m, p)
    m.end_session("a")
    m.end_session("b")
    m.begin_step("c", list(range(200, 232)))  # every GPU block free or evictable
    m.allocate_slots("c", 32)
    consistent(m, p)
