"""`saga`: the seed paper's workflow-aware LRU with tool TTLs, as a baseline.

Written from the published description (SAGA, arXiv 2605.00528), not from its code. An
*entry* is a live session's retained context. Each entry is scored

    score = 0.3 * recency + 0.5 * (1 - P_reuse) + 0.2 * size

with recency = idle time / the largest idle time among entries, size = blocks / the largest
entry's blocks, and P_reuse = 1 - 1 / mean_steps(workflow): the continuation probability of a
linear-chain execution graph whose length is geometric with the workflow's mean number of
steps per session (learned from finished sessions). The highest score is evicted first.

Each entry has a TTL from the tool it waits on:

    TTL = min(p95(tool) * (1 - 0.5 m), 300 s),   m = clip((used - 0.7) / 0.2, 0, 1)

where `used` is the share of GPU blocks held by running steps (`CacheStats.usage`) and p95
comes from a per-tool log-normal whose mean and second moment of log latency are exponential
moving averages (alpha = 0.1): p95 = exp(mu + 1.645 sigma). Entries past their TTL go first.

Indexed (`GroupedPolicy`): the victim order reads idle times rounded down to the grid
(`elapsed_grid`), the largest idle time and the largest entry's size as powers of 2 that move
only once the value moved by 2x (`sticky_level`; recency and size are clipped to 1), and the
pressure m in steps of 1/8, so an entry's key changes only at its own grid points, its TTL,
its events, or when a normalizer moves (then every key is recomputed). `scores` gives the
exact published scores.

Our reading of what the description leaves open: a hint's `expected_s` stands in for p95;
`last_step` makes P_reuse = 0; ended sessions' blocks go before any entry, and plain (shared)
cache goes after every entry, by LRU; within an entry the tail goes first.
"""

from __future__ import annotations

import heapq
import math

from kvsaga._validate import check_number
from kvsaga.policy.aeg import NO_TOOL, ExecutionGraph, FeedsExecutionGraph
from kvsaga.policy.bounded import TRACKED_KINDS, touch
from kvsaga.policy.cost import CostModel
from kvsaga.policy.fast_search import evicts_runs
from kvsaga.policy.groups import GroupedPolicy
from kvsaga.policy.lognormal import EmaLogNormal
from kvsaga.policy.search import GRID_S, grid_index, sticky_level

_TTL_MEMO = 4096  # TTLs remembered at most (hinted ones have a key of their own each)

W_RECENCY, W_REUSE, W_SIZE = 0.3, 0.5, 0.2
# A sticky level L on the 2x scale stays while its input x is within one step of it
# (|log2 x - L| <= 1): certainly so for x in [_BAND_LO, _BAND_HI] * 2**L, a margin far
# above the rounding of the logarithms, so `sticky_level` is called only outside the band.
_BAND_LO, _BAND_HI = 0.5 * (1.0 + 1e-9), 2.0 * (1.0 - 1e-9)


