"""An interrupt once the pool evicted does not leave the prefix index naming a freed block.

The C++ pool evicts in one call, but CPython checks for a pending signal as a method call
returns: a signal that arrives during `evict_many` is raised in the caller exactly as the call
returned, its result (the evicted blocks' hashes) lost (/work/lanes/findings/s54/pyloops.md
F6, s55 ccut). Before, the manager's `_drop` then kept the block's hash in the prefix index
though the block was FREE (a later hit would hand out a block that another table may own),
and on the Python core `_evict`'s unindexing loop (or the pool's own completion after its
tell) was cut the same way. Now the pool records its last completed call (`calls`,
`last_result`) and the manager, which read `calls` first, finishes the unindexing before the
interrupt propagates. Cut points: tests/interrupts.py `Cut` (`c_returns_only`), each point of
the manager's function (and of the Python pool's `evict_many`), one at a time.
"""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.manager_evict import EvictionPath
from kvsaga.pool import CACHED, BlockPool
from kvsaga.prefix import PrefixIndex
from tests.interrupts import Cut

CORES = ["python", pytest.param("cpp", marks=pytest.mark.skipif(
    not cpp_available(), reason="the C++ core is not built"))]


def _manager(core: str, policy: str) -> KVCacheManager:
    """'a' paused: its 3 full blocks CACHED and indexed, its partial tail kept; 4 blocks
    free."""
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 8, clock=lambda: 0.0, core=core,
                       policy=policy)
    m.begin_step("a", [1, 2, 3, 4, 5, 6, 7])
    m.allocate_slots("a", 7)
    m.finish_step("a")
    return m


def _check(m: KVCacheManager) -> None:
    m.check_integrity()  # (the index names no free block; hashed blocks == indexed ones)
    check = getattr(m.policy, "check_integrity", None)
    if check is not None:
        check()


def _books(m: KVCacheManager):
    p = m.pool
    return (list(p.refcount), list(p.state), p.free_ids(), p.num_cached,
            sorted(m.index.items()), list(m.block_owner))


def _cuts(code, run, c_returns_only=True):
    """Runs `run(k)` under a cut at point k of `code`, k = 0, 1, ... until a run reaches
    fewer points; yields (k, whether the cut fired) after each run."""
    k = 0
    while True:
        cut = Cut(code, k, c_returns_only=c_returns_only)
        with cut:
            try:
                run()
                fired = False
            except KeyboardInterrupt:
                fired = True
        assert fired == cut.fired
        yield k, fired
        if not fired:
            return
        k += 1


class _EntryCut:
    """Stands in for the Python prefix index's `remove` (set on the class): its first call
    raises KeyboardInterrupt before the real one runs (an interrupt at its entry, a
    point); later calls are the real one's."""

    def __init__(self, real) -> None:
        self.real, self.calls = real, 0

    def __get__(self, index, owner=None):
        return lambda *a: self(index, *a)

    def __call__(self, index, *a):
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt
        return self.real(index, *a)


@pytest.mark.parametrize("core,where", [
    pytest.param("cpp", "_drop", marks=CORES[1].marks), ("python", "pool"),
    ("python", "index_entry")])
def test_drop_cut_after_the_eviction_still_unindexes(core, where, monkeypatch):
    """`_drop` of a CACHED, indexed block cut at each point of its own code (the C++
    core's: the pool's return among them; the Python core's has none of its own), of the
    Python pool's evict_many (after its tell, it finishes the eviction and raises), or at
    the Python index's `remove` entry: the block evicted and unindexed, or nothing
    changed."""
    code = EvictionPath._drop.__code__ if where == "_drop" else BlockPool.evict_many.__code__
    before = _books(_manager(core, "lru"))
    done = _manager(core, "lru")
    done._drop(0)
    whole = _books(done)
    outcomes = set()
    m = None

    def run():
        nonlocal m
        m = _manager(core, "lru")
        assert m.pool.state[0] == CACHED and m.index.get(m.pool.block_hash[0]) == 0
        if where == "index_entry":
            monkeypatch.setattr(PrefixIndex, "remove", _EntryCut(PrefixIndex.remove))
        m._drop(0)

    if where == "index_entry":  # one cut
        with pytest.raises(KeyboardInterrupt):
            run()
        cuts = [(0, True)]
    else:
        cuts = _cuts(code, run)
    for k, _fired in cuts:
        if where == "index_entry":
            assert PrefixIndex.__dict__["remove"].calls == 2  # cut, then the handler's
            monkeypatch.undo()
        _check(m)  # was (cut at the C++ pool's return): "index maps a hash to block 0"
        got = _books(m)
        assert got in (before, whole), f"cut at point {k}: neither nothing nor whole"
        outcomes.add("whole" if got == whole else "nothing")
        st = m.begin_step("b", [1, 2, 3, 4, 9])  # a hit on 'a''s blocks: the index is right
        m.allocate_slots("b", 5 - st.num_cached_tokens)
        m.finish_step("b")
        _check(m)
    assert "whole" in outcomes


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("policy", ["lru", "saga"])
@pytest.mark.parametrize("where", ["_evict", "pool"])
def test_evict_cut_after_the_eviction_still_unindexes(core, policy, where):
    """An allocation that evicts 'a''s blocks, cut at each point of `_evict` (on the Python
    core: its unindexing loop; on the C++ core: the core's one eviction call's return) or of
    the Python pool's evict_many: the books whole (no index entry names a freed block), or
    the eviction not done; the allocation then goes through."""
    if where == "pool" and core == "cpp":
        pytest.skip("the C++ core evicts in one ManagerCore call")
    code = EvictionPath._evict.__code__ if where == "_evict" else BlockPool.evict_many.__code__
    m = None

    def run():
        nonlocal m
        m = _manager(core, policy)
        m.begin_step("b", [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31])
        m.allocate_slots("b", 12)  # 6 blocks: 4 free, 2 evicted

    fired_any = False
    for _k, fired in _cuts(code, run):
        _check(m)  # was (python core, cut in the loop): "index points at free block 0"
        if fired:
            fired_any = True
            m.allocate_slots("b", 12)
            _check(m)
        assert m.sessions["b"].num_computed == 12
        m.finish_step("b")
        _check(m)
    assert fired_any
