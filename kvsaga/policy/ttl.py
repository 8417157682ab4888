"""`ttl`: tool-call-aware time-to-live, priced as ski rental.

A paused session's retained blocks are a rent-or-buy decision. Keeping them costs rent:
`r` GPU seconds per block per second, the price of memory, which rises with pressure:

    r(u) = recompute_s(block_size, 0) / base_ttl_s / (1 - u),   u = min(usage, max_usage)

(`usage` = share of blocks held by running steps: the more of the pool the batch takes,
the dearer the rest). Dropping them costs the rebuild `C` = recompute_s of those blocks when
the session resumes. For a session holding `n` blocks, the break-even TTL is
`T = C / (n r)`: the time after which the rent paid equals one rebuild.

Rule. A session paused on tool `k` for `e` seconds is kept while e < T and

    V = P(resume within (e, T] | not yet) * C  -  n r * E[time held within (e, T] | not yet]

is positive: the expected rebuild saved by keeping it to T exceeds the expected rent. P and
the time held come from the learned pause distribution of `k` (an `ExecutionGraph`: a
log-normal per (workflow, tool), falling back per tool, per workflow, then globally; a cure
model for sessions that never come back). A hint `expected_s` replaces the distribution by a
point mass (until the tool is late), and `last_step` sets P = 0.

Victim order: ended sessions' blocks (`dead`), then released ones: sessions past their
break-even TTL or with V <= 0, and plain blocks idle past their own TTL (longest overdue
first: keyed by the time their value crossed zero, V / rent before the time of judging, so
that keys do not move with time), then live sessions (lowest V per block first), then the
rest of the plain cache by LRU. Tails before heads.

Indexed (`GroupedPolicy`): a session's key reads its elapsed pause rounded down to the
grid (`elapsed_grid`) and the pressure 1 / (1 - u) on a 2^(1/4) scale (`rent`); it is
recomputed at its next grid point, its TTL and the end of its hinted pause.

Bound. Per session the break-even rule alone is 2-competitive (deterministic ski rental):
resuming at tau < T costs the rent n r tau, which is the offline optimum min(n r tau, C);
resuming later costs n r T + C = 2C against the optimum C. The learned early release
(V <= 0 before T) never holds a session longer than T, so the rent paid stays <= C; it
releases early only when, under the fitted distribution, keeping to T costs more than it
saves in expectation, so its expected cost is at most the pure rule's when the fit is right
(a session that resumes right after an early release costs C against an optimum of ~0:
that is the price of acting on a prediction).
"""

from __future__ import annotations

import math

from kvsaga._validate import check_number
from kvsaga.policy import ttl_fast
from kvsaga.policy.aeg import NO_TOOL, ExecutionGraph, FeedsExecutionGraph
from kvsaga.policy.cost import CostModel
from kvsaga.policy.groups import GroupedPolicy, SessionView
from kvsaga.policy.search import GRID_RATIO, grid_index, sticky_level
from kvsaga.session import PauseHint


