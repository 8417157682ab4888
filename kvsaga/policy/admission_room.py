"""When a demoted session is admitted again, read from the room the scheduler lacks for it
(`graph`'s `admission_room`, opt-in).

A demoted session's blocks are read when the workflow scheduler admits its waiting step
again. On the fit seeds neither graph's forecast of the demotion's length, nor the time
demoted, nor the step's place in its tenant's queue had rank skill for when that happens
(Spearman about -0.4..+0.3; bench/RESULTS.md, "Eviction policies: graph's demoted sessions on
the swe family" and its subsections): a demoted step queues near the head, and what holds it
back is room. The scheduler tells the policy that room (`EvictionPolicy.session_admission_room`,
`AdmissionOrder.room_deficit`: the blocks that must free before its working-set gate and
the pool take the step; <= 0: it fits now), measured when the queues change and again at
admission attempts where the cache, the free blocks or the running steps changed, told on
change only (`AdmissionOrder._refresh_rooms`; before it, a snapshot of the last queue change
only). At the first tell, that deficit ranks the time to the step's start at Spearman
+0.50..+0.76 on six fit cases (`python bench/policies_demoted.py`); the later tells the
pricing reads were not tested for skill.

`AdmissionRooms` learns the time it takes: every deficit d told to a session at time t is
one observation (d, admission time - t), taken when the session's step starts. A least-squares
line of seconds on blocks, per workflow (its means shrunk to the pooled means, its slope to
the pooled slope, that to 0, each by `prior` pseudo-observations; a workflow past
`TRACKED_WORKFLOWS` reads the pooled one) prices a demoted session whose step waits with
deficit d at mean seconds + slope x (d - mean deficit), at least 0. The result is mixed with
graph's own forecast (the `fallback`) with weight n / (n + prior), n the admissions observed:
no data, graph as it was; nothing fitted offline (`prior` is graph's `calib_prior`). The time
is read at the tell, not counted down (keys change on events only). A demoted session whose
step has not queued yet (its tool still runs) has no deficit and keeps graph's forecast.
Seconds, not log seconds: a step admitted at the very attempt that told it has waited 0 s,
which a log would have to floor at an arbitrary constant.

`graph`'s `paused_room` (opt-in) reads a second `AdmissionRooms` (`keep`) the same way for
demoted sessions still paused on their tool (no step queued): the scheduler tells the room
their next step would lack were it queued now (`EvictionPolicy.session_paused_room`,
`AdmissionOrder.paused_room_deficit`), which ranks the time to that step's start at
Spearman +0.15..+0.48 on six fit cases where graph's forecast ranks it at -0.27..+0.11
(`python bench/policies_demoted_paused.py`, "told now"). Its tells are learned at the step's
start even though the step queued in between (then None is told: the pricing stops).
"""

from __future__ import annotations

import math

from kvsaga.policy.returns import TRACKED_WORKFLOWS

MAX_TELLS = 32  # per waiting session, the most recent tells kept as observations


def check_prior(prior: object) -> float:
    if not (isinstance(prior, (int, float)) and not isinstance(prior, bool)
            and math.isfinite(prior) and prior > 0):
        raise ValueError(f"prior must be a finite number > 0, got {prior!r}")
    return float(prior)


class AdmissionRooms:
    """Each waiting demoted session's room deficit, and the learned seconds it takes.

    Args:
        prior: pseudo-observations of the fallback (graph's own forecast) the estimate is
            mixed with, and of the pooled line (or of slope 0) each line is shrunk to; a
            finite number > 0.
        keep: a None told stops the pricing but keeps the tells to learn at the step's
            start (`paused_room`, where None means the step queued); else drops them.
    """

    def __init__(self, prior: float, keep: bool = False) -> None:
        self.prior = check_prior(prior)
        self.keep = keep  # a None told keeps the tells, to be learned at the step's start
        self.room: dict[str, int] = {}  # waiting demoted session -> its deficit told last
        self._told: dict[str, list[tuple[int, float]]] = {}  # its tells: (deficit, when)
        # workflow (None: pooled) -> [n, sum x, sum y, sum xx, sum xy], x blocks, y seconds;
        # most recently updated last.
        self._sums: dict[str | None, list[float]] = {None: [0.0] * 5}
        self.admissions = 0  # sessions whose tells were learned

    def waiting(self, sid: str) -> bool:
        return sid in self.room

    def told(self, sid: str, blocks: int | None, now: float) -> None:
        """The scheduler measured `sid`'s waiting step `blocks` short of room (None: it left
        the queue without being admitted; what was told of it is dropped, or with `keep`
        (`paused_room`: its step queued) only no longer prices it)."""
        if blocks is None:
            if self.keep:
                self.room.pop(sid, None)
            else:
                self.forget(sid)
            return
        if isinstance(blocks, bool) or not isinstance(blocks, int):
            raise ValueError(f"blocks must be an int or None, got {blocks!r}")
        self.room[sid] = blocks
        t = self._told.setdefault(sid, [])
        t.append((blocks, now))
        if len(t) > MAX_TELLS:
            del t[0]

    def admitted(self, sid: str, workflow: str | None, now: float) -> bool:
        """`sid`'s step started: learn its tells' delays; whether anything was learned."""
        self.room.pop(sid, None)
        tells = self._told.pop(sid, None)
        if not tells:
            return False
        for key in (None, workflow) if workflow is not None else (None,):
            s = self._sums.pop(key, None) or [0.0] * 5
            for x, at in tells:
                y = max(now - at, 0.0)
                s[0] += 1.0
                s[1] += x
                s[2] += y
                s[3] += x * x
                s[4] += x * y
            self._sums[key] = s
        if len(self._sums) > TRACKED_WORKFLOWS + 1:
            oldest = next(k for k in self._sums if k is not None)
            del self._sums[oldest]
        self.admissions += 1
        return True

    def forget(self, sid: str) -> None:
        self.room.pop(sid, None)
        self._told.pop(sid, None)

    def _slope(self, s: list[float], toward: float) -> float:
        n, sx, sy, sxx, sxy = s
        vxx = sxx - sx * sx / n if n else 0.0
        if n <= 0 or vxx <= 1e-12 * n:
            return toward
        w = n / (n + self.prior)
        return w * ((sxy - sx * sy / n) / vxx) + (1.0 - w) * toward

    def line(self, workflow: str | None) -> tuple[float, float, float] | None:
        """(mean deficit, mean seconds, slope) of `workflow` (pooled if unseen), each
        shrunk as the module says; None before the first admission."""
        p = self._sums[None]
        if not p[0]:
            return None
        mx, my = p[1] / p[0], p[2] / p[0]
        b = self._slope(p, 0.0)
        s = self._sums.get(workflow) if workflow is not None else None
        if s is None:
            return mx, my, b
        k = self.prior
        return ((s[1] + k * mx) / (s[0] + k), (s[2] + k * my) / (s[0] + k),
                self._slope(s, b))

    def time(self, sid: str, workflow: str | None, fallback: float) -> float:
        """Expected seconds until demoted `sid`'s blocks are read: from its deficit if its
        step waits (mixed with `fallback`, graph's forecast, by the admissions seen), else
        `fallback`."""
        d = self.room.get(sid)
        fit = None if d is None else self.line(workflow)
        if fit is None:
            return fallback
        mx, my, b = fit
        w = self.admissions / (self.admissions + self.prior)
        return w * max(my + b * (d - mx), 0.0) + (1.0 - w) * fallback
