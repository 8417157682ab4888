"""A pool hook of the policy (`block(s)_cached` / `block(s)_uncached`) that raises must leave
the manager's books consistent on both cores (review s49 gate3): no hash indexed on a FREE
block, no FREE block in the policy's order, no reference that no table holds.
"""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.policy import LRUPolicy

BS = 4
CORES = ["python", *(["cpp"] if cpp_available() else [])]


class UncachedFails(LRUPolicy):
    """LRU whose `blocks_uncached` (or, `per_block`, its `block_uncached` on the 2nd call)
    raises while `fail` is set (a policy bug), taking the listed way of eviction (no C++
    `evict_head`)."""

    fail = False
    per_block = False
    calls = 0

    def bind(self, view):
        super().bind(view)
        if self.per_block:
            told_one = self.block_uncached

            def block_uncached(b):
                if self.fail:
                    self.calls += 1
                    if self.calls == 2:
                        raise RuntimeError("block_uncached failed (a policy bug)")
                told_one(b)

            self.block_uncached = block_uncached
            self.blocks_uncached = None
        else:
            told = self.blocks_uncached

            def blocks_uncached(ids):
                if self.fail:
                    raise RuntimeError("blocks_uncached failed (a policy bug)")
                told(ids)

            self.blocks_uncached = blocks_uncached
        self.victim_queue = None


def books(m: KVCacheManager, p: LRUPolicy) -> tuple:
    """What an eviction changes: the cached blocks, the index, the owners, the policy's order."""
    return (cached_ids(m), sorted(m.index.items()), list(m.block_owner), p.eviction_order())


@pytest.mark.parametrize("per_block", [False, True], ids=["batch", "per_block"])
@pytest.mark.parametrize("core", CORES)
def test_an_eviction_whose_uncached_hook_raises_changes_nothing(core, per_block):
    """A raising hook has told the policy nothing, so the eviction must change nothing: the
    victims stay CACHED, indexed and owned, in the policy's order as before. Before the fix
    the pool freed them (and unindexed and disowned them) while the policy still listed
    them (per block, the undo re-listed the one already told): FREE blocks in the policy's
    order, and `end_session` then raised part way ("block 2 is already queued") (review s49
    hooks, finding 2)."""
    p = UncachedFails()
    p.per_block = per_block
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 4, policy=p, clock=lambda: 0.0,
                       core=core)
    m.begin_step("a", list(range(12)))
    m.allocate_slots("a", 12)
    m.finish_step("a")  # blocks 0, 1, 2 cached, owned by a
    m.begin_step("b", list(range(100, 116)))
    before = books(m, p)
    p.fail = True
    with pytest.raises(RuntimeError, match="uncached failed"):
        m.allocate_slots("b", 16)  # 1 free block and 3 of a's evicted
    p.fail = False
    m.check_integrity()
    after = books(m, p)
    assert after[:3] == before[:3]
    # (per block, the undo re-tells `block_cached`, which may move recency: finding 5)
    assert after[3] == before[3] if not per_block else sorted(after[3]) == sorted(before[3])
    assert sorted(p.eviction_order()) == cached_ids(m) == [0, 1, 2]
    m.allocate_slots("b", 16)  # the hook mended: the same eviction goes through
    m.end_session("b")
    m.check_integrity()
    assert sorted(p.eviction_order()) == cached_ids(m)
    assert m.begin_step("a", list(range(13))).num_cached_tokens == 0


class PerBlock(LRUPolicy):
    """LRU told block by block (no `blocks_cached`), whose `block_cached` raises on its 2nd
    call while armed."""

    armed = False
    calls = 0

    def bind(self, view):
        super().bind(view)
        push = self.block_cached

        def block_cached(b):
            if self.armed:
                self.calls += 1
                if self.calls == 2:
                    raise RuntimeError("block_cached failed (a policy bug)")
            push(b)

        self.block_cached = block_cached
        self.blocks_cached = None


