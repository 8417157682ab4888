"""A hit (`acquire_many`) or a hold (`hold_many`) whose uncached hook raises changes nothing,
on both cores (tests/conftest.py's `core` fixture): the pool tells the observer first, as an
eviction does (review s49 hooks, finding 2). Before, the pool took the references (refcount
and state changed, num_cached lowered, holds and `reused_s` updated) and then told the
observer, so a raising hook left references that no caller held."""

from __future__ import annotations

import pytest

from kvsaga.pool import ACTIVE, CACHED, FREE


class Ordered:
    """An observer keeping the CACHED blocks in a queue of the core (LRU's order); its batch
    hook (or, `per_block`, its block hook on the 2nd call) raises while `fail` is set."""

    def __init__(self, core, n, per_block=False):
        self.q = core.BlockQueue(n)
        self.fail, self.calls = False, 0
        self.block_cached = self.q.push
        if per_block:
            self.block_uncached = self._one_uncached
        else:
            self.block_uncached = self.q.remove
            self.blocks_cached = self.q.push_many
            self.blocks_uncached = self._uncached

    def _uncached(self, ids):
        if self.fail:
            raise RuntimeError("blocks_uncached failed (a policy bug)")
        self.q.remove_many(ids)

    def _one_uncached(self, b):
        if self.fail:
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("block_uncached failed (a policy bug)")
        self.q.remove(b)


def stage(pool) -> None:
    """Blocks 0-4 of a fresh 6-block pool hashed, 0 and 1 ACTIVE (0 twice referenced), 2,
    3 and 4 released to CACHED at clock 1.0, then 3 held at 2.0 (the clock left there)."""
    for b in pool.allocate(5):
        pool.block_hash[b] = bytes([b]) * 32
    pool.acquire_many([0])
    pool.clock = 1.0
    pool.release_many([4, 2, 3])
    pool.clock = 2.0
    pool.hold_many([3])


def pool_of(core, per_block=False):
    """A 6-block pool: 0 and 1 ACTIVE (0 twice referenced), 2, 3 and 4 CACHED (released at
    clock 1.0, then 3 held since 2.0), 5 FREE."""
    pool = core.BlockPool(6)
    obs = Ordered(core, 6, per_block)
    pool.observer = obs
    stage(pool)
    pool.release_many([3])  # CACHED again as of 1.0 (a hold is not a hit)
    pool.hold_many([3])
    pool.clock = 5.0
    return pool, obs


def books(pool, obs) -> tuple:
    return (list(pool.refcount), list(pool.state), pool.num_cached, pool.free_ids(),
            pool.reused_s, list(obs.q))


@pytest.mark.parametrize("per_block", [False, True], ids=["batch", "per_block"])
@pytest.mark.parametrize("op", ["acquire_many", "hold_many"])
def test_a_take_whose_uncached_hook_raises_changes_nothing(core, op, per_block):
    """Blocks 0 and 3 (ACTIVE, 3 held) gain nothing, 2 and 4 stay CACHED in the observer's
    order, `reused_s` and the hold stay. Before the fix (both cores) 2 and 4 were ACTIVE at
    refcount 1, num_cached 0, the observer still listing them."""
    pool, obs = pool_of(core, per_block)
    before = books(pool, obs)
    assert before[1] == [ACTIVE, ACTIVE, CACHED, ACTIVE, CACHED, FREE]
    obs.fail = True
    with pytest.raises(RuntimeError, match="uncached failed"):
        getattr(pool, op)([0, 2, 3, 4])
    obs.fail = False
    pool.check_integrity()
    assert books(pool, obs) == before
    pool.release_many([3])  # its hold kept: CACHED as of 1.0 again
    pool.clock = 6.0
    getattr(pool, op)([0, 2, 3, 4])  # the hook mended: the same take goes through
    assert [pool.refcount[b] for b in (0, 2, 3, 4)] == [3, 1, 1, 1] and pool.num_cached == 0
    hit = op == "acquire_many"
    assert pool.reused_s == (15.0 if hit else 0.0)  # 2, 3 and 4 each since 1.0
    pool.release_many([4, 3, 2])  # a hold's: CACHED as of 1.0; a hit's: as of 6.0
    pool.clock = 8.0
    pool.acquire_many([3])
    assert pool.reused_s == (17.0 if hit else 7.0)
    pool.check_integrity()


@pytest.mark.parametrize("op", ["acquire_many", "hold_many"])
def test_a_block_named_twice_is_reclaimed_once_and_referenced_twice(core, op):
    """Told first, the CACHED blocks are told once each (a queue refuses a block twice)."""
    pool, obs = pool_of(core)
    getattr(pool, op)([2, 4, 2, 0])
    assert [pool.refcount[b] for b in (0, 2, 4)] == [3, 2, 1]
    assert pool.num_cached == 0 and list(obs.q) == []
    pool.release_many([2, 2, 4, 0])
    pool.check_integrity()
    assert list(obs.q) == [2, 4] and pool.num_cached == 2


@pytest.mark.parametrize("op", ["acquire_many", "hold_many"])
def test_a_take_of_a_free_block_is_refused_alike_with_nothing_changed(core, op):
    """Both cores name the FREE block, the observer told nothing. The Python pool made it
    ACTIVE while it stayed in the free queue (to be allocated again) and told the observer
    that it left CACHED."""
    pool, obs = pool_of(core)
    before = books(pool, obs)
    with pytest.raises(ValueError, match=f"^free block 5: {op} takes active or cached blocks$"):
        getattr(pool, op)([2, 5])
    assert books(pool, obs) == before
    pool.check_integrity()


# A hook that re-enters the pool (frees or takes a block being taken) is refused on both
# cores: tests/test_pool_hook_reentrance.py.
