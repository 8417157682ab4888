"""The order in which `workflow` admits waiting sessions: first come first served within a
tenant ("fifo"), or by predicted remaining work with aging ("predicted",
`WorkflowScheduler(admission_order=...)`).

Why predicted remaining work: where memory bounds how many sessions run at once, the
sessions waiting for admission queue for memory, and the order that lowers the mean wait is
the one that frees memory soonest: the session holding the least memory for the shortest
time first. A session's remaining work is predicted as its expected remaining steps times
the context it holds over them (its context now plus half its expected growth over them),
in token-steps. The expected remaining steps are the mean residual length of the finished
sessions of its workflow longer than the steps it has done (learned online from the
sessions that end here, with one prior session of the Agent Execution Graph's mean
length), so a session near the typical end of its workflow goes before a new one. Only
signals that both the engine and the simulator have are read: the manager's step count of
the session, the request's context length, the scheduler's own growth and length tables.

Aging bounds the wait: the order key is ln(cost) + arrival / aging_s (cost clipped to
[1, `MAX_COST`]), so a session that was queued `aging_s` x ln(`MAX_COST`) seconds before
another goes ahead of it whatever their predictions, and every session eventually leads
its tenant's queue. That bounds queue order, not the wait itself: backfill
(`max_backfill`) still lets sessions that fit pass the head, and the sort replaces
`max_overtake`'s placement of demoted sessions. The key does not change with time, only
with events (a step's end updates the tables), so a refusal's time bound
(`refusal_until`) is unaffected. Lengths are learned from the steps this scheduler saw:
a session whose earlier steps ran on another replica (stolen, migrated) is learned as
shorter than it was (known; the session export does not carry its step count yet).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from kvsaga.scheduler.base import check_float

ADMISSION_ORDERS = ("fifo", "predicted")  # `WorkflowScheduler(admission_order=...)`
MAX_REMAINING_STEPS = 1000  # an expected remaining count is capped at this
MAX_COST = 1e12  # token-steps: a prediction is clipped to [1, MAX_COST] (the aging bound)


class SessionLengths:
    """Per workflow, how many finished sessions took each number of steps."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[int, int]] = {}

    def observe(self, workflow: str, steps: int) -> None:
        """A session of `workflow` ended after `steps` steps (>= 1)."""
        if steps < 1:
            raise ValueError(f"a finished session took at least one step, got {steps!r}")
        c = self.counts.setdefault(workflow, {})
        c[steps] = c.get(steps, 0) + 1

    def remaining(self, workflow: str, done: int, prior_steps: float) -> float:
        """Expected steps left (this next one included) of a session of `workflow` that
        has done `done` steps: the mean of n - done over the finished sessions with n > done,
        plus one prior session of `prior_steps` steps (at least done + 1), capped at
        `MAX_REMAINING_STEPS`."""
        num = max(prior_steps, done + 1.0) - done
        den = 1.0
        for n, m in self.counts.get(workflow, {}).items():
            if n > done:
                num += (n - done) * m
                den += m
        return min(num / den, MAX_REMAINING_STEPS)


def predicted_cost(remaining_steps: float, context_tokens: float, growth_tokens: float) -> float:
    """Token-steps a session is predicted to hold until it ends: each of its remaining steps
    holds its context, which grows by `growth_tokens` a step (half of the growth on
    average over them)."""
    return remaining_steps * (max(context_tokens, 0.0) + growth_tokens * remaining_steps / 2)


def order_key(cost: float, arrival: float, aging_s: float) -> float:
    """The admission key (smallest first): ln(cost) + arrival / aging_s, cost clipped to
    [1, MAX_COST]. Equal to ln(cost) - wait / aging_s up to a term every waiting session
    shares, so a session's priority grows with its wait."""
    return math.log(min(max(cost, 1.0), MAX_COST)) + arrival / aging_s


def sort_queue(queue: Any, cost: Callable[[Any], float], aging_s: float) -> None:
    """Reorder a deque of waiting requests by `order_key` (stable: ties keep their order)."""
    items = sorted(queue, key=lambda r: order_key(cost(r), r.arrival, aging_s))
    queue.clear()
    queue.extend(items)


class AdmissionOrder:
    """The "predicted" order's state in `WorkflowScheduler` (a mixin, split from it by
    concept): the session-length table it learns from finished sessions, each live
    session's steps so far, and when the waiting queues need sorting again. It reads the
    scheduler's `manager`, `_pending`, `_growth` and `_graph()`."""

    def _init_admission_order(self, order: str, aging_s: float) -> None:
        if order not in ADMISSION_ORDERS:
            raise ValueError(f"scheduler parameter admission_order must be one of "
                             f"{', '.join(ADMISSION_ORDERS)}, got {order!r}")
        aging_s = check_float("aging_s", aging_s, 0.0, strict=True)
        if math.isinf(aging_s):  # no aging: a session could wait forever
            raise ValueError("scheduler parameter aging_s must be finite, got inf")
        self.admission_order = order
        self.aging_s = aging_s
        self._lengths = SessionLengths()
        self._steps_seen: dict[str, int] = {}  # live sessions' steps, as of their last finish
        self._order_stale = False  # a queue or a table changed since the queues were sorted

    def _order_changed(self) -> None:
        self._order_stale = True

    def _sort_pending(self) -> None:
        """Sort each tenant's waiting sessions by predicted remaining work ("predicted"),
        if anything it reads changed since the last sort."""
        if self.admission_order == "fifo" or not self._order_stale:
            return
        self._order_stale = False
        for q in self._pending.values():
            sort_queue(q, self.remaining_cost, self.aging_s)

    def remaining_cost(self, req: Any) -> float:
        """Token-steps `req`'s session is predicted to hold until it ends (`predicted_cost`)."""
        s = self.manager.sessions.get(req.session_id)
        done = s.num_steps if s is not None else 0
        graph = self._graph()
        prior = graph.mean_steps(req.workflow) if graph is not None else done + 1.0
        left = self._lengths.remaining(req.workflow, done, prior)
        return predicted_cost(left, req.num_tokens, self._growth.mean(req.workflow))

    def _step_done(self, req: Any, ended: bool) -> None:
        """Count the finished step; at the session's end, learn its length."""
        sid = req.session_id
        if ended:
            self._lengths.observe(req.workflow, self._steps_seen.pop(sid, 0) + 1)
        else:
            s = self.manager.sessions.get(sid)
            if s is not None:
                self._steps_seen[sid] = s.num_steps
        self._order_stale = True

    def _session_left(self, sid: str) -> None:
        self._steps_seen.pop(sid, None)
