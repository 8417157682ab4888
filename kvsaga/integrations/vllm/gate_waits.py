"""The session gate's waiting sessions: how long the sessions it defers have waited, what
that wait buys them (the admission reason "waited"), and what ends a wait (an admission, a
ride-along, an abort of the waiting request).

A mixin of `SessionGate` (gate.py), split from it by concept. It reads and writes the gate's
waiting tables, `_waiting_since` (deferred session -> its first deferral) and
`_withdrawn_waits` (the first deferrals kept for resends), which `SessionGate.__init__` sets
up and `admit` / `forget` also touch, counts into `wait_s`, and takes waiting sessions out of
the gate's `order` (`gate_order.WaitingOrder`). `_reserve_paid` reads the gate's parameters
and its `_total_with`.

Reserved growth gives way (`reserve_wait_factor`, default 2): a session that fits beside
the admitted sessions' contexts as they stand, but not beside their reserved growth, is
admitted once the sessions waiting have together waited `reserve_wait_factor` x the
recompute of its own context (its tokens x the connector's fitted seconds per token): the
reservation insures it against a later demotion, which costs that recompute at most,
while every waiting session pays for it. On bench/vllm_scheduler_replay.py's workload
calibrated to the published 38% rebuild share (10 sessions, KV 15% of the working set,
0.025 s per step + 0.65 ms per token) the reservation was what shrank the gate's batches:
on fit seeds 0-4 with advance hints the gate ran 1,800-2,861 steps against plain vLLM's
1,065-1,574 and reached 0.92-1.25x plain vLLM's mean TCT; with the rule 1.12-1.30x, and
1.10-1.26x with session-only hints (1.04-1.33x before). The factor was chosen there, on
fit seeds 0-4 only, by the highest worst seed over both hint modes: 0.5 / 1 / 2 gave
1.06 / 1.03 / 1.10x (the reservation dropped altogether, `horizon_steps` 0: 1.06x); these
and the 6-session figures next came from a driver not kept in the repository. On the
compute-bound 6-session workload (KV 25%, pauses x0.25) it lowers the worst fit seed:
seeds 0-4 1.44, 1.40, 1.39, 1.28, 1.33x -> 1.42, 1.16, 1.58, 1.20, 1.37x (geometric
mean 1.37x -> 1.34x). Releasing a paused session's retained context for a waiting one
once the wait outgrew that context's recompute was tried first and lost (fit medians
1.05x / 1.10x against 1.10x / 1.10x): the demoted session, back from its pause, waits in
turn and then recomputes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvsaga.integrations.vllm.gate_sessions import Admitted as _Admitted

class WaitTable(dict):
    """Deferred session -> its first deferral (a dict), which also keeps the sum of those
    first deferrals, so that the sessions' total wait at `now` (`waited`) costs O(1): summed
    at every probe, a step of vLLM's (which asks about every waiting request) cost O(W^2)
    in the W waiting sessions (review s51, vgate finding 1: 2.9 s a step at W = 5,000).
    The sum is kept in integer nanoseconds, so an entry's add and remove cancel exactly
    and it never drifts. It is exact in nanoseconds, not equal to the float sum of the
    waits that it replaced: each time is rounded to the nanosecond, so the two can differ
    by up to about n/2 ns for n entries, and a wait within that of the reservation rule's
    threshold can decide the other way (0.3 - 0.1 is 0.19999999999999998 in floats, 0.2
    here, which meets a threshold of 0.2). Only the writes the gate makes are supported
    (`__setitem__`, `setdefault`, `pop`, `__delitem__`, `clear`); the others raise.
    Pickles and copies as its items (`__reduce__`): unpickling a dict subclass restores
    the items through `__setitem__` before the attributes, so `total_ns` would be missing."""

    def __init__(self) -> None:
        super().__init__()
        self.total_ns = 0  # sum of the entries' round(first deferral x 1e9)

    def __setitem__(self, sid: str, since: float) -> None:
        self.pop(sid, None)
        super().__setitem__(sid, since)
        self.total_ns += _ns(since)

    def setdefault(self, sid: str, since: float) -> float:  # type: ignore[override]
        if sid not in self:
            self[sid] = since
        return self[sid]

    def pop(self, sid: str, *default: float | None) -> float | None:  # type: ignore[override]
        if sid in self:
            since = super().pop(sid)
            self.total_ns -= _ns(since)
            return since
        if default:
            return default[0]
        raise KeyError(sid)

    def __delitem__(self, sid: str) -> None:
        self.pop(sid)

    def clear(self) -> None:
        super().clear()
        self.total_ns = 0

    def _unsupported(self, *args: object, **kwargs: object) -> None:
        raise TypeError("WaitTable keeps a running sum: use item assignment, setdefault, "
                        "pop or del")

    update = popitem = __ior__ = _unsupported  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return _wait_table, (dict(self),)

    def waited(self, now: float) -> float:
        """Seconds the sessions in the table have waited, together, at `now`."""
        return (len(self) * _ns(now) - self.total_ns) / 1e9


def _ns(t: float) -> int:
    return round(t * 1e9)


def _wait_table(items: dict[str, float]) -> WaitTable:
    """A WaitTable of `items` (unpickling, `WaitTable.__reduce__`)."""
    table = WaitTable()
    for sid, since in items.items():
        table[sid] = since
    return table


# How many deferred sessions whose waiting request was aborted (say, on a client's timeout,
# to be resent) keep their first deferral for the resend (`GateWaits._withdraw_wait`): the
# latest.
WITHDRAWN_WAITS_TRACKED = 4096


class GateWaits:
    """The waits of the sessions the gate defers (see the module docstring)."""

    def _reserve_paid(self, new: _Admitted, now: float, token_s: float | None) -> bool:
        """Whether `new` goes ahead although the admitted sessions' reserved growth leaves
        no room for it: it fits, with `reserve_fit_steps` steps of its growth, beside their
        contexts as they stand (the shrink's test: admitting it demotes nobody now), and the
        sessions waiting (it among them) have together waited `reserve_wait_factor` x what
        recomputing `new`'s own context would cost (`token_s` a token).

        Why: growth is reserved so that a session admitted now is not demoted at a later
        finish, when the contexts have grown, and its context recomputed. That insurance is
        worth at most that recompute; what it costs is the wait of every session held back
        for growth that has not happened yet (their steps then run later, alone, in smaller
        batches). Once the wait has cost more, the reservation gives way.

        A fit of zero seconds a token (`StepCost.fit` clamps its slope at 0) prices no
        recompute, so the rule would fire at every probe: it needs `token_s` > 0."""
        if self.reserve_wait_factor is None or token_s is None or token_s <= 0:
            return False
        waited = self._waiting_since.waited(now)
        recompute_s = token_s * max(new.context - new.shared, 0)
        return (waited >= self.reserve_wait_factor * recompute_s
                and self._total_with(new, self.reserve_fit_steps, self.shrink_horizon_steps)
                <= self.capacity)

    def _admissible_anyway(self, since: float, now: float) -> bool:
        """Whether a session waiting since `since` is admissible whatever else is admitted:
        the batch has idled `idle_admit_s`, or it waited `max_wait_s` (`_reason`): it
        never yields (`_yields`), since nothing admitted ahead of it changes that."""
        return ((self._idle_since is not None and now - self._idle_since >= self.idle_admit_s)
                or now - since >= self.max_wait_s)

    def rode_along(self, sid: str, now: float) -> None:
        """A step the gate deferred goes ahead anyway, unretained (the connector's
        best-effort ride-along): its wait ends now, and the session's next step starts a
        wait of its own if it is deferred (it is still not admitted)."""
        self._end_wait(sid, now)

    def _stop_waiting(self, sid: str) -> float | None:
        """Take `sid` out of the waiting sessions (`order` and `_waiting_since`); its first
        deferral, or None if it was not waiting."""
        self.order.waiting.pop(sid, None)
        return self._waiting_since.pop(sid, None)

    def _end_wait(self, sid: str, now: float) -> bool:
        """End `sid`'s wait, if it was waiting (counted in `wait_s`); whether it was."""
        since = self._stop_waiting(sid)
        if since is None:
            return False
        self.wait_s += now - since
        return True

    def _withdraw_wait(self, sid: str) -> None:
        """Deferred session `sid`'s waiting request was aborted before vLLM allocated it
        (say, its client timed out and will resend it). It no longer waits: it holds no one
        back (`gate_order`) and its wait leaves `_reserve_paid`'s sum (a stale wait there
        made every later session's reservation "paid"). Its first deferral is kept for a
        resend (`admit`), so that `max_wait_s` bounds its wait across resends, and the wait
        is counted in `wait_s` once it is admitted (the latest `WITHDRAWN_WAITS_TRACKED`
        are kept: one never resent is forgotten)."""
        since = self._stop_waiting(sid)
        if since is None:
            return
        self._withdrawn_waits[sid] = since
        if len(self._withdrawn_waits) > WITHDRAWN_WAITS_TRACKED:
            del self._withdrawn_waits[next(iter(self._withdrawn_waits))]
