"""The block pool's observer: the protocol a policy implements to learn which blocks enter and
leave CACHED, and the per-block fallback that keeps a raising hook all or nothing (the Python
pool's, kvsaga/pool.py; the C++ pool, csrc/block_pool.h, has its own twin). Split out of
kvsaga/pool.py, which re-exports these names."""

from __future__ import annotations

from typing import Protocol


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