class SagaPolicy(FeedsExecutionGraph, GroupedPolicy):
    """SAGA's scored, TTL-bounded workflow-aware LRU (see the module docstring).

    Args:
        cost: prices reloading for the offload decision (default: `PrefillCost`).
        alpha: EMA weight of each new tool latency.
        max_ttl_s: TTL cap.
        prior_median_s, prior_sigma: tool latency assumed before any observation.
        prior_steps: mean steps per session assumed before any session finished.
        relearn_share: see `GroupedPolicy`.
    """

    name = "saga"
    indexed = True

    def __init__(
        self,
        cost: CostModel | None = None,
        alpha: float = 0.1,
        max_ttl_s: float = 300.0,
        prior_median_s: float = 1.0,
        prior_sigma: float = 1.0,
        prior_steps: float = 10.0,
        relearn_share: float = 0.125,
    ) -> None:
        super().__init__(cost, relearn_share)
        # (unchecked, a str or NaN from JSON policy_args failed or went NaN in a later hook)
        check_number("alpha", alpha, lambda v: 0 < v <= 1, "in (0, 1]")
        for what, x in (("max_ttl_s", max_ttl_s), ("prior_median_s", prior_median_s),
                        ("prior_sigma", prior_sigma), ("prior_steps", prior_steps)):
            check_number(what, x, lambda v: v > 0, "> 0")
        self.alpha = alpha
        self.max_ttl_s = max_ttl_s
        self._prior = (prior_median_s, prior_sigma)
        self.latency: dict[str, EmaLogNormal] = {}
        self.all_latency = EmaLogNormal(alpha, *self._prior)
        self.graph = ExecutionGraph(prior_steps=prior_steps)  # for steps per session only
        self._pauses: list[tuple[float, str]] = []  # (paused at, sid): lazy min-heap
        self._size: dict[str, int] = {}  # each entry's blocks, as last seen
        self._size_count: dict[int, int] = {}
        self._max_size = 0
        self._levels = (0, 0)  # largest idle and largest size, on a 2x scale (sticky)
        self._norm = (0.0, 1.0, 1.0)  # (used, largest idle, largest size) as keys read them
        self._norm_usage = math.nan  # the usage `_norm` was computed at (nan: none yet)
        # P_reuse and TTLs as computed from the statistics of `_stats_at` (graph version,
        # latencies seen): see _search_reuse, _search_ttl.
        self._reuse_now: dict[str, float] = {}
        self._ttl_now: dict[tuple, float] = {}
        self._stats_at: tuple[int, int] = (-1, -1)
        # Classes whose expired twin the index was told (`_link_expiry`): class id -> twin's.
        self._expiring: dict[int, int] = {}
        # Its usual search's victims, whole runs off sessions' tails, evicted by the manager's
        # C++ core (fast_search.py `evicts_runs`; search.py `_index_victims` with `runs`).
        self.evicts_runs = evicts_runs(type(self), SagaPolicy.choose_victims)

    # -- learning -----------------------------------------------------------------------------
    def step_finished(self, session, now: float, hint) -> None:
        super().step_finished(session, now, hint)
        heap = self._pauses
        heapq.heappush(heap, (now, session.session_id))
        if len(heap) > 2 * len(self.views) + 1024:
            # Stale entries (pauses over) behind a long pause at the top would pile up: keep
            # the live ones only (the search's oldest live pause is the same).
            views = self.views
            heap[:] = [(t, sid) for t, sid in heap
                       if (v := views.get(sid)) is not None and v.paused_at == t]
            heapq.heapify(heap)

    def resume_withdrawn(self, session, now: float) -> None:
        """Its pause is live again: back in `_pauses` (a search while it ran or waited for
        its hinted step dropped it there; a first step's pause, from `now`, was never in)."""
        v = self.views.get(session.session_id)
        was = v is not None and v.needed_now
        super().resume_withdrawn(session, now)
        if was and not v.needed_now:
            heapq.heappush(self._pauses, (v.paused_at, session.session_id))

    def session_ended(self, session, now: float) -> None:
        super().session_ended(session, now)
        old = self._size.pop(session.session_id, 0)  # (the largest: `_search_state`)
        if old:
            c = self._size_count[old] - 1
            if c:
                self._size_count[old] = c
            else:
                del self._size_count[old]

    def step_started(self, session, now: float) -> None:
        super().step_started(session, now)
        resumed = self.graph.step_started(session.session_id, session.workflow, now)
        if resumed is not None:
            kind, gap = resumed
            # (the TRACKED_KINDS most recently resumed tools: kvsaga/policy/bounded.py)
            lat = touch(self.latency, kind, lambda: EmaLogNormal(self.alpha, *self._prior),
                        TRACKED_KINDS)
            lat.add(gap)
            self.all_latency.add(gap)

    # -- the published formulas ---------------------------------------------------------------
    def p95(self, tool: str | None) -> float:
        """p95 latency of a tool (falling back to all tools, then the prior)."""
        lat = self.latency.get(NO_TOOL if tool is None else tool)
        if lat is None or not lat.n:
            lat = self.all_latency
        return lat.p95()

    def ttl_s(self, tool: str | None, used: float, expected_s: float | None = None) -> float:
        """min(p95 * (1 - 0.5 m), max_ttl_s), m = clip((used - 0.7) / 0.2, 0, 1)."""
        m = min(max((used - 0.7) / 0.2, 0.0), 1.0)
        p95 = self.p95(tool) if expected_s is None else expected_s
        return min(p95 * (1.0 - 0.5 * m), self.max_ttl_s)

    def p_reuse(self, workflow: str) -> float:
        """1 - 1 / mean_steps: continuation probability of a geometric linear chain."""
        return max(1.0 - 1.0 / max(self.graph.mean_steps(workflow), 1.0), 0.0)

    def scores(self, now: float) -> dict[str, tuple[bool, float]]:
        """Every entry's (expired, score) by the exact published formulas (the victim
        order reads them with rounded times and normalizers: module docstring)."""
        used = self.usage()
        idle = {sid: self.idle_s(sid, now) for sid in self.groups}
        max_idle = max(idle.values(), default=0.0)
        max_size = max((len(g) for g in self.groups.values()), default=0)
        out = {}
        for sid, g in self.groups.items():
            recency = idle[sid] / max_idle if max_idle > 0 else 0.0
            expired, score = self._score(sid, idle[sid], recency, len(g) / max_size, used)
            out[sid] = (expired, score)
        return out

    def _score(self, sid: str, idle: float, recency: float, size: float, used: float,
               keying: bool = False) -> tuple[bool, float]:
        """(expired, score); `keying`: within a victim search, whose P_reuse and TTLs per
        workflow and tool are computed once (`_search_reuse`, `_search_ttl`)."""
        v = self.views.get(sid)
        if v is None or v.needed_now:  # preempted: its retry is queued
            p, expired = 1.0, False
        else:
            reuse, ttl_s = ((self._search_reuse, self._search_ttl) if keying
                            else (self.p_reuse, self.ttl_s))
            p = 0.0 if v.hint.last_step else reuse(v.workflow)
            expired = idle > ttl_s(v.tool, used, v.hint.expected_s)
        return expired, W_RECENCY * recency + W_REUSE * (1.0 - p) + W_SIZE * size

    def _search_reuse(self, workflow: str) -> float:
        """`p_reuse`, remembered until the statistics change (`_prepare`; nothing is learned
        during a search)."""
        p = self._reuse_now.get(workflow)
        if p is None:
            p = self._reuse_now[workflow] = self.p_reuse(workflow)
        return p

    def _search_ttl(self, tool: str | None, used: float, expected_s: float | None) -> float:
        """`ttl_s`, remembered until the statistics change (`_prepare`; `used` is part of
        the key)."""
        key = (tool, used, expected_s)
        ttl = self._ttl_now.get(key)
        if ttl is None:
            ttl = self._ttl_now[key] = self.ttl_s(tool, used, expected_s)
        return ttl

    # -- the index's normalizers --------------------------------------------------------------
    def _search_state(self, now: float) -> tuple[tuple[float, float, float], tuple]:
        """The normalizers now (`_norm`: every key's global state) and what the class keys are
        computed from (the graph's statistics, the normalizers, the latencies seen), in one
        call with no call of its own on the usual path (each Python call costs a search
        between two steps its code's cache misses; what that saved, measured, is in
        bench/RESULTS.md, "saga's search state without calls").

        The entries' sizes: `_size` as last seen, `_size_count` the sizes in use (count > 0),
        so the largest is found among the few distinct sizes; only the sessions marked since
        the last search (`_dirty`) can have changed size. The sticky levels
        (`sticky_level`) are computed only when their input left the band where the level
        certainly stays (`_BAND_LO`, `_BAND_HI`); the pressure only when the usage moved."""
        size, groups, counts = self._size, self.groups, self._size_count
        top = self._max_size
        for sid in self._dirty:
            g = groups.get(sid)
            n = len(g) if g is not None else 0
            old = size.get(sid, 0)
            if n == old:  # (setting an unchanged size changes nothing)
                continue
            if old:
                c = counts[old] - 1
                if c:
                    counts[old] = c
                else:
                    del counts[old]
            if n:
                size[sid] = n
                counts[n] = counts.get(n, 0) + 1
                if n > top:
                    top = n
            else:
                del size[sid]
        if top not in counts:  # (the largest size went: the largest of those left)
            top = max(counts, default=0)
        self._max_size = top
        # When the longest-paused live session paused: the heap's first live pause.
        heap, views = self._pauses, self.views
        oldest = None
        while heap:
            t, sid = heap[0]
            v = views.get(sid)
            if v is not None and not v.needed_now and v.paused_at == t:
                oldest = t
                break
            heapq.heappop(heap)  # that pause is over
        _, max_idle, max_size = self._norm
        idle_level, size_level = self._levels
        if oldest is not None:
            x = now - oldest
            if x >= GRID_S and not _BAND_LO * max_idle <= x <= _BAND_HI * max_idle:
                idle_level = sticky_level(x, idle_level, 2.0)
        if top and not _BAND_LO * max_size <= top <= _BAND_HI * max_size:
            size_level = sticky_level(top, size_level, 2.0)
        u = self.usage()
        if u != self._norm_usage or (idle_level, size_level) != self._levels:
            self._norm_usage = u
            self._levels = (idle_level, size_level)
            m = min(max((u - 0.7) / 0.2, 0.0), 1.0)
            self._norm = (0.7 + 0.2 * round(m * 8) / 8, 2.0**idle_level, 2.0**size_level)
        # What was learned since the last search counts: the graph's version moves with
        # every change mean_steps reads, and every latency seen adds to all_latency (the
        # same statistics the token below names). Unchanged, the last searches' answers hold,
        # and a cold search does not compute them again (each a few us of Python).
        stats = (self.graph.version, self.all_latency.n)
        if stats != self._stats_at or len(self._ttl_now) > _TTL_MEMO:
            self._stats_at = stats
            self._reuse_now.clear()
            self._ttl_now.clear()
        return self._norm, (stats[0], self._norm, stats[1])

    def _prepare(self, now: float) -> None:
        self._search_state(now)

    # -- keys: (class, -score); class 0 dead, 1 expired, 2 scored, 3 plain ----------------
    def _session_base(self, sid: str, group: list[int], now: float
                      ) -> tuple[tuple[int, float], float]:
        return self._timed_base(sid, group, now)[:2]

    def _timed_base(self, sid: str, group: list[int], now: float):
        """`_session_base` and, for a paused entry, its timed record (search.py `_rekey`):
        its score is then a function of its class (workflow, last step, size; the
        normalizers are in `_search_state`'s token) and of its idle time on the grid, which the
        record gives as a formula (session_heap.py's mode 2) and `_memo` shares; whether
        it expired reads the exact time (its TTL is the limit of an entry's record; an
        expired entry stays expired)."""
        used, max_idle, max_size = self._norm
        v = self.views.get(sid)
        if v is None or v.needed_now:
            exact, k, idle, until, sig = 0.0, -1, 0.0, math.inf, None
        else:
            exact = now - v.paused_at
            exact = 0.0 if exact < 0.0 else exact  # max(exact, 0.0) without a call
            k, idle, until = grid_index(exact)
            until += v.paused_at
            # (tool and hint fix its TTL, the limit of its record: a full re-key moves a
            # class's records to its new key together, session_heap.py `rekey_classes`)
            sig = (v.workflow, v.hint.last_step, len(group), v.tool, v.hint.expected_s)
        score = self._memo.get((sig, k)) if sig is not None else None
        if score is None:
            recency, size = idle / max_idle, len(group) / max_size  # each clipped to 1
            expired, score = self._score(sid, exact, 1.0 if recency > 1.0 else recency,
                                         1.0 if size > 1.0 else size, used, keying=True)
            if sig is not None:
                self._memo[sig, k] = score
        if sig is None:
            return (1 if expired else 2, -score), until, None
        # `_score`'s sum, as (W_RECENCY * recency + a) + b
        # (`_search_reuse` and `_search_ttl`, their remembered answers read here without a
        # call: the usual case, a call each on a cold search costing its code's misses)
        size = len(group) / max_size
        hint = v.hint
        if hint.last_step:
            p = 0.0
        else:
            p = self._reuse_now.get(v.workflow)
            if p is None:
                p = self._search_reuse(v.workflow)
        formula = (W_RECENCY, max_idle, W_REUSE * (1.0 - p), W_SIZE * (1.0 if size > 1.0
                                                                         else size))
        ttl = self._ttl_now.get((v.tool, used, hint.expected_s))
        if ttl is None:
            ttl = self._search_ttl(v.tool, used, hint.expected_s)
        if exact > ttl:  # (`_score`'s test) expired: for good, keyed by its score alone
            return (1, -score), until, ((*sig, True), k, 1, formula, 2, v.paused_at, math.inf,
                                        math.inf, 1.0)
        # When the entry expires: the first clock value with now - paused_at > ttl
        # (timed_keys.py `first_past`, inline: run per keyed entry)
        t = v.paused_at + ttl
        if not t - v.paused_at > ttl:
            t = math.nextafter(t, math.inf)
        until = t if t < until else until  # min(until, t)
        if not ttl >= 0.0:  # (a negative hint: the limit below would not say "not expired")
            return (2, -score), until, None
        # Not expired while the idle time (clamped at 0) is <= ttl: below nextafter(ttl).
        live = (*sig, False)
        cls = self._classes.get(live)
        if cls is None or cls not in self._expiring:
            self._link_expiry(live)
        return (2, -score), until, (live, k, 2, formula, 2, v.paused_at,
                                    math.nextafter(ttl, math.inf), t, 1.0)

    def _link_expiry(self, live: tuple) -> None:
        """Tell the index that a record of the class of signature `live` (an entry before its
        TTL) moves past its limit to a class of its own for the expired twin signature
        (session_heap.py `expire_into`): an entry crossing its TTL is then re-keyed by the
        index, its score in class 1, not handed back to Python (issue 11: crossings happen
        at a rate that grows with the paused entries; docs/policies.md, "Eviction cost,
        twenty-ninth session"); its key is the one `_timed_base` would give.

        The twin's id is a new one, not entered in `_classes` (only in `_sig_of`): a class
        there counts as learned under the current statistics, and `_rekey_by_class` would
        then move an expired class of earlier statistics into it without keying its latest
        paused session in Python, which is what tells whether the new TTL left it expired.
        Python's own expired keys get `_keys`'s id for that signature; both ids' keys are the
        same."""
        classes = self._classes
        cls = classes.get(live)
        if cls is None:
            cls = classes[live] = self._class_ids.__next__()
            self._sig_of[cls] = live
        twin = self._class_ids.__next__()
        self._sig_of[twin] = (*live[:-1], True)
        if len(self._expiring) > _TTL_MEMO:
            self._expiring.clear()
        expire_into = getattr(self._index, "expire_into", None)
        if expire_into is not None:  # (a C++ index built before it: crossings go to Python)
            expire_into(cls, twin)
        self._expiring[cls] = twin

    def _rekey_everyone(self, now: float) -> bool:
        """search.py's, then the expired twins (`_link_expiry`) of the classes it kept named
        again in `_sig_of`, which it rebuilds from `_classes` alone: the next full re-key
        then moves their entries by class too, not one by one in Python."""
        out = super()._rekey_everyone(now)
        sig_of = self._sig_of
        for cls, twin in self._expiring.items():
            sig = sig_of.get(cls)
            if sig is not None:
                sig_of[twin] = (*sig[:-1], True)
        return out

    def _plain_key(self, block_id: int, now: float) -> tuple[int, float]:
        return 3, self._cached_at[block_id]

    def _dead_key(self, block_id: int, now: float) -> tuple[int, float]:
        return 0, 0.0
