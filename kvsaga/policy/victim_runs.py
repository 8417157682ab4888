"""A victim search's runs off the session groups: the Python twins and references of the
C++ index's `tail_victims` and `cut_tails` (csrc/victim_runs.h; tests/policy/
test_victim_runs.py runs both side by side). Both indexes (session_heap.py) carry them.

`groups` is the grouped policy's dict (kvsaga/policy/groups.py): session id -> its cached
blocks, tail first. A search's runs (session, count) name the tails it evicts:
`tail_victims` concatenates them (the victims), `cut_tails` takes them off their groups
when the pool uncaches them and marks the sessions for re-keying. In C++ each is one call
where the Python loop was glue whose code a search between two steps finds out of the CPU
caches.
"""

from __future__ import annotations

from collections.abc import Hashable
from operator import index
from typing import Any


def _check_runs(groups: Any, runs: Any) -> None:
    """The argument types `tail_victims` and `cut_tails` take (as the C++ twin checks)."""
    if not isinstance(groups, dict):
        raise TypeError("groups must be a dict")
    if not isinstance(runs, list) or not all(isinstance(r, tuple) and len(r) == 2
                                             for r in runs):
        raise TypeError("runs must be a list of (session, count) tuples")


def _count(k: Any) -> int:
    """A run's count, an integer (or an object with __index__), as the C++ twin reads it."""
    try:
        return index(k)
    except TypeError:
        raise TypeError(f"runs: a count must be an integer, got {type(k).__name__}") from None


def _group(groups: dict, sid: Hashable) -> list[int] | None:
    """`sid`'s group (a list), None when it has none."""
    g = groups.get(sid)
    if g is not None and not isinstance(g, list):
        raise TypeError("groups: a session's group must be a list")
    return g


def tail_victims(groups: dict[Hashable, list[int]], runs: list[tuple[Hashable, int]]
                 ) -> list[int]:
    """groups[sid][:k] for each run (sid, k) of `runs`, concatenated: a search's
    victims (KeyError for a session without a group, ValueError for a negative count;
    nothing changes either way)."""
    _check_runs(groups, runs)
    taken = []
    for sid, k in runs:
        k = _count(k)
        if k < 0:
            raise ValueError("runs: a count must be >= 0")
        g = _group(groups, sid)
        if g is None:
            raise KeyError(sid)
        taken.append(g[:k])
    return [b for t in taken for b in t]


def cut_tails(groups: dict[Hashable, list[int]], runs: list[tuple[Hashable, int]],
              block_ids: list[int], dirty: tuple[set, ...]) -> bool:
    """Take the runs (sid, k) off the tails of their groups when they are `block_ids`
    in order, each run its session's first k blocks (k >= 1) and no session twice:
    delete them (the group itself when k is its length) and add each session to every
    set of `dirty` (the pool uncaching a search's victims). True when done; False,
    nothing changed, for any other batch. groups.py `blocks_uncached` calls it."""
    _check_runs(groups, runs)
    if not isinstance(block_ids, list):
        raise TypeError("block_ids must be a list")
    if not isinstance(dirty, tuple) or not all(isinstance(d, set) for d in dirty):
        raise TypeError("dirty must be a tuple of sets")
    seen, i = set(), 0
    cut = []
    for sid, k in runs:
        k = _count(k)
        if k < 1:
            return False
        g = _group(groups, sid)
        if g is None or k > len(g) or i + k > len(block_ids) or sid in seen:
            return False
        if g[:k] != block_ids[i:i + k]:
            return False
        seen.add(sid)
        cut.append((sid, g, k))
        i += k
    for sid, g, k in cut:
        if k == len(g):
            del groups[sid]
        else:
            del g[:k]
        for d in dirty:
            d.add(sid)
    return True
