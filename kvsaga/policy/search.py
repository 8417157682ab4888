"""The victim search of the session-grouped policies (`GroupedPolicy`, groups.py).

A victim search merges one lazy stream per group (a session's blocks tail first, the dead
queue, the plain queue), each yielding ((key, tie-break), block); the lowest pair goes
first. A queue block's tie-break is the block itself; a session's is its tail block, the same
for all its blocks, so sessions with equal keys are taken one whole session at a time.

Two ways to run that merge, with the same result for the same keys:
- **scan** (`indexed = False`; `belady`, `oracle-ttl`, and `scan_order` for tests): compute
  every session's key at each search: O(sessions + victims * log(sessions)) per call;
- **index** (`indexed = True`; `ttl`, `saga`, `graph`): a session's key is a function of its
  state and of time *rounded down to a grid* (`elapsed_grid`: 1 ms, then steps of 2^(1/4)),
  so it changes only on events: the session's own hooks, a change of its cached blocks, its
  next grid point or deadline (a timer the policy returns with the key), or a change of the
  policy's global state (`_global_state`: memory pressure and normalizers, each on a
  geometric scale that moves only once the value moved a whole step: `sticky_level`). A heap
  of (key of the session's tail, tail block, version) holds one live entry per session
  (`_index`: kvsaga/policy/session_heap.py, in C++ where the manager runs the C++ core);
  stale entries are skipped when they surface and the heap is rebuilt when they dominate.
  A search re-keys only the sessions marked since the last one, then pops victim sessions
  (one pop gives a session's blocks in one slice when its keys never rise from tail to
  head): O((marked + victim sessions) * log(sessions)). It records its runs (session,
  count); when the pool uncaches the victims, each session's run leaves its group in one
  slice, with no Python work per block (`cut_tails`; another policy's victims, as
  adaptive's experts see their leader's, have their runs read off the owner marks). What
  the policies learn (pause fits, admission waits) changes many keys at once: keys are
  recomputed from the current statistics when a session is re-keyed, and all of them once
  `relearn_share` x sessions learning events (steps begun, sessions ended) have passed
  since the last full rebuild.

Class keys. Most re-keys are a paused session crossing a grid point, and a paused
session's key is a function of a few things it shares with a *class* of sessions (its
workflow, tool, size, hint...) and of its grid point. A policy's `_timed_base` gives, with
the key, the session's class signature and its *timed record*; the index remembers the
class's key at that grid point and re-keys the session itself when its deadline passes and
its class has a key at its new grid point (no Python call per session: in C++ on the C++
core), and the policy's `_memo` shares the expensive part among a class's sessions when
Python keys (a relearning's full re-key). Where the key is a known function of the grid
point, the record gives the class's *formula* instead (saga's score, ttl's and graph's
log-normal pause model: session_heap.py modes 2-4), so the index re-keys the session at
every grid point, not only at those its class's table holds; after the statistics change,
Python keys one session of each class to bring its formula back, not one per class and
grid point. Both hold keys computed from the statistics the
policy's `_keys_token` names, and are forgotten when it changes, so a session's key is the
one Python would compute at that moment: the victims do not change
(tests/policy/test_timed_rekey.py).

Re-keying many sessions at once (a full re-key: relearning, a change of `_global_state`; or
the many due sessions of an expert of `adaptive` that led no search for an epoch) goes by
class too (`_rekey_by_class`, session_heap.py `rekey_classes`): the sessions whose own
state did not change keep their class's signature, so Python keys one session of each
class under the current statistics (which gives the class its new id and key) and the
index re-keys the others from it; only the sessions whose state changed, those without a
timed record and those the class's key does not cover go through Python one by one.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable, Iterable, Iterator
from itertools import islice
from typing import Any

# The elapsed-time grid and sticky levels (grid.py), read from here by the policies and tests.
from kvsaga.policy.grid import (  # noqa: F401
    _GRID_POINTS,
    _LOG_RATIO,
    GRID_RATIO,
    GRID_S,
    elapsed_grid,
    grid_index,
    grid_index_py,
    sticky_level,
)

Stream = Iterator[tuple[Any, int]]
# The class attributes a search reads (`VictimSearch`), copied onto each policy (groups.py).
SEARCH_FLAGS = ("indexed", "class_keys", "class_formulas", "_one_key", "_prepares",
                "_global_keys", "_tokens", "_states", "_timed")
_REKEY_ALL = object()  # a global state no policy has: the next search re-keys everyone

# Due sessions from this many on are re-keyed by class (`_rekey_by_class`), not each in
# Python: after an expert of adaptive led no search for an epoch, nearly all of them.
_BY_CLASS = 8


class VictimSearch:
    """The search half of `GroupedPolicy` (mixed into it): reads its block bookkeeping
    (`groups`, `dead`, `plain`, `_pos`, `views`) and index state (`_index`, `_base`,
    `_dirty`, `_global`, `_learned`, `_plan`), which `GroupedPolicy.__init__` and `bind`
    set up, and defines the hooks a policy gives its keys through (`_session_base`,
    `_entry_key`, `_plain_key`, `_dead_key`, `_prepare`, `_global_state`, `_keys_token`, or
    the last three as one, `_search_state`)."""

    _one_key = True  # one key per session (the default `_entry_key`): its tail's
    # Timed records with the keys (`_rekey`); False: Python keys every due session (with
    # `_memo` emptied too, the reference tests/policy/test_timed_rekey.py compares with).
    class_keys = True
    # With class keys, `_timed_base` may give its class's formula (session_heap.py modes 2-4:
    # the key at every grid point); False: only the key at the session's grid point (the
    # table; what tests/policy/test_key_formulas.py compares with).
    class_formulas = True

    # Whether the class gives its own `_prepare` / `_global_state` / `_keys_token`: a search
    # skips the call of a default that does nothing (each Python call costs a search between
    # two steps its code's cache misses).
    _prepares = False
    _global_keys = False
    _tokens = False
    _states = False  # the class gives all three in one call, `_search_state`
    _timed = False  # the class gives `_timed_base` (its keys with timed records)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._one_key = cls._entry_key is VictimSearch._entry_key
        cls._prepares = cls._prepare is not VictimSearch._prepare
        cls._global_keys = cls._global_state is not VictimSearch._global_state
        cls._tokens = cls._keys_token is not VictimSearch._keys_token
        cls._states = cls._search_state is not VictimSearch._search_state
        cls._timed = hasattr(cls, "_timed_base")

    # -- victims ------------------------------------------------------------------------------
    def choose_victims(self, num_blocks: int, now: float, runs: bool = False
                       ) -> list[int] | None:
        # `_touch`, inline: each Python call on this path costs microseconds when a search
        # finds its code out of the CPU caches, as one between two steps does. `runs`:
        # `_index_victims`'s (the manager asks so when the policy `evicts_runs`).
        self._now = now
        self._ending = None
        if num_blocks <= 0:
            return []
        if self.indexed:
            return self._index_victims(num_blocks, now, runs)
        return self._scan_victims(num_blocks, now)

    def eviction_order(self, now: float | None = None) -> list[int]:
        """Every evictable block, first victim first (for tests and debugging)."""
        now = self._now if now is None else now
        if self.indexed:
            return self._index_victims(len(self.plain) + len(self.dead) + sum(
                len(g) for g in self.groups.values()), now)
        return self._scan_victims(None, now)

    def scan_order(self, now: float) -> list[int]:
        """Every evictable block in the order a full scan of every session's key gives: the
        reference that the index must reproduce (exactly so with `relearn_share=0`, on a
        clock that never steps back: KVCacheManager's `_time`)."""
        return self._scan_victims(None, now)

    def _scan_victims(self, num_blocks: int | None, now: float) -> list[int]:
        streams = self._streams(now)
        try:
            return [b for _, b in islice(heapq.merge(*streams), num_blocks)]
        finally:
            for s in streams:
                s.close()

    def _streams(self, now: float) -> list[Stream]:
        self._prepare(now)
        out = self._queue_streams(now)
        for sid, g in self.groups.items():
            out.append(self._session_stream(sid, g, now))
        return out

    def _queue_streams(self, now: float) -> list[Stream]:
        out: list[Stream] = []
        if len(self.dead):
            out.append(self._dead_stream(now))
        if len(self.plain):
            out.append(self._plain_stream(now))
        return out

    # -- the index ----------------------------------------------------------------------------
    def _index_victims(self, num_blocks: int, now: float, runs: bool = False
                       ) -> list[int] | None:
        """Merge the indexed sessions' tails with the dead and plain streams.

        Candidates: the index's top, `more` (the rest of sessions taken from in this call)
        and the head of each queue stream, compared by (key, tie-break). A session taken
        from keeps yielding its blocks while they stay below every other candidate: all of
        them at once when its keys never rise from tail to head (`_keys_nonincreasing`).

        First it re-keys the sessions whose key may have changed since the last search. The
        usual search (no full re-key, no dead or plain block) is this one Python call and one
        index call, `refresh_marked`: the drops, the keys Python computed for the sessions
        marked since, the time-driven re-keys, the runs and their victims (each Python call
        on this path costs a search between two steps its code's cache misses).
        With `runs`, a search whose victims are whole runs off tails answers None, its runs
        in `_runs` and no list of them made (the manager's C++ core evicts them:
        manager_evict.py); any other answer is the list, as without.
        """
        self._plan = None
        if self._states:
            state, token = self._search_state(now)
        else:  # (the defaults that do nothing are not called)
            if self._prepares:
                self._prepare(now)
            state = self._global_state(now) if self._global_keys else None
            token = self._keys_token() if self._tokens else None
        # No dead or plain cache (the usual case): no stream to merge, and each session the
        # index's top names leaves whole, tail first, until the count is reached. (The
        # queues' sizes read without a `len()` call each.)
        whole = not (len(self.dead) or len(self.plain)) and (
            self._one_key or self._keys_nonincreasing())
        want = num_blocks if whole else -1
        listed = not (runs and whole)  # (else the runs alone: `refresh_marked_runs`)
        index = self._index
        relearn = (self._learned != self._learned_at_rebuild
                   and self._learned - self._learned_at_rebuild
                   > self.relearn_share * len(self.groups))
        # (the same token object, as a policy gives while its statistics hold: no compare)
        if token is not self._token and token != self._token:  # keys of other statistics
            self._token = token
            self._classes.clear()
            self._memo.clear()
            index.forget_keys()
            if len(self._sig_of) > 4 * len(self.groups) + 1024:  # (kept for `_rekey_everyone`)
                self._sig_of.clear()
        if state == self._global and not relearn:
            dirty, groups = self._dirty, self.groups
            # Keys of the marked sessions first, then the timers: a marked session's new
            # key makes its timer stale, so the index re-keys only the others, which gives
            # every session the key it had when the timers went first.
            # Python's state changes only once the call returned: if it raises, the marked
            # sessions stay marked (pushed again next search) and their bases and classes
            # stay, less the classes this keying gave. It may raise before the index changed
            # (a bad push) or after it applied the pushes (from its victims, `tail_victims`),
            # its table then holding keys of those classes: the table is forgotten (the
            # sessions it keyed come back to Python when due, as after new statistics).
            # The marks go as they are: `_keys` skips those without cached blocks, which the
            # index drops, from `_base` too (`refresh_marked`; set operations here cost a cold
            # search more: bench/RESULTS.md, "The marks' split in the index call").
            bases: dict[str, Any] = {}
            classes, known = self._classes, len(self._classes)
            try:
                pushes = self._keys(dirty, now, bases) if dirty else []
                due, self._runs, out = (
                    index.refresh_marked if listed else index.refresh_marked_runs)(
                    now, dirty, pushes, want, 2 * len(groups) + 64, groups, self._base)
            except BaseException:
                given = list(classes)[known:]  # the class ids this keying gave
                for sig in given:
                    self._sig_of.pop(classes.pop(sig), None)
                if given:  # the index may hold their keys: its table is forgotten
                    index.forget_keys()
                raise
            if bases:
                self._base.update(bases)
            dirty.clear()
            if due is not None:
                # Due sessions that only Python keys (their class's keys unknown, or past
                # its limit): many at once go by class (an idle expert's turn).
                if len(due) >= _BY_CLASS and self.class_keys:
                    due = self._rekey_by_class(due, now)
                self._drop_or_rekey(set(due), now)
                out = self._take_runs(want, listed)
        else:
            out = self._rekey_all_now(state, now, want, listed)
        if whole and not (self._one_key or self._keys_nonincreasing()):
            # Keying priced a position whose rebuild cost falls (graph's `_costs_rise`):
            # the runs taken go back, and the general search merges.
            index.restore()
            whole = False
        # The index keeps the sessions it names aside: eviction re-keys them; the next
        # search puts back those it did not (a caller that only asks, as `eviction_order`).
        if whole:
            # Its uncaching needs no work per block. (The victims as returned, not a copy:
            # the plan's runs are what its uncaching reads, and the caller evicts the list.)
            if listed:
                self._plan = (out, self._runs)
            return out
        out = []
        streams = self._queue_streams(now) if len(self.dead) or len(self.plain) else []
        try:
            self._merge_victims(num_blocks, streams, out)
        finally:
            for s in streams:
                s.close()
        return out

    def _merge_victims(self, num_blocks: int, streams: list[Stream], out: list[int]) -> None:
        """The general search: the index's top, `more` and the queue streams' heads."""
        index, groups, entry_key, base_of, pos = (
            self._index, self.groups, self._entry_key, self._base, self._pos)
        monotone = self._keys_nonincreasing()
        heads = [next(s, None) for s in streams]
        more: list[tuple[Any, int, str, int]] = []  # (key, tie, session, next entry)

        def best_other() -> tuple[tuple[Any, int] | None, int]:
            top = index.top()
            best, src = (top, -1) if top is not None else (None, 0)
            if more and (best is None or more[0][:2] < best):
                best, src = more[0][:2], -2
            for i, h in enumerate(heads):
                if h is not None and (best is None or h[0] < best):
                    best, src = h[0], i
            return best, src

        while len(out) < num_blocks:
            best, src = best_other()
            if best is None:
                break
            if src >= 0:
                out.append(heads[src][1])
                heads[src] = next(streams[src], None)
                continue
            if src == -1:
                sid, tie, k = index.pop(), best[1], 0
            else:
                _, tie, sid, k = heapq.heappop(more)
            g = groups[sid]
            out.append(g[k])
            if monotone:  # every later (key, tie) <= this one < every other candidate
                out.extend(g[k + 1:k + 1 + num_blocks - len(out)])
                continue
            base = base_of[sid]
            if base is None:  # last keyed by the index from its class's table (`_rekey`)
                base = index.base(sid)
            bound, _ = best_other()
            for j in range(k + 1, len(g)):
                if len(out) >= num_blocks:
                    break
                nb = g[j]
                key = entry_key(base, pos[nb])
                if bound is not None and not (key, tie) < bound:
                    heapq.heappush(more, (key, tie, sid, j))
                    break
                out.append(nb)

    def _rekey_all_now(self, state: Hashable, now: float, num_blocks: int,
                       victims: bool = True) -> list[int] | None:
        """`_index_victims`'s full re-key (relearning, a new `_global_state`): every session
        keyed again, by class where it can (`_rekey_everyone`); then, for `num_blocks` >= 0,
        the index's runs for that many blocks (into `_runs`) and their victims (`victims`)."""
        dirty = self._dirty
        learned_before = self._learned_at_rebuild
        self._global = state
        self._learned_at_rebuild = self._learned
        try:
            if self._rekey_everyone(now):
                self._drop_or_rekey(dirty, now)
                # one entry per session, as a cleared index keyed afresh holds
                self._index.compact()
            else:
                self._drop_or_rekey(dirty, now)
        except BaseException:
            # A keying or push that raised left some sessions keyed from the new statistics
            # and others still holding keys from the old ones (not marked, their class keys
            # forgotten): the next search re-keys every session again, as if this one had
            # not begun, so no session keeps a key the current statistics do not give.
            self._global = _REKEY_ALL
            self._learned_at_rebuild = learned_before
            raise
        dirty.clear()
        return self._take_runs(num_blocks, victims)

    def _take_runs(self, num_blocks: int, victims: bool = True) -> list[int] | None:
        """The end of a search after Python keyed sessions: put back what earlier searches took
        aside, then the index's runs for `num_blocks` (>= 0; into `_runs`) and, with
        `victims`, their victims (None without)."""
        index = self._index
        index.restore()
        if num_blocks < 0:
            return None
        self._runs = runs = index.runs(num_blocks)
        return index.tail_victims(self.groups, runs) if victims else None

    def _drop_or_rekey(self, sids: set[str], now: float) -> None:
        """Re-key those of `sids` that hold cached blocks; drop the others from the index."""
        live = sids & self.groups.keys()
        if len(live) < len(sids):
            for sid in sids - live:  # no cached block left (evicted, or hit)
                self._index.drop(sid)
                self._base.pop(sid, None)
        self._rekey(live, now)

    def _rekey_everyone(self, now: float) -> bool:
        """Make every session's key the one its state and the current statistics give:
        the sessions whose own state changed since the last search (`_dirty`) and those
        without a timed record are left in `_dirty` for Python; the others are re-keyed
        by the index from their class's key (`rekey_classes`), each class's being learned
        by keying one of its sessions in Python first when the statistics changed since it
        was computed (their class ids were forgotten with `_classes`), not all of them."""
        index, groups, classes = self._index, self.groups, self._classes
        own = self._dirty
        if not self.class_keys or not self._sig_of:
            index.clear()
            self._base.clear()
            own.update(groups)  # (in place: `_dirty` is one set for the policy's life)
            return False
        for sid in own:  # their class may have changed with their state: Python keys them
            index.drop(sid)
        own |= self._rekey_by_class(None, now)
        # Every timed record now carries a class of `classes` (or is keyed again below).
        self._sig_of = {c: sig for sig, c in classes.items()}
        return True

    def _rekey_by_class(self, among: Iterable[str] | None, now: float) -> set[str]:
        """Re-key the indexed sessions `among` names (None: all) whose own state did not
        change, class by class (session_heap.py `rekey_classes`): a class whose keys were
        forgotten (new statistics) is learned by keying one of its sessions in Python.
        The sessions left for Python to key."""
        index, groups, classes, sig_of = self._index, self.groups, self._classes, self._sig_of
        mapping: dict[int, int] = {}
        keyed: list[str] = []
        # By class id: the C++ index's order (a hash map's) is not the Python twin's, and the
        # order sets the new classes' ids and the versions, which the twins must agree on.
        for cls, sid in sorted(index.timed_classes(among).items()):
            sig = sig_of.get(cls)
            if sig is None:
                continue
            new = classes.get(sig)
            if new is None and sid in groups:  # forgotten: key one of the class in Python
                self._rekey((sid,), now)
                keyed.append(sid)
                new = classes.get(sig)
            if new is not None:
                mapping[cls] = new
        rest = index.rekey_classes(mapping, now, among)
        rest.difference_update(keyed)
        return rest

    def victim_runs(self) -> tuple[list[int], list[tuple[str, int]]] | None:
        """(victims, their runs (session, count)) of the last search when it took whole
        runs off session tails and the pool has not uncached them yet; None otherwise."""
        return self._plan

    def expect_runs(self, plan: tuple[list[int], list[tuple[str, int]]] | None) -> None:
        """The pool is about to uncache another policy's victims, whose runs `plan` gives
        (`victim_runs` of the policy that named them, as adaptive's leader): their uncaching
        takes its runs from it instead of reading every victim's owner mark. Each run is
        still checked to be its group's tail; a plan that does not fit is ignored."""
        self._plan = plan

    def rekey_all(self) -> None:
        """Make the next search re-key every session, as relearning does (what
        `bench/allocator.py --eviction-scaling` times to amortize it), with the class keys
        forgotten as new statistics forget them (relearning follows learning)."""
        self._global = _REKEY_ALL
        self._token = _REKEY_ALL

    def _rekey(self, sids: Iterable[str], now: float) -> None:
        """Key sessions that hold cached blocks, in the index (`_keys`, then a push each)."""
        push = self._index.push
        for sid, key, tie, size, until, timed in self._keys(sids, now):
            push(sid, key, tie, size, until, now, timed)

    def _keys(self, sids: Iterable[str], now: float,
              base_of: dict[str, Any] | None = None) -> list[tuple]:
        """The index's pushes (sid, key, tail block, size, until, timed) that key the
        sessions of `sids` holding cached blocks (the others are skipped), judged at `now`
        (one loop for all of them: a relearning re-keys every session). With `_timed_base`,
        each key goes with its timed record (session_heap.py), so that the index re-keys the
        session itself at its next grid points while its class's keys are known; its base
        is then asked of the index (None in `_base`). The key was judged at `now`, so it
        next changes after it: the index fires a deadline that rounding put at or before
        `now` at the next search after it. The bases go into `base_of` (default `_base`;
        `_index_victims` passes its own, kept only once the index accepted the pushes)."""
        groups, pos = self.groups, self._pos
        if base_of is None:
            base_of = self._base
        out: list[tuple] = []
        # One key per session (the default `_entry_key`): the session's key is its tail's.
        entry_key = None if self._one_key else self._entry_key
        # (a class attribute read, not a `getattr` call: each call's generic path costs a
        # search between two steps its misses)
        timed_base = self._timed_base if self._timed and self.class_keys else None
        if timed_base is None:
            session_base = self._session_base
            for sid in sids:
                g = groups.get(sid)
                if g is None:  # no cached block left (the index drops it: `refresh_marked`)
                    continue
                base, until = session_base(sid, g, now)
                base_of[sid] = base
                b = g[0]
                out.append((sid, base if entry_key is None else entry_key(base, pos[b]), b,
                            len(g), until, None))
            return out
        classes, new_class = self._classes, self._class_ids.__next__
        for sid in sids:
            g = groups.get(sid)
            if g is None:
                continue
            base, until, rec = timed_base(sid, g, now)
            b = g[0]
            key = base if entry_key is None else entry_key(base, pos[b])
            if rec is None:
                base_of[sid] = base
            else:
                base_of[sid] = None
                cls = classes.get(rec[0])
                if cls is None:
                    cls = classes[rec[0]] = new_class()
                    self._sig_of[cls] = rec[0]
                rec = (cls, *rec[1:])
            out.append((sid, key, b, len(g), until, rec))
        return out

    def _keys_token(self) -> Hashable:
        """What the keys of `_timed_base`'s classes are computed from besides the class
        and the grid point (the policy's statistics): when it changes, they are forgotten
        (default: nothing)."""
        return None

    def _global_state(self, now: float) -> Hashable:
        """What every session's key depends on besides its own state (default: nothing)."""
        return None

    def _search_state(self, now: float) -> tuple[Hashable, Hashable]:
        """`_prepare`, then (`_global_state`, `_keys_token`): what an indexed search reads
        first. A policy that has all three gives them in this one call instead (each Python
        call costs a search between two steps its code's cache misses)."""
        self._prepare(now)
        return self._global_state(now), self._keys_token()

    def elapsed_since(self, t0: float, now: float) -> tuple[float, float]:
        """(seconds since t0 as keys read them, when that next changes): rounded down to
        the grid when indexed, exact (and no deadline) for a scan-only policy."""
        e = now - t0
        e = 0.0 if e < 0.0 else e  # max(e, 0.0) without a call (keying runs it per session)
        if not self.indexed:
            return e, math.inf
        lo, hi = elapsed_grid(e)
        return lo, t0 + hi

    def _prepare(self, now: float) -> None:
        """Compute per-call constants before the streams are read."""

    def _dead_stream(self, now: float) -> Stream:
        for b in self.dead:
            yield (self._dead_key(b, now), b), b

    def _plain_stream(self, now: float) -> Stream:
        for b in self.plain:
            yield (self._plain_key(b, now), b), b

    def _session_stream(self, sid: str, group: list[int], now: float) -> Stream:
        base, _ = self._session_base(sid, group, now)
        entry_key, pos = self._entry_key, self._pos
        tie = group[0]  # one tie-break per session: tied sessions go one after another
        for b in group:  # tail first: the survivors stay a usable prefix
            yield (entry_key(base, pos[b]), tie), b

    def _session_base(self, sid: str, group: list[int], now: float
                      ) -> tuple[Any, float]:
        """(the session's key, the time by which it must be recomputed; inf: only on
        events)."""
        raise NotImplementedError

    def _entry_key(self, base: Any, position: int) -> Any:
        """The key of the session's block at `position` (default: the session's key)."""
        return base

    def _keys_nonincreasing(self) -> bool:
        """Whether, within a session, each block's key is <= the key of the block before
        it (tail first): the victim search then takes a session's blocks in bulk. True for
        the default `_entry_key` (one key per session)."""
        return type(self)._entry_key is VictimSearch._entry_key

    def _plain_key(self, block_id: int, now: float) -> Any:
        raise NotImplementedError

    def _dead_key(self, block_id: int, now: float) -> Any:
        raise NotImplementedError
