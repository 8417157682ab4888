"""`KVCacheManager.check_integrity` catches each corruption it exists to catch, on both cores.

Hundreds of tests call it as their oracle; these corrupt one invariant at a time and check
that the assertion fires and names the block, so a check that is dropped or weakened fails
here rather than silently passing everywhere else.
"""

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.pool import FREE

BS = 4


def running(core) -> KVCacheManager:
    """A manager whose session "a" runs on two full blocks (both indexed) and a partial one."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 8, core=core.name, clock=lambda: 0.0)
    m.begin_step("a", list(range(2 * BS + 1)))
    m.allocate_slots("a", 2 * BS + 1)
    m.check_integrity()
    return m


def test_a_refcount_no_table_holds_is_caught(core):
    m = running(core)
    b = m.sessions["a"].block_ids[0]
    m.pool.refcount[b] += 1  # still > 0, so the pool alone sees nothing wrong
    m.pool.check_integrity()
    with pytest.raises(AssertionError, match=f"block {b}: refcount 2 but 1 running"):
        m.check_integrity()


def test_an_index_entry_pointing_at_another_hash_is_caught(core):
    m = running(core)
    (h0, b0), (h1, b1) = sorted(m.index.items(), key=lambda item: item[1])
    m.index.remove(h0)  # swap the two entries: as many entries as hashed blocks, all live
    m.index.remove(h1)
    m.index.insert(h0, b1)
    m.index.insert(h1, b0)
    with pytest.raises(AssertionError, match=f"to block ({b0}|{b1}), which holds another"):
        m.check_integrity()


def test_a_dropped_index_entry_is_caught(core):
    m = running(core)
    h, _ = next(iter(m.index.items()))
    m.index.remove(h)
    with pytest.raises(AssertionError, match="2 hashed blocks, 1 indexed"):
        m.check_integrity()


def test_a_free_block_missing_from_the_free_queue_is_caught(core):
    m = running(core)
    (b,) = m.pool.allocate(1)  # out of the queue, then marked free again behind its back
    m.pool.state[b] = FREE
    m.pool.refcount[b] = 0
    with pytest.raises(AssertionError, match=f"gpu: free block {b} is not in the free queue"):
        m.check_integrity()