def cached_ids(m: KVCacheManager) -> list[int]:
    return sorted(b for b in range(m.pool.num_blocks) if m.pool.state_name(b) == "cached")


@pytest.mark.parametrize("core", CORES)
def test_an_import_whose_per_block_hook_raises_part_way_leaves_no_free_block_queued(core):
    """The import's pause released 3 blocks; block_cached raised on the 2nd. Before the fix
    the 1st stayed in LRU's queue after the take-back freed it: the next eviction raised
    ("invalid victims" / "not cached")."""
    src = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, clock=lambda: 0.0)
    src.begin_step("a", list(range(12)))
    src.allocate_slots("a", 12)
    src.finish_step("a")
    export = src.export_session("a").export
    p = PerBlock()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 6, policy=p, clock=lambda: 0.0,
                       core=core)
    m.begin_step("d", list(range(200, 208)))
    m.allocate_slots("d", 8)
    m.finish_step("d")
    p.armed = True
    with pytest.raises(RuntimeError, match="block_cached failed"):
        m.import_session(export)
    p.armed = False
    m.check_integrity()
    assert sorted(p.eviction_order()) == cached_ids(m)
    m.begin_step("c", list(range(100, 124)))  # 6 blocks: every one free or evicted
    m.allocate_slots("c", 24)
    m.check_integrity()


class HookFails(LRUPolicy):
    """LRU whose batch hook named by `fail` raises (a policy bug) before it changes
    anything, as a batch hook must."""

    fail: str | None = None

    def bind(self, view):
        super().bind(view)
        for hook in ("blocks_cached", "blocks_uncached"):
            setattr(self, hook, self._failing(hook, getattr(self, hook)))

    def _failing(self, hook, told):
        def call(ids):
            if self.fail == hook:
                raise RuntimeError(f"{hook} failed (a policy bug)")
            told(ids)

        return call


def paused_a(core: str) -> tuple[KVCacheManager, HookFails]:
    p = HookFails()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 8, policy=p, clock=lambda: 0.0,
                       core=core)
    m.begin_step("a", list(range(12)))
    m.allocate_slots("a", 12)
    m.append_tokens("a", [99])
    m.finish_step("a")  # a: 3 full blocks cached, a tail
    return m, p


@pytest.mark.parametrize("core", CORES)
def test_hits_whose_blocks_uncached_raises_keep_no_reference(core):
    """Before the fix the hits kept the references `acquire_many` took (the pool changed,
    then its hook raised): a PAUSED session's blocks at refcount 1 that no table held,
    ACTIVE for good (check_integrity failed on both cores)."""
    m, p = paused_a(core)
    order = p.eviction_order()
    p.fail = "blocks_uncached"
    with pytest.raises(RuntimeError, match="blocks_uncached failed"):
        m.begin_step("a", [*m.sessions["a"].token_ids, 5])
    p.fail = None
    m.check_integrity()
    assert [m.pool.refcount[b] for b in range(8)] == [0] * 8
    assert p.eviction_order() == order
    assert m.begin_step("a", [*m.sessions["a"].token_ids, 5]).num_cached_tokens == 12
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
def test_a_paused_take_back_leaves_no_cached_block_the_policy_never_saw(core):
    """A shared import (every block a hit of a's) whose pause's blocks_cached raises. Before
    the fix the hits stayed CACHED, unknown to LRU: a's resume drove Python's queue to
    size -3 and raised 'block 0 is not queued' on C++, references leaked."""
    from dataclasses import replace

    m, p = paused_a(core)
    export = replace(m.export_session("a").export, session_id="b")
    p.fail = "blocks_cached"
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.import_session(export)
    p.fail = None
    m.check_integrity()
    assert "b" not in m.sessions
    assert sorted(p.eviction_order()) == cached_ids(m)
    m.begin_step("a", [*m.sessions["a"].token_ids, 5])
    m.allocate_slots("a", 14)
    m.finish_step("a")
    m.check_integrity()
    assert sorted(p.eviction_order()) == cached_ids(m)
