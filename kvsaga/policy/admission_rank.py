"""When a demoted session is admitted again, read from the scheduler's own order (`graph`'s
`admission_rank`, opt-in).

A demoted session's blocks are read when the workflow scheduler admits its waiting step
again, and which demoted session is admitted first is the admission order's choice
(kvsaga/scheduler/admission_order.py), which `graph`'s forecast of the demotion's length
cannot see: on the fit seeds that forecast had no rank skill on swe (Spearman -0.26..+0.07;
bench/RESULTS.md, "Eviction policies: graph's demoted sessions on the swe family"). The
scheduler tells the policy each waiting demoted step's place in its tenant's queue
(`EvictionPolicy.session_admission_rank`: `rank` steps go before it), on change only.

`AdmissionRanks` learns how long a place in the queue takes: every rank told to a session,
at time t with r steps ahead, is one observation of (admission time - t) seconds for r + 1
places, taken when the session's step starts. The seconds per place are the ratio of the
sums (per workflow, shrunk to the pooled ratio by `prior` places; a workflow past
`TRACKED_WORKFLOWS` reads the pooled one), and a demoted session with a waiting step at rank
r is expected back in (r + 1) x that. The result is mixed with graph's own forecast (the
`fallback`) with weight n / (n + prior), n the admissions observed: no data, graph as it
was; nothing fitted offline (`prior` is graph's `calib_prior`). The time is read at the
rank's tell, not counted down: keys change on events only (a rank told, an admission
learned), never with the clock. A demoted session whose step has not queued yet (its tool
still runs) has no rank and keeps graph's forecast.
"""

from __future__ import annotations

import math

from kvsaga.policy.returns import TRACKED_WORKFLOWS


class AdmissionRanks:
    """Each waiting demoted session's rank, and the learned seconds per place in the queue.

    Args:
        prior: pseudo-observations of the fallback (graph's own forecast) the estimate is
            mixed with, and places of the pooled rate a workflow's rate is shrunk to; a
            finite number > 0.
    """

    def __init__(self, prior: float) -> None:
        if not (isinstance(prior, (int, float)) and not isinstance(prior, bool)
                and math.isfinite(prior) and prior > 0):
            raise ValueError(f"prior must be a finite number > 0, got {prior!r}")
        self.prior = float(prior)
        self.rank: dict[str, int] = {}  # waiting demoted session -> its rank told last
        # Per session, since its ranks were first told: [tells, sum of their times, places].
        self._told: dict[str, list[float]] = {}
        # workflow (None: pooled) -> [admissions, seconds, places]; most recent last.
        self._sums: dict[str | None, list[float]] = {None: [0.0, 0.0, 0.0]}

    def waiting(self, sid: str) -> bool:
        return sid in self.rank

    def told(self, sid: str, rank: int | None, now: float) -> None:
        """The scheduler placed `sid`'s waiting step at `rank` (None: it left the queue
        without being admitted; what was told of it is dropped)."""
        if rank is None:
            self.forget(sid)
            return
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
            raise ValueError(f"rank must be an int >= 0 or None, got {rank!r}")
        self.rank[sid] = rank
        t = self._told.get(sid)
        if t is None:
            t = self._told[sid] = [0.0, 0.0, 0.0]
        t[0] += 1
        t[1] += now
        t[2] += rank + 1

    def admitted(self, sid: str, workflow: str | None, now: float) -> bool:
        """`sid`'s step started: learn its tells' delays; whether anything was learned."""
        self.rank.pop(sid, None)
        t = self._told.pop(sid, None)
        if t is None:
            return False
        seconds = max(t[0] * now - t[1], 0.0)
        for key in (None, workflow) if workflow is not None else (None,):
            s = self._sums.pop(key, None) or [0.0, 0.0, 0.0]
            s[0] += 1
            s[1] += seconds
            s[2] += t[2]
            self._sums[key] = s  # most recently updated last
        if len(self._sums) > TRACKED_WORKFLOWS + 1:
            oldest = next(k for k in self._sums if k is not None)
            del self._sums[oldest]
        return True

    def forget(self, sid: str) -> None:
        self.rank.pop(sid, None)
        self._told.pop(sid, None)

    def seconds_per_place(self, workflow: str | None) -> float | None:
        """The learned seconds per place in the queue (None: no admission seen yet)."""
        n, sec, places = self._sums[None]
        if not n:
            return None
        pooled = sec / places
        s = self._sums.get(workflow) if workflow is not None else None
        if s is None:
            return pooled
        return (s[1] + self.prior * pooled) / (s[2] + self.prior)

    def time(self, sid: str, workflow: str | None, fallback: float) -> float:
        """Expected seconds until demoted `sid`'s blocks are read: from its rank if its step
        waits (mixed with `fallback`, graph's forecast, by the admissions seen), else
        `fallback`."""
        r = self.rank.get(sid)
        per = None if r is None else self.seconds_per_place(workflow)
        if per is None:
            return fallback
        n = self._sums[None][0]
        w = n / (n + self.prior)
        return w * (r + 1) * per + (1.0 - w) * fallback