class TTLPolicy(FeedsExecutionGraph, GroupedPolicy):
    """Tool-call-aware time-to-live (see the module docstring for the rule and its bound).

    Args:
        cost: prices rebuilding (default: `PrefillCost`).
        graph: the pause statistics (default: a fresh `ExecutionGraph`); share one to
            warm-start from another policy's learning.
        base_ttl_s: break-even TTL of one head block when no step is running.
        max_usage: pressure cap, so the rent stays finite.
        relearn_share: see `GroupedPolicy`.
    """

    name = "ttl"
    indexed = True

    def __init__(
        self,
        cost: CostModel | None = None,
        graph: ExecutionGraph | None = None,
        base_ttl_s: float = 60.0,
        max_usage: float = 0.95,
        relearn_share: float = 0.125,
    ) -> None:
        super().__init__(cost, relearn_share)
        # (a str from JSON policy_args raised a TypeError naming neither, and an infinite
        # base_ttl_s passed)
        check_number("base_ttl_s", base_ttl_s, lambda v: v > 0, "> 0")
        check_number("max_usage", max_usage, lambda v: 0 <= v < 1, "in [0, 1)")
        self.graph = graph if graph is not None else ExecutionGraph()
        self.base_ttl_s = base_ttl_s
        self.max_usage = max_usage
        self._rent = 0.0
        self._pressure = 0  # level of 1 / (1 - usage) on the 2^(1/4) scale
        self._rent_usage = -1.0  # the usage `rent` last priced, and its answer
        self._rent_last = 0.0
        self._token_now: tuple = (None, None)  # `_search_state`'s last token
        self._group_costs: dict[tuple[int, int], float] = {}  # (blocks, head position) -> s
        # The usual search in one function (ttl_fast.py), counted.
        ttl_fast.enable(self, TTLPolicy)

    def bind(self, view) -> None:
        super().bind(view)
        self._group_costs.clear()  # priced at the view's block size

    # -- learning -----------------------------------------------------------------------------
    def step_started(self, session, now: float) -> None:
        super().step_started(session, now)
        self.graph.step_started(session.session_id, session.workflow, now)

    def session_deferred(self, session, deferred: bool, now: float) -> None:
        """The scheduler demoted the paused session: its next step waits for admission
        behind the admitted sessions, so its pause says nothing about when its blocks are
        read again. They are released (judged as a session that does not come back: before
        every live session's) until its tool returns (then they are needed soon: it is
        first in its tenant's queue) or its next step starts. Re-admission (`deferred`
        False) needs nothing: the step has started, and its next pause is judged afresh."""
        if not deferred:
            return
        self._touch(now)
        v = self._touched_view(session)
        if not v.running:
            v.hint = PauseHint(tool=v.tool, last_step=True)

    choose_victims = ttl_fast.choose_victims

    # -- pricing ------------------------------------------------------------------------------
    def rent(self) -> float:
        """GPU seconds per block per second that holding memory costs now.

        The pressure factor 1 / (1 - u) is read on a 2^(1/4) scale that moves only once it
        changed by a whole step (`sticky_level`), so every key changes only then."""
        u, top = self.usage(), self.max_usage
        u = top if top < u else u  # min(): the same float, without the builtin's generic call
        if u != self._rent_usage:  # the same usage gives the same level: keep the last rent
            self._rent_usage = u
            self._pressure = sticky_level(1.0 / (1.0 - u), self._pressure, GRID_RATIO)
            self._rent_last = self.block_cost(0) / self.base_ttl_s * GRID_RATIO**self._pressure
        return self._rent_last

    def _prepare(self, now: float) -> None:
        self._search_state(now)

    def _search_state(self, now: float) -> tuple[float, tuple[int, float]]:
        """The rent now (`_prepare`), which is every key's global state, and what the class
        keys are computed from (the graph's statistics and the rent), in one call."""
        self._rent = rent = self.rent()
        # The token: the same tuple while the graph's version and the rent hold (two number
        # compares here; the search then skips comparing it: search.py `_index_victims`).
        token, version = self._token_now, self.graph.version
        if token[0] != version or token[1] != rent:
            token = self._token_now = (version, rent)
        return rent, token

    def session_value(self, session_id: str, now: float) -> tuple[bool, float, float]:
        """Judge a session's retained blocks now.

        Returns:
            (expired, V per block, break-even TTL in seconds); (False, 0, inf) when it
            holds no cached block.
        """
        self._prepare(now)
        g = self.groups.get(session_id)
        if not g:
            return False, 0.0, math.inf
        view = self.views.get(session_id)
        e = max(now - view.paused_at, 0.0) if view is not None else 0.0
        cls, v, ttl = self._value(session_id, view, g, now, e)
        return cls == 1, v, ttl

    def _value(self, sid: str, view: SessionView | None, group: list[int], now: float,
               e: float) -> tuple[int, float, float]:
        """(class, V per block, break-even TTL) of session `sid` (its `view`, None when
        unknown) with the pause judged `e` seconds old."""
        n = len(group)
        # The rebuild price of (block count, head position), remembered: a full re-key
        # prices every session, and the same shapes recur.
        cost = self._shape_cost(n, self._pos[group[-1]])
        rent = n * self._rent
        ttl = cost / rent if rent > 0 else math.inf
        if view is None or view.needed_now:
            return 2, cost / n, ttl  # preempted: its retry needs these blocks right away
        if view.hint.last_step:
            return 1, -math.inf, ttl
        if now - view.paused_at >= ttl:
            return 1, -(now - view.paused_at - ttl) * self._rent, ttl
        p, held = self._resume_window(sid, view, group, e, ttl - e, now)
        v = p * cost - rent * held
        return (2 if v > 0 else 1), v / n, ttl

    def _resume_window(
        self,
        sid: str,
        view: SessionView,
        group: list[int],
        elapsed: float,
        window: float,
        now: float,
    ) -> tuple[float, float]:
        """(P(resume within the window), E[seconds held within it]), given no resume yet.
        A hinted pause counts until it is late (judged on the exact time)."""
        hint = view.hint
        if hint.expected_s is not None and now - view.paused_at < hint.expected_s:
            left = hint.expected_s - elapsed
            return (1.0, left) if left <= window else (0.0, window)
        return self.graph.resume_window(view.workflow, view.tool, elapsed, window)

    # -- keys: class 0 dead, (1, time released), (2, V per block) live, (3, time) plain -----
    def _session_base(self, sid: str, group: list[int], now: float
                      ) -> tuple[tuple[int, float], float]:
        return self._timed_base(sid, group, now)[:2]

    def _timed_base(self, sid: str, group: list[int], now: float):
        """`_session_base` and, for a paused session before its TTL, its timed record
        (search.py `_rekey`): its key is then a function of its class (workflow, tool,
        blocks, head position, the hinted pause while it lasts; the rent is in
        `_search_state`'s token) and of the grid point of its pause, shared through `_memo`."""
        view = self.views.get(sid)
        paused_at = view.paused_at if view is not None else now
        d = now - paused_at
        if not self.indexed:  # (`elapsed_since`, which a scan-only subclass reads exactly)
            return (*self._key(sid, view, group, now, d, d if d > 0.0 else 0.0, math.inf,
                               self._value(sid, view, group, now, d if d > 0.0 else 0.0)), None)
        k, e, hi = grid_index(0.0 if d < 0.0 else d)
        if view is None or view.needed_now or view.hint.last_step:
            return (*self._key(sid, view, group, now, d, e, paused_at + hi,
                               self._value(sid, view, group, now, e)), None)
        x = view.hint.expected_s
        hinted = x is not None and d < x
        sig = (view.workflow, view.tool, len(group), self._pos[group[-1]], x if hinted else None)
        value = self._memo.get((sig, k))
        if value is None:
            value = self._value(sid, view, group, now, e)
            if d < value[2]:  # (past its TTL V reads the exact time: not shared)
                self._memo[sig, k] = value
        key, until = self._key(sid, view, group, now, d, e, paused_at + hi, value)
        ttl = value[2]
        if d >= ttl:
            return key, until, None
        extra, limit = paused_at + ttl, ttl
        if hinted:
            t = paused_at + x
            extra = t if t < extra else extra  # min() without a call: run per session
            limit = x if x < limit else limit
        if not hinted and self.class_formulas:  # its class's key at every grid point (mode 3)
            # (the memo's formula read here: `_formula` is a call only when it is new)
            f = self._memo.get(sig) or self._formula(sig, view, ttl)
            return key, until, (sig, k, key[0], f, 3, paused_at, limit, extra, 1.0)
        if key[0] == 2:
            return key, until, (sig, k, 2, key[1], 0, paused_at, limit, extra, 1.0)
        return key, until, (sig, k, 1, value[1] / self._rent, 1, paused_at, limit, extra, 1.0)

    def _shape_cost(self, n: int, head: int) -> float:
        """`group_cost` of a group of n blocks whose head sits at position `head`,
        remembered by shape (`_value` and `_formula` read it)."""
        shape = (n, head)
        cost = self._group_costs.get(shape)
        if cost is None:
            if len(self._group_costs) >= 65536:
                self._group_costs.clear()
            bs = self.block_size
            cost = self._group_costs[shape] = self.cost.recompute_s(n * bs, head * bs)
        return cost

    def _formula(self, sig: tuple, view: SessionView, ttl: float) -> tuple[float, ...]:
        """The numbers `_value` reads for an unhinted pause of class `sig` (mu, sigma, p0,
        cost, rent, n, r, ttl; timed_keys.py `ttl_window_key`), kept in `_memo` with the
        class keys (forgotten with them when the statistics or the rent change)."""
        f = self._memo.get(sig)
        if f is None:
            kind = NO_TOOL if view.tool is None else view.tool
            dist = self.graph.pause_dist(view.workflow, kind)
            n, head = sig[2], sig[3]
            f = self._memo[sig] = (dist.mu, dist.sigma,
                                   self.graph.resume_share(view.workflow, kind),
                                   self._shape_cost(n, head), n * self._rent, float(n),
                                   self._rent, ttl)
        return f

    def _key(self, sid: str, view: SessionView | None, group: list[int], now: float,
             d: float, e: float, until: float, value: tuple[int, float, float]
             ) -> tuple[tuple[int, float], float]:
        """(key, deadline) of a session `d` seconds into its pause, judged `e` seconds old
        (`until`: when that next changes), whose `_value` is `value`."""
        cls, v, ttl = value
        if view is None or view.needed_now or view.hint.last_step:
            return (cls, v), math.inf
        paused_at = view.paused_at
        if d >= ttl:
            return (1, paused_at + ttl), math.inf
        # Released early (V <= 0): keyed by when its value crossed zero, which time does not
        # move; V is judged at the grid point.
        key = (2, v) if cls == 2 else (1, paused_at + e + v / self._rent)
        t = paused_at + ttl
        until = t if t < until else until  # min(until, t) without a call: run per session
        x = view.hint.expected_s
        if x is not None and d < x:
            t = paused_at + x
            until = t if t < until else until
        return key, until

    def _plain_key(self, block_id: int, now: float) -> tuple[int, float]:
        cached_at = self._cached_at[block_id]
        rent = self._rent
        ttl = self.block_cost(self._pos[block_id]) / rent if rent > 0 else math.inf
        if now - cached_at >= ttl:
            return 1, cached_at + ttl
        return 3, cached_at

    def _dead_key(self, block_id: int, now: float) -> tuple[int, float]:
        return 0, 0.0
