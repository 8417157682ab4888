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

# Python code can run in the middle of each call (a count's `__index__`, a session id's
# `__hash__` / `__eq__`, a block's `__eq__`) and change `runs`, `groups`, the groups' lists or
# `block_ids`: both twins read the runs off a snapshot, convert every count before any group
# is read, and take each step below in this order, so they answer alike even then (and the
# C++ twin, which holds what it keeps, never reads freed memory).


def _read_runs(groups: Any, runs: Any) -> tuple[tuple[Hashable, Any], ...]:
    """`runs`, checked (as the C++ twin checks the argument types), as a tuple: the runs
    as the call began."""
    if not isinstance(groups, dict):
        raise TypeError("groups must be a dict")
    if not isinstance(runs, list) or not all(isinstance(r, tuple) and len(r) == 2
                                             for r in runs):
        raise TypeError("runs must be a list of (session, count) tuples")
    return tuple(runs)


def _count(k: Any) -> int:
    """A run's count, an integer (or an object with __index__), as the C++ twin reads it."""
    if not hasattr(type(k), "__index__"):
        raise TypeError(f"runs: a count must be an integer, got {type(k).__name__}")
    return index(k)


_NO_GROUP = object()


def _group(groups: dict, sid: Hashable) -> list[int] | None:
    """`sid`'s group (a list), None when it has none; TypeError for a group that is not a
    list (None included: the C++ twin reads no other)."""
    g = groups.get(sid, _NO_GROUP)
    if g is _NO_GROUP:
        return None
    if not isinstance(g, list):
        raise TypeError("groups: a session's group must be a list")
    return g


def tail_victims(groups: dict[Hashable, list[int]], runs: list[tuple[Hashable, int]]
                 ) -> list[int]:
    """groups[sid][:k] for each run (sid, k) of `runs`, concatenated: a search's
    victims (KeyError for a session without a group, ValueError for a negative count;
    nothing changes either way)."""
    runs = _read_runs(groups, runs)
    counts = []
    for _, k in runs:
        k = _count(k)
        if k < 0:
            raise ValueError("runs: a count must be >= 0")
        counts.append(k)
    taken: list[int] = []
    for (sid, _), k in zip(runs, counts, strict=True):
        g = _group(groups, sid)
        if g is None:
            raise KeyError(sid)
        taken += g[:k]
    return taken


def cut_tails(groups: dict[Hashable, list[int]], runs: list[tuple[Hashable, int]],
              block_ids: list[int], dirty: tuple[set, ...]) -> bool:
    """Take the runs (sid, k) off the tails of their groups when they are `block_ids`
    in order, all of them, each run its session's first k blocks (k >= 1) and no session
    twice: delete them (the group itself when k is its length) and add each session to
    every set of `dirty` (the pool uncaching a search's victims). True when done; False,
    nothing changed, for any other batch; TypeError for a group that is not a list.
    groups.py `blocks_uncached` calls it."""
    runs = _read_runs(groups, runs)
    if not isinstance(block_ids, list):
        raise TypeError("block_ids must be a list")
    if not isinstance(dirty, tuple) or not all(isinstance(d, set) for d in dirty):
        raise TypeError("dirty must be a tuple of sets")
    counts = []
    for _, k in runs:
        k = _count(k)
        if k < 1:
            return False
        counts.append(k)
    seen, i = set(), 0
    cut = []
    for (sid, _), k in zip(runs, counts, strict=True):
        g = _group(groups, sid)
        if g is None or k > len(g) or i + k > len(block_ids) or sid in seen:
            return False
        if g[:k] != block_ids[i:i + k]:
            return False
        seen.add(sid)
        cut.append((sid, g, k))
        i += k
    if i != len(block_ids):  # an id no run names
        return False
    for sid, g, k in cut:
        if k == len(g):
            del groups[sid]
        else:
            del g[:k]
        for d in dirty:
            d.add(sid)
    return True
