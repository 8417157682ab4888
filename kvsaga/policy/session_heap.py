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

Time-driven re-keys from a table: a paused session's key often depends on time only
through the grid point of its elapsed pause (search.py `grid_index`), the rest being shared
by a *class* of sessions (same workflow, tool, size...). A push may carry the session's
timed record `(cls, k, k0, value, mode, t0, limit, extra, mult)`: its class, the grid point
k of its key, that key as (k0, value, mode), its pause start t0, the elapsed time `limit`
below which the table applies, its deadline cap `extra` and its multiplier. The key of
class `cls` at grid point k is then remembered as (k0, value, mode), and a due session
whose class has a key at its new grid point j is re-keyed by the index itself, to
(k0, value * mult) (mode 0) or (k0, (t0 + grid(j)) + value) (mode 1), deadline
min(t0 + grid(j + 1), extra): the same floats the policy's Python would compute, with no
Python call per session. Mode 2 gives a class's key at every grid point at once, `value`
being (w, s, a, b): (k0, -((w * min(grid(j) / s, 1) + a) + b)) (saga's score). Modes 3
and 4 give a class's key at every grid point from the log-normal pause model the policies
learn (lognormal.py, aeg.py): mode 3, `value` (mu, sigma, p0, cost, rent, n, r, ttl), is
ttl's key (`ttl_window_key`); mode 4, `value` (base, mu, sigma, p0, wait, corr, min_wait,
hedge), graph's: (1, `graph_rate` x mult), `base` being the session's rate when pushed (both
in kvsaga/policy/timed_keys.py, with the records' checks). The C++
index computes them (csrc/session_keys.h) operation for operation with the same libm
functions, so that a session paused for long re-keys at every grid point without Python,
not only at the points its class's table holds; each key so computed enters the table
(the class's next sessions at that point read it there). `forget_keys` empties the table
when what it was computed from changes (the policy's statistics).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable
from itertools import count

from kvsaga.policy.search import _GRID_POINTS, _LOG_RATIO, GRID_S
from kvsaga.policy.search import grid_index_py as grid_index  # (the twin reads the reference)
from kvsaga.policy.timed_keys import (
    Key,
    Timed,
    _check_push,
    _class_limits,
    _int,
    check_timed,
    graph_rate,
    ttl_entry,
)
from kvsaga.policy.victim_runs import cut_tails, tail_victims


class PySessionHeap:
    """Sessions by (key, tail block); the Python reference (module docstring)."""

    __slots__ = ("_expired_from", "_expiry", "_formulas", "_heap", "_named", "_table",
                 "_timed", "_timers", "_version", "_versions")

    def __init__(self) -> None:
        self._heap: list[tuple[Key, int, int, Hashable, int]] = []  # key, tie, ver, sid, size
        self._named: list[tuple[Key, int, int, Hashable, int]] = []  # taken by a search
        self._timers: list[tuple[float, int, Hashable]] = []  # (when, version, sid)
        self._version: dict[Hashable, int] = {}
        self._versions = count(1)
        # sid -> (cls, t0, limit, extra, mult, tie, size, the value last keyed from)
        self._timed: dict[Hashable, tuple] = {}
        self._table: dict[tuple[int, int], tuple[float, float, int]] = {}
        # cls -> (mode, k0, the formula's numbers; mode 4's without the session's base,
        # the limit of the record that gave it)
        self._formulas: dict[int, tuple[int, float, tuple[float, ...], float]] = {}
        self._expiry: dict[int, int] = {}  # cls -> its class past the limit
        self._expired_from: dict[int, int] = {}  # the reverse of `_expiry`

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap)

    def push(self, sid: Hashable, key: Key, tie: int, size: int, until: float,
             now: float, timed: Timed | None = None) -> None:
        """Key `sid` (holding `size` blocks, tail block `tie`): its older entries turn
        stale. `until`: when its key next changes by time alone (inf: only on events);
        a deadline at or before `now` fires at the first search after `now`. `timed`: its
        timed record (module docstring), None when only Python can re-key it."""
        if timed is None:
            self._timed.pop(sid, None)
        else:
            cls, k, k0, value, mode, t0, limit, extra, mult = check_timed(timed)
            if mode >= 2:
                f = value
                self._formulas[cls] = (mode, k0, f[1:] if mode == 4 else f, limit)
                value = f[0] if mode == 4 else None
            else:
                self._table[cls, k] = (k0, value, mode)
            self._timed[sid] = (cls, t0, limit, extra, mult, tie, size, value)
        self._enter(sid, key, tie, size, until, now)
        # A formula's key at the session's own grid point enters the table now (the key
        # the policy just computed, by the formula), so that the class's next sessions to
        # reach that point read it there: after a re-key in Python, as after the index's.
        if timed is not None and mode >= 3 and k >= -1 and k + 2 < len(_GRID_POINTS) and (
                (cls, k) not in self._table):
            self._formula_key(cls, k, 0.0 if k < 0 else _GRID_POINTS[k])

    def _enter(self, sid: Hashable, key: Key, tie: int, size: int, until: float,
               now: float) -> None:
        ver = self._version[sid] = next(self._versions)
        heapq.heappush(self._heap, (key, tie, ver, sid, size))
        if until < math.inf:
            heapq.heappush(self._timers, (max(until, math.nextafter(now, math.inf)), ver, sid))

    def base(self, sid: Hashable) -> float:
        """The value `sid`'s key was last computed from by its timed record (before its
        multiplier or pause start): the policy's per-session base behind that key."""
        t = self._timed.get(sid)
        if t is None or t[7] is None:
            raise KeyError(sid)
        return t[7]

    def forget_keys(self) -> None:
        """Forget the keys by class and grid point (module docstring)."""
        self._table.clear()
        self._formulas.clear()
        self._expiry.clear()
        self._expired_from.clear()

    def set_grid(self, grid_s: float, log_ratio: float, points: list[float]) -> None:
        """The C++ index's copy of the grid; this one reads search.py's own."""

    def drop(self, sid: Hashable) -> None:
        """Forget `sid` (no cached block, or ended): its entries turn stale."""
        self._version.pop(sid, None)
        self._timed.pop(sid, None)

    def due(self, now: float) -> list[Hashable]:
        """Sessions whose current key's deadline is <= now (each timer fires once), less
        those re-keyed from the table (module docstring): Python re-keys these. A NaN
        `now` is refused (ValueError), nothing fired. When a re-key raises (mode 4 calls
        statistics' quantile), the timer being fired is gone, those not fired yet stay, and
        those already fired for Python to re-key get a timer at `now` (the next `due`
        answers them: their keys would otherwise stay stale with no timer)."""
        if math.isnan(now):
            raise ValueError("due: now must not be NaN")
        timers, version, out = self._timers, self._version, []
        try:
            while timers and timers[0][0] <= now:
                _, ver, sid = heapq.heappop(timers)
                if version.get(sid) == ver and not self._rekey_from_table(sid, now):
                    out.append(sid)
        except BaseException:
            for sid in out:
                heapq.heappush(timers, (now, version[sid], sid))
            raise
        return out

    def _rekey_from_table(self, sid: Hashable, now: float) -> bool:
        """Re-key a due session from the table; False (nothing done) when it has no timed
        record, its pause reached its limit, or its class has no key at its grid point."""
        t = self._timed.get(sid)
        if t is None:
            return False
        cls, t0, limit, extra, mult, tie, size, _ = t
        d = now - t0
        if not d < limit:
            t = self._expire(sid, t)
            if t is None:
                return False
            cls, t0, limit, extra = t[:4]
        k, lo, hi = grid_index(0.0 if d < 0.0 else d)
        if k + 2 >= len(_GRID_POINTS):
            return False
        until = t0 + hi
        until = extra if extra < until else until
        # The class's key at this grid point: from its table, else from its formula
        # (modes 3 and 4 then enter it in the table, for the class's next sessions here).
        hit = self._table.get((cls, k))
        if hit is None:
            formula = self._formulas.get(cls)
            if formula is None:
                return False
            mode, k0, f, _ = formula
            if mode == 2:
                w, s, a, b = f
                r = lo / s
                self._timed[sid] = (*t[:7], None)
                self._enter(sid, (k0, -((w * (1.0 if r > 1.0 else r) + a) + b)), tie, size,
                            until, now)
                return True
            hit = self._formula_key(cls, k, lo)
        k0, value, mode = hit
        self._timed[sid] = (*t[:7], value)
        self._enter(sid, (k0, value * mult if mode == 0 else (t0 + lo) + value), tie, size,
                    until, now)
        return True

    def _expire(self, sid: Hashable, t: tuple) -> tuple | None:
        """A mode-2 record past its limit moves to the class `expire_into` named for its
        class (saga: past its TTL, the same score in class 1, no limit), whose formula is
        its own with k0 1 and no limit where none was pushed yet: the new record, or None
        (nothing done) when its class has no such successor or no mode-2 formula."""
        dst = self._expiry.get(t[0])
        formula = self._formulas.get(t[0])
        if dst is None or formula is None or formula[0] != 2:
            return None
        g = self._formula_of(dst)
        if g is None or g[0] != 2:
            return None
        limit, extra = _class_limits(g, t[1])
        t = self._timed[sid] = (dst, t[1], limit, extra, *t[4:])
        return t

    def _formula_of(self, cls: int) -> tuple | None:
        """Class `cls`'s formula; for a class `expire_into` named as another's past its
        limit, when none was pushed, that class's mode-2 formula with k0 1 and no limit
        (entered), which is what Python gives its expired sessions under the same
        statistics; else None."""
        f = self._formulas.get(cls)
        if f is None:
            src = self._expired_from.get(cls)
            g = self._formulas.get(src) if src is not None else None
            if g is not None and g[0] == 2:
                f = self._formulas[cls] = (2, 1.0, g[2], math.inf)
        return f

    def expire_into(self, cls: int, dst: int) -> None:
        """Name the class a mode-2 record of class `cls` moves to once its pause reaches its
        limit (`_expire`); forgotten with the keys (`forget_keys`)."""
        cls, dst = _int(cls, "cls"), _int(dst, "dst")
        if cls < 0 or dst < 0:
            raise ValueError("expire_into: class ids must be >= 0")
        if cls == dst:
            raise ValueError("expire_into: a class cannot expire into itself")
        self._expiry[cls] = dst
        self._expired_from[dst] = cls

    def _formula_key(self, cls: int, k: int, lo: float) -> tuple[float, float, int]:
        """Class `cls`'s key at grid point k (at lo) from its formula (mode 3 or 4), entered
        in the table."""
        mode, _, f, _ = self._formulas[cls]
        hit = self._table[cls, k] = ttl_entry(f, lo) if mode == 3 else (1, graph_rate(f, lo), 0)
        return hit

    def _among(self, among: Iterable[Hashable] | None) -> list[Hashable]:
        """The live sessions: all of them, or those `among` names (unknown ones skipped)."""
        if among is None:
            return list(self._version)
        version = self._version
        return [sid for sid in dict.fromkeys(among) if sid in version]

    def timed_classes(self, among: Iterable[Hashable] | None = None) -> dict[int, Hashable]:
        """For each class of the live timed records (of the sessions `among` names, when
        given), one session of it: the latest paused (largest t0), then the lowest tail
        block, then the latest keyed (largest version: unique, so that both indexes pick
        the same session whatever order they meet them in). What a re-key of many sessions
        keys in Python first, to learn the class's key under the policy's current
        statistics."""
        best: dict[int, tuple[float, int, int, Hashable]] = {}
        timed, version = self._timed, self._version
        for sid in self._among(among):
            t = timed.get(sid)
            if t is None:
                continue
            b, ver = best.get(t[0]), version[sid]
            if b is None or t[1] > b[0] or (t[1] == b[0] and (
                    t[5] < b[1] or (t[5] == b[1] and ver > b[2]))):
                best[t[0]] = (t[1], t[5], ver, sid)
        return {cls: b[3] for cls, b in best.items()}

    def rekey_classes(self, mapping: dict[int, int], now: float,
                      among: Iterable[Hashable] | None = None) -> set[Hashable]:
        """A re-key without Python per session: every live session (of those `among`
        names, when given) whose timed
        record's class `mapping` maps to a class (itself, while the keys it was computed
        from still hold) is re-keyed from that class's key at its grid point now, as `due`
        re-keys; the rest, as a set, for Python to key. A session whose class maps to
        another one moves only when that class has a formula, whose limits it takes
        (`_class_limits`); and it goes to Python when its key at now is not known (as
        `due`) or its pause reached its limit. Sessions are re-keyed in (tail block,
        version) order, so that both indexes give the same versions and timers; their old
        entries stay, stale, until `compact`."""
        version, timed, order, rest = self._version, self._timed, [], set()
        for sid in self._among(among):
            t = timed.get(sid)
            if t is not None and t[0] in mapping:
                order.append(sid)
            else:
                rest.add(sid)
        order.sort(key=lambda sid: (self._timed[sid][5], version[sid]))
        for sid in order:
            t = self._timed[sid]
            dst = mapping[t[0]]
            if dst != t[0]:
                formula = self._formula_of(dst)
                if formula is None:
                    rest.add(sid)
                    continue
                self._timed[sid] = (dst, t[1], *_class_limits(formula, t[1]), *t[4:])
            if not self._rekey_from_table(sid, now):
                rest.add(sid)
        return rest

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

    def refresh_runs(self, now: float, drops: Iterable[Hashable],
                     pushes: Iterable[tuple], num_blocks: int, stale_limit: int
                     ) -> tuple[list[Hashable] | None, list[tuple[Hashable, int]] | None]:
        """A usual search's index work in one call (search.py `_index_victims`): `compact` when
        more than `stale_limit` entries are held, `drop` each of `drops`, `push` each of
        `pushes` ((sid, key, tie, size, until, timed), judged at `now`), then `due(now)`.
        When no due session is left for Python: `restore`, then `runs(num_blocks)` (none
        for a negative count), and returns (None, runs). Otherwise returns (the due
        sessions, None) with nothing restored or taken: Python keys them first. Every push
        is checked before anything changes, so a bad one leaves the index as it was.

        One call instead of one per step: on the C++ index each call is a dispatch whose
        code a search after other work finds out of the CPU caches."""
        return self._refresh_runs(now, drops, pushes, num_blocks, stale_limit, None)

    def _refresh_runs(self, now: float, drops: Iterable[Hashable], pushes: Iterable[tuple],
                      num_blocks: int, stale_limit: int, held: dict | None,
                      bases: dict | None = None
                      ) -> tuple[list[Hashable] | None, list[tuple[Hashable, int]] | None]:
        """`refresh_runs`; with `held` (`refresh_marked`'s groups), only the drops it does
        not hold are dropped, judged once every drop was hashed, before anything changes;
        with `bases` too, each dropped session leaves it as well (absent ones skipped)."""
        if math.isnan(now):  # (every timer would be judged against it)
            raise ValueError("refresh_runs: now must not be NaN")
        drops, pushes = list(drops), list(pushes)
        for sid in drops:
            hash(sid)  # an unhashable id fails here, before anything changed
        if held is not None:
            drops = [sid for sid in drops if sid not in held]
        for i, p in enumerate(pushes):
            _check_push(i, p)
        if len(self._heap) > stale_limit:
            self.compact()
        for sid in drops:
            self.drop(sid)
        if bases is not None:
            for sid in drops:
                bases.pop(sid, None)
        for sid, key, tie, size, until, timed in pushes:
            self.push(sid, key, tie, size, until, now, timed)
        due = self.due(now)
        if due:
            return due, None
        self.restore()
        return None, (self.runs(num_blocks) if num_blocks >= 0 else None)

    def refresh_victims(self, now: float, drops: Iterable[Hashable], pushes: Iterable[tuple],
                        num_blocks: int, stale_limit: int, groups: dict[Hashable, list[int]]
                        ) -> tuple[list[Hashable] | None, list[tuple[Hashable, int]] | None,
                                   list[int] | None]:
        """`refresh_runs`, and with its runs their victims (`tail_victims` of `groups`):
        (due, runs, victims), runs and victims None where `refresh_runs` gives no runs.
        The C++ index builds the victims in the same call: the usual search's index work
        and its answer are one dispatch."""
        if not isinstance(groups, dict):
            raise TypeError("groups must be a dict")
        due, runs = self.refresh_runs(now, drops, pushes, num_blocks, stale_limit)
        return due, runs, (None if runs is None else self.tail_victims(groups, runs))

    def refresh_marked(self, now: float, marked: Iterable[Hashable], pushes: Iterable[tuple],
                       num_blocks: int, stale_limit: int, groups: dict[Hashable, list[int]],
                       bases: dict | None = None
                       ) -> tuple[list[Hashable] | None, list[tuple[Hashable, int]] | None,
                                  list[int] | None]:
        """`refresh_victims` given the sessions marked since the last search instead of the
        drops: those of `marked` that `groups` does not hold (no cached block left) are
        dropped, the others are left to `pushes` (search.py keys them). The usual search
        then needs no set operation in Python to split its marks into kept and gone: the
        index makes that split with the lookups it makes anyway. With `bases` (a dict:
        search.py's `_base`), each dropped session leaves it too, as it leaves the index
        (nothing leaves it when the call is refused). Seven arguments, as
        `refresh_marked_runs`: the C++ twin's calls then take nanobind's shorter dispatch."""
        return self._marked(now, marked, pushes, num_blocks, stale_limit, groups, bases, True)

    def refresh_marked_runs(self, now: float, marked: Iterable[Hashable],
                            pushes: Iterable[tuple], num_blocks: int, stale_limit: int,
                            groups: dict[Hashable, list[int]], bases: dict | None = None
                            ) -> tuple[list[Hashable] | None,
                                       list[tuple[Hashable, int]] | None, None]:
        """`refresh_marked` with None for the victims, the runs alone (the manager's C++
        core evicts them: `ManagerCore.evict_runs`)."""
        return self._marked(now, marked, pushes, num_blocks, stale_limit, groups, bases, False)

    def _marked(self, now, marked, pushes, num_blocks, stale_limit, groups, bases, victims):
        if not isinstance(groups, dict):
            raise TypeError("groups must be a dict")
        if bases is not None and not isinstance(bases, dict):
            raise TypeError("bases must be a dict or None")
        due, runs = self._refresh_runs(now, marked, pushes, num_blocks, stale_limit, groups,
                                       bases)
        return due, runs, (None if runs is None or not victims
                           else self.tail_victims(groups, runs))

    # A search's runs off the session groups (kvsaga/policy/victim_runs.py).
    tail_victims = staticmethod(tail_victims)
    cut_tails = staticmethod(cut_tails)

    def clear(self) -> None:
        """Forget every session (a full re-key follows)."""
        self._heap, self._named, self._timers = [], [], []
        self._version.clear()
        self._timed.clear()

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
        heap = SessionHeap()
        heap.set_grid(GRID_S, _LOG_RATIO, list(_GRID_POINTS))
        return heap
    return PySessionHeap()
