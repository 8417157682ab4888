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

from array import array
from operator import index, itemgetter, length_hint

from kvsaga._validate import check_positive_int
from kvsaga.block_queue import BlockQueue, until_done
from kvsaga.errors import InvalidRequest, OutOfBlocks
from kvsaga.pool_observer import (  # noqa: F401 (all_or_nothing: re-exported)
    PoolObserver,
    _NullObserver,
    all_or_nothing,
    per_block,
)

FREE, ACTIVE, CACHED = 0, 1, 2
_STATE_NAMES = ("free", "active", "cached")
_C_LONG = 1 << 63  # ids outside [-_C_LONG, _C_LONG): the C++ pool's OverflowError


class _Refused(Exception):
    """`_release_loop` met a negative id or a block with no reference left to drop."""


class BlockPool:
    """Refcounted blocks of one tier. Args: num_blocks: blocks in the tier; tier: name used
    in errors ("gpu" or "host")."""

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
        self._releasing: object = None  # the ids of the last release_many that began
        # The last mutator call that completed, its observer told (the C++ pool's record,
        # csrc/block_pool.h: a caller reads `calls` first to tell a call that returned, an
        # interrupt then cutting the caller, from one that raised inside): `calls` counts
        # them, `last_result` is its result (allocate's ids, evict_many's hashes, else None).
        self.calls = 0
        self.last_result: list | None = None

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
        changes until it returns, however it ends. (CPython raises an interrupt at a Python
        function's entry, a loop's jump back, a C call's return; not at a Python function's
        return to Python: a Python hook that returned has told the observer, and the
        transition is then whole or finished by its handler. A C-implemented hook's return
        would be a point that leaves the observer told, the pool unchanged: none in-tree.)"""
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
            TypeError: `count` is not an integer (a float, even 2.0: the C++ pool's
                conversion, its message); nothing changes.
            ValueError: a negative `count` (the C++ pool's check); nothing changes.
            OutOfBlocks: fewer than `count` free blocks (callers evict first); nothing changes.
        """
        if self._telling:
            self._refuse("allocate")
        if type(count) is not int:  # (was: 1.5 -> OutOfBlocks or a raise deep in the pop)
            count = index(count)
        if count < 0:
            raise ValueError("allocate: count must be >= 0")
        free = self._free
        avail = len(free)
        if count > avail:
            raise OutOfBlocks(count, avail, self.tier)
        ref, state, gen = self.refcount, self.state, self.generation
        ids = None
        try:  # (an interrupt takes it all back: the caller never gets the ids)
            ids = free.pop_many(count)
            for b in ids:
                ref[b] = 1
                state[b] = ACTIVE
                gen[b] += 1
        except BaseException:
            if ids is not None:  # (one inside pop_many took its pop back itself)
                try:
                    until_done(self._unallocate, ids, avail)
                finally:  # (idempotent: a no-op unless a further interrupt cut its entry)
                    until_done(self._unallocate, ids, avail)
            raise
        self.last_result = ids
        self.calls += 1
        return ids

    def _unallocate(self, ids: list[int], avail: int) -> None:
        """Undo an `allocate` cut by an interrupt after its pop of `ids`, the free queue's
        length `avail` before: its blocks FREE again (refcount 0, generation back), at the
        head in order. Idempotent (`until_done`): a block is unmarked once (ACTIVE: marked
        by the cut allocation, as every popped block was FREE), and the queue's length,
        restored last, says whether anything is left to do."""
        free = self._free
        if len(free) == avail:
            return
        ref, state, gen = self.refcount, self.state, self.generation
        for b in ids:
            if state[b] == ACTIVE:
                ref[b] = 0
                state[b] = FREE
                gen[b] -= 1
        free.unpop_many(ids)

    def acquire_many(self, block_ids: list[int]) -> None:
        """Take a reference on each hit block: ACTIVE ones gain one, CACHED ones are reclaimed.
        The observer is told first: a raising hook changes nothing (refcounts, states, counts,
        holds, `reused_s`), as the policy, told nothing by the raise, still has them cached.
        An interrupt once it was told is raised after the whole transition (`_referenced`).
        Refused, nothing changed, as by the C++ pool: a FREE block (ValueError), an id out of
        range, negative too (IndexError), a non-integer (TypeError)."""
        if self._telling:
            self._refuse("acquire_many")
        if block_ids.__class__ is not list:  # (a tuple, an array, a generator: as C++)
            block_ids = list(block_ids)
        reclaimed = self._reclaimable(block_ids, "acquire_many")
        self._reference(block_ids, reclaimed, self.reused_s)

    def hold_many(self, block_ids: list[int]) -> None:
        """`acquire_many` for a moment's hold, not a hit (a prefetch keeps a session's blocks
        from its own evictions): a CACHED block taken adds nothing to `reused_s`, and when
        released it is CACHED as of when it was before, so a later hit, if any, counts its
        whole stay and an eviction none of it. Told first, as `acquire_many`."""
        if self._telling:
            self._refuse("hold_many")
        if block_ids.__class__ is not list:  # (a tuple, an array, a generator: as C++)
            block_ids = list(block_ids)
        reclaimed = self._reclaimable(block_ids, "hold_many")
        self._reference(block_ids, reclaimed, None)

    def _reclaimable(self, block_ids: list[int], op: str) -> list[int]:
        """The CACHED blocks among `block_ids`, each once, in order: those a reference makes
        ACTIVE (the observer's batch). ValueError naming the first FREE one (`op` refused)."""
        if not block_ids:
            return []
        state = self.state
        try:
            states = (itemgetter(*block_ids)(state) if len(block_ids) > 1
                      else (state[block_ids[0]],))
        except (IndexError, TypeError):
            self._refuse_ids(block_ids, op)
        active = states.count(ACTIVE)
        if active == len(states):  # (a negative id: `_referenced` refuses it, none told)
            return []
        try:  # a negative id would alias a block from the end: refused, as the C++ pool
            array("Q", block_ids)  # (OverflowError for a negative id: one pass in C)
        except OverflowError:
            self._refuse_ids(block_ids, op)
        if FREE in states:
            b = block_ids[states.index(FREE)]
            raise ValueError(f"free block {b}: {op} takes active or cached blocks")
        reclaimed = [b for b in block_ids if state[b] == CACHED] if active else list(block_ids)
        if len(reclaimed) > 1 and len(set(reclaimed)) < len(reclaimed):
            reclaimed = list(dict.fromkeys(reclaimed))  # named twice: reclaimed once
        return reclaimed

    def _reference(self, block_ids: list[int], reclaimed: list[int],
                   reused: float | None) -> None:
        """One more reference on each block; the observer told first that `reclaimed`
        (`_reclaimable`'s) leave CACHED, which then become ACTIVE with their accounting.
        `reused`: `reused_s` before, for a hit (None: a hold). An interrupt inside the tell
        has told the observer nothing (the hook's raise, or a per-block hook's undone) and
        changes nothing; one after it finishes the transition (`_referenced`, restartable),
        then propagates, as the C++ pool's call interrupted at its return."""
        it = iter(block_ids)
        if reclaimed:  # (raises only when the observer was told nothing: nothing changed)
            self._tell(self._uncached_many, reclaimed)
        try:
            self._referenced(it, block_ids, reclaimed, reused)
        except _Refused:  # a negative id, all blocks ACTIVE (none told): refs taken back
            ref = self.refcount
            for b in block_ids[:len(block_ids) - length_hint(it) - 1]:
                ref[b] -= 1
            self._refuse_ids(block_ids, "hold_many" if reused is None else "acquire_many")
        except BaseException:
            self.last_result = None  # (completed below)
            self.calls += 1
            try:
                until_done(self._referenced, it, block_ids, reclaimed, reused)
            finally:  # (idempotent: a no-op unless a further interrupt cut its entry)
                until_done(self._referenced, it, block_ids, reclaimed, reused)
            raise
        self.last_result = None
        self.calls += 1

    def _referenced(self, it, block_ids: list[int], reclaimed: list[int],
                    reused: float | None) -> None:
        """`_reference`'s changes, restartable (`until_done`: each step is idempotent or
        continues where it was cut): each reclaimed block still CACHED made ACTIVE (and
        uncounted: a cut stores the count of those done); a reference on each block `it`
        still gives (one it gave has its reference); then `_hit_or_hold`."""
        state = self.state
        k = 0
        try:
            for b in reclaimed:
                if state[b] == CACHED:
                    state[b] = ACTIVE
                    k += 1
        finally:
            self.num_cached -= k
        ref = self.refcount
        for b in it:
            if b < 0:  # (only where none is reclaimed: `_reclaimable` checked the others)
                raise _Refused
            ref[b] += 1
        self._hit_or_hold(block_ids, reclaimed, reused)

    def _hit_or_hold(self, block_ids: list[int], reclaimed: list[int],
                     reused: float | None) -> None:
        """The holds and `reused_s` after a reference (idempotent): a hit ends a hold of its
        blocks and sets `reused_s` from `reused`, the value before (each reclaimed block adds
        its time in CACHED, in order); a hold holds the reclaimed."""
        if reused is None:
            if reclaimed:
                self._held.update(reclaimed)
            return
        if self._held:  # a held block hit is used: its next stay in CACHED starts anew
            self._held.difference_update(block_ids)
        if reclaimed:
            clock, cached_at = self.clock, self._cached_at
            for b in reclaimed:
                reused += clock - cached_at[b]
            self.reused_s = reused

    def release_many(self, block_ids: list[int], keep_unhashed: int = -1) -> None:
        """Drop one reference on each block, in order. A block reaching zero becomes CACHED
        if it holds a hash (or is `keep_unhashed`, a paused session's partial tail), else FREE.
        The observer is told last of those CACHED: when that hook raises, the release is
        whole, the observer told nothing (the manager drops those blocks unseen). Bad input
        is refused, nothing changed, with the C++ pool's error: TypeError, IndexError (a
        negative id included), ValueError (a block named more often than it is referenced:
        the loop finds it, `_unrelease` takes back the blocks before it).

        An interrupt inside it (tests/interrupts.py's points; the C++ pool's is one call)
        leaves it as that hook's raise would: the release finished (`_released`, restartable),
        the observer told nothing. One at its very entry releases nothing, as a refusal:
        `_releasing`, its first store after the up-front check (no point after it), names
        the last call that began, a refusal unnames it: for its caller (`release_again`)."""
        if self._telling:
            self._refuse("release_many")
        if type(block_ids) is not list:  # (an array, a tuple, a generator: as the C++ pool)
            block_ids = list(block_ids)
        try:  # (a point in here is one at its entry: nothing changed)
            array("Q", block_ids)  # a non-integer or a negative id (one pass in C)
        except (TypeError, OverflowError):
            self._refuse_ids(block_ids, "release_many")
        it = iter(block_ids)
        self._releasing = block_ids
        to_cache: list[int] = []
        to_free: list[int] = []
        unheld: list[int] = []
        try:
            self._release_loop(it, keep_unhashed, to_cache, to_free, unheld)
            if to_free:
                self._free.push_many(to_free)
                if self._held:
                    self._held.difference_update(to_free)
        except _Refused:  # (bad input: nothing queued or told yet)
            self._releasing = None
            self._unrelease(block_ids[:len(block_ids) - length_hint(it) - 1],
                            to_cache, to_free, unheld)
            self._refuse_ids(block_ids, "release_many")
        except BaseException:
            try:
                until_done(self._released, it, keep_unhashed, to_cache, to_free)
            finally:  # (idempotent: a no-op unless a further interrupt cut its entry)
                until_done(self._released, it, keep_unhashed, to_cache, to_free)
            raise
        if to_cache:
            self._tell(self._cached_many, to_cache)
        self.last_result = None
        self.calls += 1

    def _release_loop(self, it, keep_unhashed: int, to_cache: list[int],
                      to_free: list[int], unheld: list[int] | None = None) -> None:
        """Drop a reference on each block `it` gives; one reaching zero is CACHED (counted;
        cached as of now, or of before its hold: `unheld`) or FREE (for the free queue's
        tail: the caller pushes `to_free`). Each block given is done at every interrupt
        point (its last call ends its step), and a cut stores the count of those cached: the
        loop continues where it was cut (`_released`). A block with no reference left, or
        past the end, raises `_Refused`, nothing changed for it (`_released` skips it)."""
        ref, state, block_hash = self.refcount, self.state, self.block_hash
        held, clock, cached_at = self._held, self.clock, self._cached_at
        k = 0
        try:
            for b in it:
                r = ref[b] - 1  # (IndexError past the end: `_Refused` below)
                ref[b] = r
                if r:
                    if r > 0:
                        continue
                    ref[b] = 0
                    raise _Refused
                if block_hash[b] is not None or b == keep_unhashed:
                    state[b] = CACHED
                    k += 1
                    if held and b in held:
                        held.discard(b)  # cached as of before its hold
                        if unheld is not None:
                            unheld.append(b)
                    else:
                        cached_at[b] = clock
                    to_cache.append(b)
                else:
                    state[b] = FREE
                    to_free.append(b)
        except IndexError:
            raise _Refused from None
        finally:
            self.num_cached += k

    def _unrelease(self, done: list[int], to_cache: list[int], to_free: list[int],
                   unheld: list[int]) -> None:
        """Take back what a refused `release_many` did to the blocks `done` before the bad
        one (`to_cache`, `to_free`: made CACHED or FREE, untold, unqueued; `unheld`: holds it
        ended). Not restartable (bad input); `cached_at`, meaningless if ACTIVE, stays."""
        ref, state = self.refcount, self.state
        for b in done:
            ref[b] += 1
        for b in to_cache:
            state[b] = ACTIVE
        for b in to_free:
            state[b] = ACTIVE
        self.num_cached -= len(to_cache)
        self._held.update(unheld)

    def _released(self, it, keep_unhashed: int, to_cache: list[int],
                  to_free: list[int]) -> None:
        """`release_many` finished after an interrupt, restartable (`until_done`): the rest
        of its loop (`it`), the free queue's batch (all or nothing) and the holds."""
        self._release_loop(it, keep_unhashed, to_cache, to_free)
        if to_free:
            if to_free[0] not in self._free:
                self._free.push_many(to_free)
            if self._held:
                self._held.difference_update(to_free)

    def evict_many(self, block_ids: list[int]) -> list[bytes | None]:
        """Evict CACHED blocks (oldest first into the free queue); returns their old hashes.
        The observer is told first: a raising hook leaves every block as it was (CACHED,
        hashed), as the policy, told nothing by the raise, still has them (review s49 hooks,
        finding 2). An interrupt once it was told finishes the eviction (restartable:
        `_evicted`), then propagates, as the C++ pool's call interrupted at its return: the
        caller finds the hashes in `last_result` (`calls` counted it). Bad input is refused
        before the tell, nothing changed, with the C++ pool's error (`_refuse_ids`)."""
        if self._telling:
            self._refuse("evict_many")
        if type(block_ids) is not list:  # (an array, a tuple, a generator: as the C++ pool)
            block_ids = list(block_ids)
        n = len(block_ids)
        if n:  # bad input refused before the tell (the C++ pool's checks)
            try:
                states = (itemgetter(*block_ids)(self.state) if n > 1
                          else (self.state[block_ids[0]],))
            except (IndexError, TypeError):
                states = ()
            if (states.count(CACHED) != n or min(block_ids) < 0
                    or (n > 1 and len(set(block_ids)) < n)):
                self._refuse_ids(block_ids, "evict_many")
        state, block_hash = self.state, self.block_hash
        hashes = [block_hash[b] for b in block_ids]  # (a cut here changes nothing)
        self._tell(self._uncached_many, block_ids)
        try:  # (`_evicted` inline, unguarded: a cut leaves a prefix done, which it finishes)
            k = 0
            try:
                for b in block_ids:
                    state[b] = FREE
                    block_hash[b] = None
                    k += 1
            finally:
                self.num_cached -= k
            self._free.push_many(block_ids)
        except BaseException:
            self.last_result = hashes  # (completed below)
            self.calls += 1
            try:
                until_done(self._evicted, block_ids)
            finally:  # (idempotent: a no-op unless a further interrupt cut its entry)
                until_done(self._evicted, block_ids)
            raise
        self.last_result = hashes
        self.calls += 1
        return hashes

    def _evicted(self, block_ids: list[int]) -> None:
        """`evict_many`'s changes once the observer was told: idempotent (each block still
        CACHED is freed and uncounted: a cut stores the count of those done; the free
        queue's batch is all or nothing, done once its first block is queued)."""
        state, block_hash = self.state, self.block_hash
        k = 0
        try:
            for b in block_ids:
                if state[b] == CACHED:
                    state[b] = FREE
                    block_hash[b] = None
                    k += 1
        finally:
            self.num_cached -= k
        if block_ids and block_ids[0] not in self._free:
            self._free.push_many(block_ids)

    def _refuse_ids(self, block_ids: list[int], op: str) -> None:
        """Raise the C++ pool's error for the first bad id of `block_ids` given to `op`
        (`release_many`, `evict_many`, `acquire_many` or `hold_many`), before anything
        changed: TypeError for a non-integer, OverflowError for one a C long cannot hold,
        IndexError for one outside [0, num_blocks) (a negative one included: Python's
        lists would alias it from the end), each id in turn as the C++ pool reads them, then
        ValueError for a block `op` does not take (release: not ACTIVE, or named more often
        than it is referenced; evict: not CACHED, or named twice; acquire, hold: FREE)."""
        n = self.num_blocks
        ids = []
        for b in block_ids:
            i = index(b)  # (TypeError: "'str' object cannot be interpreted as an integer")
            if not 0 <= i < n:
                if not -_C_LONG <= i < _C_LONG:  # (the C++ pool's conversion refuses it first)
                    raise OverflowError("Python int too large to convert to C long")
                raise IndexError(f"block id {i} out of range [0, {n})")
            ids.append(i)
        state, seen = self.state, {}
        for b in ids:
            k = seen[b] = seen.get(b, 0) + 1
            if op == "evict_many":
                why = ("evict_many takes cached blocks" if state[b] != CACHED
                       else "evict_many got it twice" if k > 1 else None)
            elif op != "release_many":  # acquire_many, hold_many
                why = f"{op} takes active or cached blocks" if state[b] == FREE else None
            else:
                why = ("release_many names it more often than it is referenced"
                       if state[b] != ACTIVE or k > self.refcount[b] else None)
            if why:
                raise ValueError(f"{_STATE_NAMES[state[b]]} block {b}: {why}")
        raise AssertionError(f"{op}: {block_ids!r} refused but none is bad")  # (unreachable)

    def state_name(self, block_id: int) -> str:
        return _STATE_NAMES[self.state[block_id]]

    def free_ids(self) -> list[int]:
        """Free blocks, oldest (next allocated) first."""
        return list(self._free)

    def check_integrity(self) -> None:
        """Verify every invariant; raise AssertionError naming the first broken one."""
        check_pool(self, self._free)


