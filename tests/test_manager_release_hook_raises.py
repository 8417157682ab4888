"""A release whose pool hook `blocks_cached` raises (`finish_step`, `preempt`, a running
session's `end_session`): the call completes consistently, the blocks that release cached
dropped unseen, so the session can go on (review s50 hooks, item 2). Both cores; LRU and a
grouped policy.
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


def manager(name: str, core: str, num_blocks: int = 8):
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
                       clock=lambda: 0.0, core=core)
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
