"""BlockPool: the bookkeeping of one tier's blocks, over integer ids. Pure Python.

The readable reference of the C++ core's pool (csrc/block_pool.h, see kvsaga/_core.py).

Every block is in exactly one of three states:

- FREE: holds nothing; linked in the free queue; refcount 0.
- ACTIVE: read or written by at least one running step; refcount > 0.
- CACHED: holds KV that may be reused (a full block with a content hash, or a paused
  session's partial tail); refcount 0; evictable. Its eviction order belongs to the policy,
  which the pool keeps informed through the observer's `block_cached` / `block_uncached`.

Ownership: whoever raised a refcount lowers it; the pool never drops a reference by itself.
A CACHED block leaves that state only through `acquire_many` (a cache hit) or an eviction.
`generation[b]` counts allocations of `b`, so a holder of a stale id can tell it was reused.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Protocol

from kvsaga._validate import check_positive_int
from kvsaga.block_queue import BlockQueue
from kvsaga.errors import InvalidRequest, OutOfBlocks

FREE, ACTIVE, CACHED = 0, 1, 2
_STATE_NAMES = ("free", "active", "cached")


class PoolObserver(Protocol):
    """Told whenever a block enters or leaves the CACHED (evictable) state.

    An observer may also define `blocks_cached(ids)` / `blocks_uncached(ids)`: the pool
    then reports a batch transition in one call, else block by block, in the same order.
    Blocks leave CACHED once the observer is told: `evict_many`, `acquire_many` and
    `hold_many` tell first, their blocks still CACHED (and hashed), so that a raising hook
    leaves every block as it was; blocks enter CACHED before it is told. A hook
    that raises must have changed nothing (a batch hook raises before it records any
    block); block by block, the pool makes it so: a raise at block k first undoes blocks
    0..k-1 with the opposite hook (which puts them back where that hook puts blocks, e.g. an
    LRU's newest end: their order may change; review s50 diff-acquire F4).

    A hook may read the pool but not change it: while it runs, every pool mutator raises
    RuntimeError ("a pool observer hook may not change the pool (...)") before changing
    anything (review s50 diff-acquire, F1-F3: a re-entrant change left the caller's checked
    ids and told blocks wrong).
    """

    def block_cached(self, block_id: int) -> None: ...

    def block_uncached(self, block_id: int) -> None: ...


class _NullObserver:
    def block_cached(self, block_id: int) -> None:
        pass

    def block_uncached(self, block_id: int) -> None:
        pass


def all_or_nothing(items, do, undo, what) -> None:
    """`do(x)` for each of `items` in order; when `do` raises at item k, `undo` items
    k-1..0 (last done first) and re-raise. An undo that raises too stops the undoing and
    adds a note naming `what(x)` to the first error. The pool's per-block fallback and the
    adaptive policy's fan-out to its members are both this (`PoolObserver`: a raising hook
    has told the observer nothing)."""
    done = 0
    try:
        for x in items:
            do(x)
            done += 1
    except BaseException as e:
        for x in reversed(items[:done]):
            try:
                undo(x)
            except Exception as u:
                e.add_note(f"undoing {what(x)} raised too: {u!r}")
                break
        raise


def _block(b: int) -> str:
    return f"the hook for block {b}"


def per_block(fn, undo):
    """The per-block call of a batch transition, for an observer without the batch hook. A
    raise at block k first undoes blocks 0..k-1 (`undo`, the opposite hook, last told
    first), so that a raising hook has told the observer nothing, as a batch hook must
    (`PoolObserver`; the manager's take-backs rely on it, e.g. `_drop_unseen`). An undo
    that raises too stops the undoing and adds a note to the hook's error."""

    def call(block_ids: list[int]) -> None:
        all_or_nothing(block_ids, fn, undo, _block)

    return call


class BlockPool:
    """Refcounted blocks of one tier.

    Args:
        num_blocks: blocks in the tier.
        tier: name used in errors ("gpu" or "host").
    """

    def __init__(self, num_blocks: int, tier: str = "gpu") -> None:
        check_positive_int("num_blocks", num_blocks, InvalidRequest)
        self.num_blocks = num_blocks
        self.tier = tier
        self.refcount = [0] * num_blocks
        self.state = [FREE] * num_blocks
        self.block_hash: list[bytes | None] = [None] * num_blocks
        self.generation = [0] * num_blocks
        self._free = BlockQueue(num_blocks)
        for b in range(num_blocks):
            self._free.push(b)
        self.num_cached = 0
        self.observer = _NullObserver()
        # Cache residence, for a simulator's usage metrics: `clock` is the time its owner
        # says it is; `reused_s` adds, for each CACHED block a hit reclaims, in order, the
        # time since it became CACHED. A block `hold_many` took from CACHED is not reused:
        # it keeps its time (`_held`) and is CACHED again as of then when released.
        self.clock = 0.0
        self.reused_s = 0.0
        self._cached_at = [0.0] * num_blocks
        self._held: set[int] = set()
        self._telling = False  # an observer hook is running: mutators refuse (`_refuse`)

    @property
    def observer(self) -> PoolObserver:
        return self._observer

    @observer.setter
    def observer(self, observer: PoolObserver) -> None:
        self._observer = observer
        one_cached, one_uncached = observer.block_cached, observer.block_uncached
        self._cached_many = (getattr(observer, "blocks_cached", None)
                             or per_block(one_cached, one_uncached))
        self._uncached_many = (getattr(observer, "blocks_uncached", None)
                               or per_block(one_uncached, one_cached))

    def _refuse(self, op: str) -> None:
        raise RuntimeError(f"a pool observer hook may not change the pool ({op})")

    def _tell(self, hook, block_ids: list[int]) -> None:
        """Calls an observer hook (`_cached_many` / `_uncached_many`); the pool refuses
        changes until it returns, however it ends."""
        self._telling = True
        try:
            hook(block_ids)
        finally:
            self._telling = False

    # -- counts ---------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_active(self) -> int:
        return self.num_blocks - len(self._free) - self.num_cached

    @property
    def num_available(self) -> int:
        """Blocks an allocation can get: free now, or after evicting cached ones."""
        return len(self._free) + self.num_cached

    # -- transitions ----------------------------------------------------------------------
    def allocate(self, count: int) -> list[int]:
        """Take `count` FREE blocks (oldest freed first); each becomes ACTIVE with refcount 1.

        Raises:
            ValueError: a negative `count` (the C++ pool's check); nothing changes.
            OutOfBlocks: fewer than `count` free blocks (callers evict first); nothing changes.
        """
        if self._telling:
            self._refuse("allocate")
        if count < 0:
            raise ValueError("allocate: count must be >= 0")
        if count > len(self._free):
            raise OutOfBlocks(count, len(self._free), self.tier)
        ids = self._free.pop_many(count)
        ref, state, gen = self.refcount, self.state, self.generation
        for b in ids:
            ref[b] = 1
            state[b] = ACTIVE
            gen[b] += 1
        return ids

    def acquire_many(self, block_ids: list[int]) -> None:
        """Take a reference on each hit block: ACTIVE ones gain one, CACHED ones are reclaimed.
        The observer is told first: a raising hook changes nothing (refcounts, states, counts,
        holds, `reused_s`), as the policy, told nothing by the raise, still has them cached.

        Raises:
            ValueError: a FREE block (the C++ pool's check); nothing changes.
        """
        if self._telling:
            self._refuse("acquire_many")
        reclaimed = self._reclaimable(block_ids, "acquire_many")
        if reclaimed:
            self._tell(self._uncached_many, reclaimed)
        if self._held:  # a held block hit is used: its next stay in CACHED starts anew
            self._held.difference_update(block_ids)
        self._reference(block_ids, reclaimed)
        if reclaimed:
            clock, cached_at, reused = self.clock, self._cached_at, self.reused_s
            for b in reclaimed:
                reused += clock - cached_at[b]
            self.reused_s = reused
            self.num_cached -= len(reclaimed)

    def hold_many(self, block_ids: list[int]) -> None:
        """`acquire_many` for a moment's hold, not a hit (a prefetch keeps a session's blocks
        from its own evictions): a CACHED block taken adds nothing to `reused_s`, and when
        released it is CACHED as of when it was before, so a later hit, if any, counts its
        whole stay and an eviction none of it. Told first, as `acquire_many`."""
        if self._telling:
            self._refuse("hold_many")
        reclaimed = self._reclaimable(block_ids, "hold_many")
        if reclaimed:
            self._tell(self._uncached_many, reclaimed)
            self._held.update(reclaimed)
            self.num_cached -= len(reclaimed)
        self._reference(block_ids, reclaimed)

    def _reclaimable(self, block_ids: list[int], op: str) -> list[int]:
        """The CACHED blocks among `block_ids`, each once, in order: those a reference makes
        ACTIVE (the observer's batch). ValueError naming the first FREE one (`op` refused)."""
        if not block_ids:
            return []
        state = self.state
        states = itemgetter(*block_ids)(state) if len(block_ids) > 1 else (state[block_ids[0]],)
        active = states.count(ACTIVE)
        if active == len(states):
            return []
        if FREE in states:
            b = block_ids[states.index(FREE)]
            raise ValueError(f"free block {b}: {op} takes active or cached blocks")
        reclaimed = [b for b in block_ids if state[b] == CACHED] if active else list(block_ids)
        if len(reclaimed) > 1 and len(set(reclaimed)) < len(reclaimed):
            reclaimed = list(dict.fromkeys(reclaimed))  # named twice: reclaimed once
        return reclaimed

    def _reference(self, block_ids: list[int], reclaimed: list[int]) -> None:
        """One more reference on each block, `reclaimed` (`_reclaimable`'s, refcount 0) made
        ACTIVE first (the caller leaves the CACHED accounting: `num_cached`, holds, reuse
        timing)."""
        state, ref = self.state, self.refcount
        for b in reclaimed:
            state[b] = ACTIVE
        for b in block_ids:
            ref[b] += 1

    def release_many(self, block_ids: list[int], keep_unhashed: int = -1) -> None:
        """Drop one reference on each block, in order. A block reaching zero becomes CACHED
        if it holds a hash (or is `keep_unhashed`, a paused session's partial tail), else FREE.
        """
        if self._telling:
            self._refuse("release_many")
        ref, state, block_hash = self.refcount, self.state, self.block_hash
        to_cache: list[int] = []
        to_free: list[int] = []
        for b in block_ids:
            r = ref[b] - 1
            ref[b] = r
            if r:
                continue
            if block_hash[b] is not None or b == keep_unhashed:
                state[b] = CACHED
                to_cache.append(b)
            else:
                state[b] = FREE
                to_free.append(b)
        self._free.push_many(to_free)
        held = self._held
        if held:
            held.difference_update(to_free)
        if to_cache:
            clock, cached_at = self.clock, self._cached_at
            for b in to_cache:
                if held and b in held:
                    held.discard(b)  # cached as of before its hold
                else:
                    cached_at[b] = clock
            self.num_cached += len(to_cache)
            self._tell(self._cached_many, to_cache)

    def evict_many(self, block_ids: list[int]) -> list[bytes | None]:
        """Evict CACHED blocks (oldest first into the free queue); returns their old hashes.
        The observer is told first: a raising hook leaves every block as it was (CACHED,
        hashed), as the policy, told nothing by the raise, still has them (review s49 hooks,
        finding 2)."""
        if self._telling:
            self._refuse("evict_many")
        self._tell(self._uncached_many, block_ids)
        state, block_hash = self.state, self.block_hash
        hashes = [block_hash[b] for b in block_ids]
        for b in block_ids:
            state[b] = FREE
            block_hash[b] = None
        self._free.push_many(block_ids)
        self.num_cached -= len(block_ids)
        return hashes

    def state_name(self, block_id: int) -> str:
        return _STATE_NAMES[self.state[block_id]]

    def free_ids(self) -> list[int]:
        """Free blocks, oldest (next allocated) first."""
        return list(self._free)

    def check_integrity(self) -> None:
        """Verify every invariant; raise AssertionError naming the first broken one."""
        check_pool(self, self._free)


def count_in_state(state, block_ids: list[int], value: int) -> int:
    """How many of `block_ids` are in state `value`, given a pool's `state` (either core's):
    one pass in C, not a Python loop (a lookup counts a whole context's hits)."""
    if len(block_ids) < 2:
        return sum(state[b] == value for b in block_ids)
    return itemgetter(*block_ids)(state).count(value)


def check_pool(pool, free_ids) -> None:
    """Verify a pool's invariants (either core's), given its free queue oldest first."""
    n = pool.num_blocks
    seen = [False] * n
    count = 0
    for b in free_ids:
        assert 0 <= b < n, f"{pool.tier}: free queue holds out-of-range id {b}"
        assert not seen[b], f"{pool.tier}: block {b} twice in the free queue"
        seen[b] = True
        count += 1
    assert count == pool.num_free, f"{pool.tier}: free queue size {pool.num_free} != {count}"
    cached = 0
    for b in range(n):
        s, r = pool.state[b], pool.refcount[b]
        assert r >= 0, f"{pool.tier}: block {b} has negative refcount {r}"
        if s == FREE:
            assert seen[b], f"{pool.tier}: free block {b} is not in the free queue"
            assert r == 0, f"{pool.tier}: free block {b} has refcount {r}"
            assert pool.block_hash[b] is None, f"{pool.tier}: free block {b} keeps a hash"
        else:
            assert not seen[b], f"{pool.tier}: {_STATE_NAMES[s]} block {b} is in the free queue"
            if s == ACTIVE:
                assert r > 0, f"{pool.tier}: active block {b} has refcount 0"
            else:
                assert r == 0, f"{pool.tier}: cached block {b} has refcount {r}"
                cached += 1
    assert cached == pool.num_cached, (
        f"{pool.tier}: {cached} cached blocks but num_cached says {pool.num_cached}"
    )
