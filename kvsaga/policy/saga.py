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

Our reading of what the description leaves open: a hint's `expected_s` stands in for p95;
`last_step` makes P_reuse = 0; ended sessions' blocks go before any entry, and plain (shared)
cache goes after every entry, by LRU; within an entry the tail goes first.
"""

from __future__ import annotations

from kvsaga.policy.aeg import NO_TOOL, ExecutionGraph, FeedsExecutionGraph
from kvsaga.policy.cost import CostModel
from kvsaga.policy.groups import GroupedPolicy, Stream
from kvsaga.policy.lognormal import EmaLogNormal

W_RECENCY, W_REUSE, W_SIZE = 0.3, 0.5, 0.2


class SagaPolicy(FeedsExecutionGraph, GroupedPolicy):
    """SAGA's scored, TTL-bounded workflow-aware LRU (see the module docstring).

    Args:
        cost: prices reloading for the offload decision (default: `PrefillCost`).
        alpha: EMA weight of each new tool latency.
        max_ttl_s: TTL cap.
        prior_median_s, prior_sigma: tool latency assumed before any observation.
        prior_steps: mean steps per session assumed before any session finished.
    """

    name = "saga"

    def __init__(
        self,
        cost: CostModel | None = None,
        alpha: float = 0.1,
        max_ttl_s: float = 300.0,
        prior_median_s: float = 1.0,
        prior_sigma: float = 1.0,
        prior_steps: float = 10.0,
    ) -> None:
        super().__init__(cost)
        self.alpha = alpha
        self.max_ttl_s = max_ttl_s
        self._prior = (prior_median_s, prior_sigma)
        self.latency: dict[str, EmaLogNormal] = {}
        self.all_latency = EmaLogNormal(alpha, *self._prior)
        self.graph = ExecutionGraph(prior_steps=prior_steps)  # for steps per session only
        self._keys: dict[str, tuple[int, float]] = {}

    # -- learning -----------------------------------------------------------------------------
    def step_started(self, session, now: float) -> None:
        super().step_started(session, now)
        resumed = self.graph.step_started(session.session_id, session.workflow, now)
        if resumed is not None:
            kind, gap = resumed
            lat = self.latency.get(kind)
            if lat is None:
                lat = self.latency[kind] = EmaLogNormal(self.alpha, *self._prior)
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
        """Every entry's (expired, score), as the next victim search will see them."""
        self._prepare(now)
        return {sid: (cls == 1, -neg) for sid, (cls, neg) in self._keys.items()}

    def _prepare(self, now: float) -> None:
        used = self.usage()
        idle = {sid: self.idle_s(sid, now) for sid in self.groups}
        max_idle = max(idle.values(), default=0.0)
        max_size = max((len(g) for g in self.groups.values()), default=0)
        keys = self._keys
        keys.clear()
        for sid, g in self.groups.items():
            v = self.views.get(sid)
            recency = idle[sid] / max_idle if max_idle > 0 else 0.0
            size = len(g) / max_size
            if v is None or v.needed_now:  # preempted: its retry is queued
                p, expired = 1.0, False
            else:
                p = 0.0 if v.hint.last_step else self.p_reuse(v.workflow)
                expired = idle[sid] > self.ttl_s(v.tool, used, v.hint.expected_s)
            score = W_RECENCY * recency + W_REUSE * (1.0 - p) + W_SIZE * size
            keys[sid] = (1 if expired else 2, -score)

    # -- keys: (class, -score); class 0 dead, 1 expired, 2 scored, 3 plain ----------------
    def _session_stream(self, sid: str, group: list[tuple[int, int]], now: float) -> Stream:
        key = self._keys[sid]
        for _, b in group:
            yield key, b

    def _plain_key(self, block_id: int, now: float) -> tuple[int, float]:
        return 3, self._cached_at[block_id]

    def _dead_key(self, block_id: int, now: float) -> tuple[int, float]:
        return 0, 0.0
