"""A shadow cache's per-block loops (kvsaga/policy/shadow.py): the Python twin and reference
of the C++ core's `ShadowLoops` (csrc/shadow_loops.h; tests/policy/test_shadow_loops.py runs
both side by side). `make_shadow_loops` picks.

Each loop walks one step's blocks over the shadow's per-block tables (its states, reference
counts, generations, owners, positions and hashes, its free stack and its hash index), which
the shadow and its expert keep as Python objects; the loops change them in place. Why a C++
twin: `adaptive` (its default, `shadow_cache`) replays every step in one shadow per expert,
each step's blocks passing through four of these loops per shadow; as Python bytecode, over
tables of the pool's length that a step finds out of the CPU caches, they were more than
half of the shadows' cost, a third of adaptive's whole step at 4,000 paused sessions
(bench/RESULTS.md, "adaptive's shadow replay in C++ loops"). In C++ each loop is one call
that touches the same Python objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import index as as_index

FREE, ACTIVE, CACHED = 0, 1, 2


class PyShadowLoops:
    """The loops over one shadow's tables (module docstring); the Python reference.

    Args:
        state: a bytearray, FREE / ACTIVE / CACHED per block.
        ref: per block, its references by running steps (a list).
        gen: per block, its generation (a writable memoryview of int64s, format 'q': a
            step's new blocks each count one up, with no int object made or freed).
        owner, position, block_hash: per block, its owning session (None: plain cache), its
            position in that context, its content hash (None: unhashed).
        free: the free stack (a list; the last entry is handed out first).
        index: the hash index, content hash -> block.
        name: the shadow expert's name, for errors.
    """

    def __init__(self, state: bytearray, ref: list[int], gen: memoryview, owner: list,
                 position: list[int], block_hash: list, free: list[int], index: dict,
                 name: str) -> None:
        n = len(state)
        if type(state) is not bytearray:
            raise TypeError("state must be a bytearray")
        for what, x in (("ref", ref), ("owner", owner), ("position", position),
                        ("block_hash", block_hash)):
            if type(x) is not list or len(x) != n:
                raise TypeError(f"{what} must be a list of {n} entries, one per block")
        if type(free) is not list or type(index) is not dict:
            raise TypeError("free must be a list and index a dict")
        if not (isinstance(gen, memoryview) and gen.format == "q" and gen.ndim == 1
                and len(gen) == n and not gen.readonly and gen.c_contiguous):
            raise TypeError(f"gen must be a writable memoryview of {n} int64s ('q')")
        self.state, self.ref, self.gen = state, ref, gen
        self.owner, self.position, self.block_hash = owner, position, block_hash
        self.free, self.index, self.name = free, index, name

    def _ids(self, ids: Sequence[int]) -> list[int]:
        """`ids` as ints, each checked to be a block (as the C++ twin reads them)."""
        n = len(self.state)
        out = [as_index(b) for b in ids]
        for b in out:
            if not 0 <= b < n:
                raise IndexError(f"block id {b} out of range [0, {n})")
        return out

    def hits(self, hashes: Sequence, limit: int) -> list[int]:
        """The blocks indexed under hashes[:limit], up to the first hash not indexed."""
        index, out = self.index, []
        for h in hashes[:limit]:
            b = index.get(h)
            if b is None:
                break
            out.append(b)
        return out

    def take(self, hits: list[int], sid: str) -> list[int]:
        """A reference on each block of `hits` for session `sid`; a block owned by another
        session becomes plain cache. Returns the blocks that were cached (now active), in
        order."""
        ref, state, owner = self.ref, self.state, self.owner
        reclaimed = []
        for b in self._ids(hits):
            if ref[b] == 0:
                state[b] = ACTIVE
                reclaimed.append(b)
            ref[b] += 1
            if owner[b] != sid:
                owner[b] = None
        return reclaimed

    def allocate(self, sid: str, table: list[int], hashes: Sequence, need: int,
                 full: int) -> int:
        """Up to `need` blocks off the free stack appended to `table` at its next positions,
        each referenced once, active, of a new generation and owned by `sid`; one at a
        position below `full` is indexed by hashes[position] (a hash indexed already leaves
        it unhashed: the first copy stays). Returns how many."""
        ref, state, gen, free = self.ref, self.state, self.gen, self.free
        owner, position, block_hash = self.owner, self.position, self.block_hash
        first = len(table)
        k = max(min(need, len(free)), 0)
        self._ids(free[len(free) - k:])  # every block handed out checked before any change
        hashed = min(first + k, full)
        if hashed > len(hashes):
            raise IndexError("allocate: fewer hashes than full blocks")
        for i in range(first, hashed):  # an unhashable hash raises here, before any change
            hash(hashes[i])
        for i in range(first, first + k):
            b = free.pop()
            ref[b] = 1
            state[b] = ACTIVE
            gen[b] += 1
            owner[b] = sid
            position[b] = i
            block_hash[b] = None
            table.append(b)
            if i < full:
                self.index_block(b, hashes[i])
        return k

    def index_block(self, b: int, h: bytes) -> None:
        """Index block `b` by `h`, unless a block holds `h` already (then `b` is unhashed)."""
        b = self._ids([b])[0]
        if h in self.index:
            self.block_hash[b] = None
        else:
            self.index[h] = b
            self.block_hash[b] = h

    def evict(self, victims: list[int]) -> None:
        """Each victim (cached) freed: out of the index, unhashed, onto the free stack.
        RuntimeError naming the first that is not cached (or named twice), nothing changed."""
        state, block_hash, index, free = self.state, self.block_hash, self.index, self.free
        ids = self._ids(victims)
        for i, b in enumerate(ids):
            if state[b] != CACHED:
                for c in ids[:i]:
                    state[c] = CACHED
                raise RuntimeError(f"shadow {self.name!r} named block {b}, not cached")
            state[b] = FREE
        for b in ids:
            h = block_hash[b]
            if h is not None and index.get(h) == b:
                del index[h]
            block_hash[b] = None
            free.append(b)

    def disown(self, blocks: list[int]) -> None:
        """Each block of `blocks` owned by no session."""
        owner = self.owner
        for b in self._ids(blocks):
            owner[b] = None

    def release(self, table: list[int], tail: int) -> tuple[list[int], int]:
        """One reference dropped on each block of `table`, its last entry first; a block
        left with none is cached when hashed or when it is `tail` (-1: none), else freed.
        Returns (the cached ones, in that order; how many were left with none)."""
        ref, state, block_hash, free = self.ref, self.state, self.block_hash, self.free
        to_cache: list[int] = []
        released = 0
        for b in reversed(self._ids(table)):
            r = ref[b] - 1
            ref[b] = r
            if r:
                continue
            released += 1
            if block_hash[b] is not None or b == tail:
                state[b] = CACHED
                to_cache.append(b)
            else:
                state[b] = FREE
                free.append(b)
        return to_cache, released


def make_shadow_loops(cpp: bool, *args) -> PyShadowLoops:
    """The C++ core's loops over the tables `args` (PyShadowLoops' arguments) when `cpp` and
    kvsaga._kvcore was built, else the Python ones."""
    if cpp:
        try:
            from kvsaga._kvcore import ShadowLoops
        except ImportError:
            return PyShadowLoops(*args)
        return ShadowLoops(*args)
    return PyShadowLoops(*args)