RELEASE_RETRIES = 3  # `release_again`'s bound (a refusal, unlike an interrupt, recurs)


def release_again(pool, block_ids: list[int], keep_unhashed: int, error,
                  calls: int | None = None) -> bool:
    """In the handler of `pool.release_many(block_ids, keep_unhashed)` that raised `error`
    (either core): whether the observer was told of the blocks it cached. `calls`: the
    pool's `calls` read before the call; when it has changed, the call completed, its
    observer told, and `error` came as it returned (the C++ pool's call: CPython checks for
    a signal as a C call returns; s55 ccut): True. A call that began (`_releasing` names
    `block_ids`; a C++ call always did) released them untold: False. One that never began
    (an interrupt at the Python pool's entry; a refusal) is made again, at most
    `RELEASE_RETRIES` times: True once one released whole, False when one began and raised
    (the cause of `error`); when none began, `error` propagates, nothing released."""
    if calls is not None and pool.calls != calls:
        return True
    if getattr(pool, "_releasing", block_ids) is block_ids or type(block_ids) is not list:
        return False  # (a list is the Python pool's own: another container cannot be told)
    for _ in range(RELEASE_RETRIES):
        try:
            pool.release_many(block_ids, keep_unhashed=keep_unhashed)
            return True
        except BaseException as e:
            if getattr(pool, "_releasing", block_ids) is block_ids:
                error.__cause__ = error.__cause__ or e  # (the first error wins)
                return False
    raise error


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
