"""The victim index of the indexed policies: a heap of sessions keyed by their tail's key.

`GroupedPolicy` (kvsaga/policy/groups.py) keeps one live entry per session that holds
cached blocks: (key of its tail, tail block, version), where the key is a pair of numbers
(class, value) that the policy computes from the session's state. Re-keying a session gives
it a new version, which turns its older entries stale; stale entries are skipped when they
surface, and dropped by `compact`. An entry also records the session's cached block count
at keying time (its group cannot change without a re-key), so that the usual search takes
whole sessions without asking the policy (`runs`). A timer, when the key next changes by
time alone, re-keys the session at the first search after it (`due`).

Two implementations with the same behaviour (tests/policy/test_session_heap.py drives them
side by side): `PySessionHeap` here, the readable reference and the fallback, and the C++
`kvsaga._evict.SessionHeap` (csrc/session_heap.cpp), whose heap entries are plain structs:
a victim search then reads no Python object per heap level. `make_session_heap` picks.

Ordering: (key, tail block, version), lexicographic; versions are unique, so the order of
any two entries is fixed and both implementations pop the same sequence.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from itertools import count

Key = tuple[float, float]


class PySessionHeap:
    """Sessions by (key, tail block); the Python reference (module docstring)."""

    __slots__ = ("_heap", "_named", "_timers", "_version", "_versions")

    def __init__(self) -> None:
        self._heap: list[tuple[Key, int, int, Hashable, int]] = []  # key, tie, ver, sid, size
        self._named: list[tuple[Key, int, int, Hashable, int]] = []  # taken by a search
        self._timers: list[tuple[float, int, Hashable]] = []  # (when, version, sid)
        self._version: dict[Hashable, int] = {}
        self._versions = count(1)

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap)

    def push(self, sid: Hashable, key: Key, tie: int, size: int, until: float,
             now: float) -> None:
        """Key `sid` (holding `size` blocks, tail block `tie`): its older entries turn
        stale. `until`: when its key next changes by time alone (inf: only on events);
        a deadline at or before `now` fires at the first search after `now`."""
        ver = self._version[sid] = next(self._versions)
        heapq.heappush(self._heap, (key, tie, ver, sid, size))
        if until < math.inf:
            heapq.heappush(self._timers, (max(until, math.nextafter(now, math.inf)), ver, sid))

    def drop(self, sid: Hashable) -> None:
        """Forget `sid` (no cached block, or ended): its entries turn stale."""
        self._version.pop(sid, None)

    def due(self, now: float) -> list[Hashable]:
        """Sessions whose current key's deadline is <= now (each timer fires once)."""
        timers, version, out = self._timers, self._version, []
        while timers and timers[0][0] <= now:
            _, ver, sid = heapq.heappop(timers)
            if version.get(sid) == ver:
                out.append(sid)
        return out

    def _live_top(self) -> tuple[Key, int, int, Hashable, int] | None:
        heap, version = self._heap, self._version
        while heap and version.get(heap[0][3]) != heap[0][2]:
            heapq.heappop(heap)  # stale: its session was re-keyed or dropped
        return heap[0] if heap else None

    def top(self) -> tuple[Key, int] | None:
        """(key, tail block) of the lowest live entry; None when there is none."""
        e = self._live_top()
        return None if e is None else (e[0], e[1])

    def pop(self) -> Hashable:
        """Take the lowest live entry (it must exist) aside until `restore`; its session."""
        e = self._live_top()
        self._named.append(heapq.heappop(self._heap))
        return e[3]

    def runs(self, num_blocks: int) -> list[tuple[Hashable, int]]:
        """Take the lowest live entries aside until their sessions hold `num_blocks`
        blocks: [(session, blocks taken from its tail)], the last one possibly partly."""
        out: list[tuple[Hashable, int]] = []
        left = num_blocks
        while left > 0 and self._live_top() is not None:
            e = heapq.heappop(self._heap)
            self._named.append(e)
            k = min(e[4], left)
            out.append((e[3], k))
            left -= k
        return out

    def restore(self) -> None:
        """Put back the entries searches took aside whose sessions were not re-keyed
        since (a caller that only asks, or a victim left cached)."""
        version, heap = self._version, self._heap
        for e in self._named:
            if version.get(e[3]) == e[2]:
                heapq.heappush(heap, e)
        self._named.clear()

    def clear(self) -> None:
        """Forget every session (a full re-key follows)."""
        self._heap, self._named, self._timers = [], [], []
        self._version.clear()

    def compact(self) -> None:
        """Drop stale entries and timers (live keys stay as they are)."""
        version = self._version
        self._heap = [e for e in self._heap if version.get(e[3]) == e[2]]
        heapq.heapify(self._heap)
        self._timers = [t for t in self._timers if version.get(t[2]) == t[1]]
        heapq.heapify(self._timers)


def make_session_heap(cpp: bool) -> PySessionHeap:
    """The C++ index when `cpp` and kvsaga._evict was built, else the Python one."""
    if cpp:
        try:
            from kvsaga._evict import SessionHeap
        except ImportError:
            return PySessionHeap()
        return SessionHeap()
    return PySessionHeap()
