"""A ghost list of `adaptive` (kvsaga/policy/adaptive.py): the content hashes an expert named
as victims, each with its rebuild cost, oldest first, at most `cap` of them.

Two implementations with the same behaviour (tests/policy/test_ghost_list.py drives them side
by side): `PyGhostList` here, the readable reference and the fallback, and the C++
`kvsaga._evict.GhostList` (csrc/ghost_list.h), which keeps each name as 32 bytes in one ring
and a table of slots: naming a victim, and letting the oldest name fall out, then touch a
few cache lines instead of a dict entry, a list node and a key object each.
`make_ghost_list` picks.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable


class PyGhostList:
    """Names in order of entry, with their costs; the Python reference (module docstring).

    Args:
        cap: the most names kept; older ones fall out when more enter.
        reserve: names to make room for at once (the C++ list sizes its ring and table for
            min(reserve, cap) names, so filling it to that rehashes nothing); a dict has no
            capacity to set, so here it is only checked.
    """

    __slots__ = ("_names", "_cap")

    def __init__(self, cap: int, reserve: int = 0) -> None:
        # the C++ list's binding takes ints only (a bool is one): refuse the rest alike
        for name, x in (("capacity", cap), ("reserve", reserve)):
            if not isinstance(x, int):
                raise TypeError(f"GhostList {name} must be an int, got {x!r}")
        if cap < 1:
            raise ValueError(f"GhostList capacity must be >= 1, got {cap!r}")
        if reserve < 0:
            raise ValueError(f"GhostList reserve must be >= 0, got {reserve!r}")
        self._names: OrderedDict[bytes, float] = OrderedDict()
        self._cap = cap

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, h: object) -> bool:
        return h in self._names

    def pop(self, h: bytes, default: float | None = None) -> float | None:
        """`h`'s cost, taken out of the list; `default` when it is not a ghost."""
        return self._names.pop(h, default)

    def charge(self, total: float, hashes: Iterable[bytes | None]) -> float:
        """`total` plus the cost of each of `hashes` that is a ghost, added in order; each
        ghost is taken out (a step read it: its name was charged)."""
        pop = self._names.pop
        for h in hashes:
            c = pop(h, None)
            if c is not None:
                total += c
        return total

    def enter(self, hashes: list[bytes | None], costs: list[float]) -> int:
        """Enter each hash (None: a partial block, skipped) with its cost unless it is a
        ghost already (it keeps its first cost and place); then the oldest names fall out
        down to the capacity. Returns how many entered. A hash that is not 32 bytes or a
        cost that is not a number raises TypeError before any name enters (the C++ list's
        checks: a bad cost let in would fail a later `charge` half way)."""
        if len(hashes) != len(costs):
            raise ValueError("enter: hashes and costs differ in length")
        named = []
        for h, c in zip(hashes, costs, strict=True):
            if h is not None:
                _check_name(h)
                named.append((h, _cost(c)))
        names = self._names
        before = len(names)
        for h, c in named:
            names.setdefault(h, c)
        new = len(names) - before
        for _ in range(len(names) - self._cap):
            names.popitem(last=False)
        return new

    def enter_blocks(self, blocks: list[int], hashes, positions, costs: list[float]) -> int:
        """`enter` of blocks' names: `hashes[b]` with cost `costs[positions[b]]` for each
        block `b`, read off the caller's tables (a victim search's names). A position past
        `costs` returns -1 - that position, nothing entered (extend `costs`, call again)."""
        hs: list[bytes | None] = []
        cs: list[float] = []
        beyond = -1
        for b in blocks:  # the C++ list's checks, in its order: hash, then position
            h = hashes[b]
            if h is None:  # a partial block: no name, its position is not read
                continue
            _check_name(h)
            p = positions[b]
            if p < 0:
                raise ValueError("enter_blocks: a negative position")
            if p >= len(costs):
                beyond = max(beyond, p)
                continue
            hs.append(h)
            cs.append(costs[p])
        if beyond >= 0:
            return -1 - beyond
        return self.enter(hs, cs)


def _check_name(h: object) -> None:
    """A ghost's name is 32 bytes: TypeError otherwise (the C++ list's message)."""
    if not isinstance(h, bytes) or len(h) != 32:
        raise TypeError("a ghost's hash must be 32 bytes")


def _cost(c: object) -> float:
    """`c` as a float, as the C++ list reads a cost (a float, or an object with __float__
    or __index__; a str is not one): TypeError otherwise, with its message."""
    tp = type(c)
    if not (hasattr(tp, "__float__") or hasattr(tp, "__index__")):
        raise TypeError(f"must be real number, not {tp.__name__}")
    return float(c)


def make_ghost_list(cap: int, cpp: bool, reserve: int = 0) -> PyGhostList:
    """The C++ ghost list when `cpp` and kvsaga._evict was built, else the Python one."""
    if cpp:
        try:
            from kvsaga._evict import GhostList
        except ImportError:
            return PyGhostList(cap, reserve)
        return GhostList(cap, reserve)
    return PyGhostList(cap, reserve)
