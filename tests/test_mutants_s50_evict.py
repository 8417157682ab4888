"""Session 50 mutation testing: the eviction path's check of a policy's victims
(kvsaga/manager_evict.py `_victims_valid`) on both cores. A policy that names too many
victims, the same victim twice, or a block that is not cached is refused with the eviction
path's RuntimeError, and the allocation that needed the room changes nothing."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.policy import LRUPolicy
from tests.test_core_parity import snapshot

BS = 4
CORES = ["python", *(["cpp"] if cpp_available() else [])]


class Naming(LRUPolicy):
    """LRU, except that `bad` (given the LRU answer and the ids asked for) names the
    victims while it is set."""

    bad = None

    def choose_victims(self, num_blocks, now, *args):
        named = super().choose_victims(num_blocks, now, *args)
        return named if self.bad is None else self.bad(list(named), num_blocks)


def _full(core: str):
    """8 blocks: 'a' ended (4 blocks cached), 'b' running on the other 4."""
    p = Naming()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 8, policy=p, clock=lambda: 0.0,
                       core=core)
    m.begin_step("a", list(range(16)))
    m.allocate_slots("a", 16)
    m.finish_step("a")
    m.end_session("a")
    m.begin_step("b", list(range(100, 116)))
    m.allocate_slots("b", 16)
    assert m.pool.num_free == 0 and m.pool.num_cached == 4
    return m, p


def _active_block(m):
    return next(b for b in range(m.pool.num_blocks) if m.pool.state_name(b) == "active")


def _cached_blocks(m):
    return [b for b in range(m.pool.num_blocks) if m.pool.state_name(b) == "cached"]


BAD = {
    # one more cached block than asked for
    "too many": lambda m: (lambda named, n: _cached_blocks(m)[:n + 1]),
    # the ids asked for, then one of them again (as many distinct as asked for)
    "too many, repeated": lambda m: (lambda named, n: [*named, named[0]]),
    # the right count, one id twice
    "repeated": lambda m: (lambda named, n: [named[0]] * n),
    # the right count, distinct, but one block is in use (active, not cached)
    "not cached": lambda m: (lambda named, n: [*named[:n - 1], _active_block(m)]),
}


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("kind", sorted(BAD))
def test_invalid_victims_are_refused_and_change_nothing(core, kind):
    m, p = _full(core)
    m.begin_step("c", list(range(200, 208)))
    before = snapshot(m)
    p.bad = BAD[kind](m)
    with pytest.raises(RuntimeError, match="invalid victims"):
        m.allocate_slots("c", 8)  # 2 blocks: both must be evicted
    p.bad = None
    m.check_integrity()
    assert m.pool.num_cached == 4 and m.pool.num_free == 0
    assert snapshot(m) == before
    m.allocate_slots("c", 8)  # the honest answer now: 2 evicted, nothing lost
    m.check_integrity()
    assert m.pool.num_cached == 2
