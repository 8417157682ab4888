"""An observer hook may read the pool but not change it: while the pool tells its observer,
every mutator raises RuntimeError before changing anything, on both cores (tests/conftest.py's
`core` fixture), and the outer call re-raises it as any raising hook's error.

Before (review s50 diff-acquire): F1, the C++ pool refused a block a hook freed only after
telling the observer, so the other blocks stayed CACHED but gone from the policy (the
Python pool took the freed block: num_cached -1); F2, a hook releasing an ACTIVE id of the
same hit left that block CACHED with refcount 1 (both cores); F3, the C++ evict_many's ids
lived in a buffer a re-entrant call overwrote, so the wrong block was evicted."""

from __future__ import annotations

import pytest

from kvsaga.pool import ACTIVE, CACHED
from tests.test_pool_acquire_hook_raises import stage

REFUSED = r"^a pool observer hook may not change the pool \({}\)$"


class Reentrant:
    """An observer keeping the CACHED blocks in a queue of the core (LRU's order) whose hooks,
    while `inner` is set, first call it (before recording anything), batch or block by block."""

    def __init__(self, core, n, per_block=False):
        self.q = core.BlockQueue(n)
        self.inner = None
        self.block_cached = lambda b: self._first(self.q.push, b)
        self.block_uncached = lambda b: self._first(self.q.remove, b)
        if not per_block:
            self.blocks_cached = lambda ids: self._first(self.q.push_many, ids)
            self.blocks_uncached = lambda ids: self._first(self.q.remove_many, ids)

    def _first(self, record, arg):
        if self.inner is not None:
            self.inner()
        record(arg)


def pool_of(core, per_block=False):
    """A 6-block pool: 0 and 1 ACTIVE (0 twice referenced), 2, 3 and 4 CACHED (released at
    clock 1.0, then 3 held since 2.0), 5 FREE; every block but 5 hashed."""
    pool = core.BlockPool(6)
    obs = Reentrant(core, 6, per_block)
    pool.observer = obs
    stage(pool)
    pool.clock = 5.0
    return pool, obs


def books(pool, obs) -> tuple:
    return (list(pool.refcount), list(pool.state), pool.num_cached, pool.free_ids(),
            pool.reused_s, list(pool.block_hash), list(obs.q))


# The calls a hook may try (each valid on pool_of's pool, outside a hook).
INNER = {
    "allocate": lambda p: p.allocate(1),
    "acquire_many": lambda p: p.acquire_many([0, 4]),
    "hold_many": lambda p: p.hold_many([4]),
    "release_many": lambda p: p.release_many([0]),
    "evict_many": lambda p: p.evict_many([4]),
}
# The calls that tell the observer (uncached: a hit, a hold, an eviction; cached: a release).
OUTER = {
    "acquire_many": lambda p: p.acquire_many([0, 4, 2]),
    "hold_many": lambda p: p.hold_many([1, 2]),
    "evict_many": lambda p: p.evict_many([2]),
    "release_many": lambda p: p.release_many([1]),
}


@pytest.mark.parametrize("per_block", [False, True], ids=["batch", "per_block"])
@pytest.mark.parametrize("inner", list(INNER))
@pytest.mark.parametrize("outer", list(OUTER))
def test_a_hook_that_changes_the_pool_is_refused_and_changes_nothing(core, outer, inner,
                                                                     per_block):
    """The inner call raises the refusal naming it, the outer call re-raises it, and the pool
    ends exactly as with a hook that raised anything else: as before the outer call for a
    take or an eviction (told first), released but untold for a release (told after)."""
    pool, obs = pool_of(core, per_block)
    twin, twin_obs = pool_of(core, per_block)
    before = books(pool, obs)

    def plain():
        raise RuntimeError("a hook's own error")

    obs.inner = lambda: INNER[inner](pool)
    twin_obs.inner = plain
    with pytest.raises(RuntimeError, match=REFUSED.format(inner)):
        OUTER[outer](pool)
    with pytest.raises(RuntimeError, match="own error"):
        OUTER[outer](twin)
    assert books(pool, obs) == books(twin, twin_obs)
    if outer != "release_many":
        assert books(pool, obs) == before
    pool.check_integrity()
    obs.inner = None  # the refusal over, the pool changes again
    INNER[inner](pool)
    pool.check_integrity()


def test_f1_a_hook_that_evicts_a_block_being_taken_leaves_the_policy_in_step(core):
    """F1: the observer still has 4 and 2, so a later hit on them goes through."""
    pool, obs = pool_of(core)
    obs.inner = lambda: pool.evict_many([2])
    with pytest.raises(RuntimeError, match=REFUSED.format("evict_many")):
        pool.acquire_many([0, 4, 2])
    assert pool.state[2] == pool.state[4] == CACHED and list(obs.q) == [4, 2]
    obs.inner = None
    pool.acquire_many([4])
    assert pool.refcount[4] == 1 and list(obs.q) == [2] and pool.num_cached == 1
    assert pool.reused_s == 4.0
    pool.check_integrity()


def test_f2_a_hook_that_releases_an_active_id_of_the_same_hit_is_refused(core):
    """F2: block 1 stays ACTIVE with its one reference; no block is left CACHED and
    referenced."""
    pool, obs = pool_of(core)
    obs.inner = lambda: pool.release_many([1])
    with pytest.raises(RuntimeError, match=REFUSED.format("release_many")):
        pool.acquire_many([1, 2])
    assert pool.state[1] == ACTIVE and pool.refcount[1] == 1
    assert pool.state[2] == CACHED and pool.refcount[2] == 0 and list(obs.q) == [4, 2]
    pool.check_integrity()


def test_f3_an_eviction_whose_hook_releases_a_block_evicts_nothing(core):
    """F3: the C++ pool evicted block 1 (the inner call's id, in the shared buffer) instead of
    2; now neither changes, and the eviction after returns block 2's hash."""
    pool, obs = pool_of(core)
    obs.inner = lambda: pool.release_many([1])
    with pytest.raises(RuntimeError, match=REFUSED.format("release_many")):
        pool.evict_many([2])
    assert pool.state[1] == ACTIVE and pool.state[2] == CACHED and list(obs.q) == [4, 2]
    obs.inner = None
    assert pool.evict_many([2]) == [bytes([2]) * 32]
    pool.check_integrity()


@pytest.mark.parametrize("per_block", [False, True], ids=["batch", "per_block"])
def test_a_hook_may_read_the_pool_and_sees_the_told_blocks_cached(core, per_block):
    pool, obs = pool_of(core, per_block)
    seen = []
    obs.inner = lambda: seen.append((pool.state[2], pool.state[4], pool.num_cached,
                                     pool.free_ids(), pool.refcount[0]))
    pool.acquire_many([0, 4, 2])
    assert seen and all(s == (CACHED, CACHED, 2, [5], 2) for s in seen)
    assert [pool.refcount[b] for b in (0, 2, 4)] == [3, 1, 1] and pool.num_cached == 0
    pool.check_integrity()
