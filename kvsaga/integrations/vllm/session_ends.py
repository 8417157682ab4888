"""The connector's session ends: a session's last step, and the sessions its client
abandoned, swept by their pause.

A mixin of `KVSagaConnector` (connector.py), split from it by concept. It ends a session as
its last step would (`_end_session`: its retained blocks back, through `Retention`'s
`_release_session`, the policy's record ended, the connector's forgotten), turns the ended
session's other requests in flight into requests of no session (`_orphan_steps`, with
`_orphans` and `_ended_at`, which the connector's `_step` reads), times each session's pause
(`_paused`, `session_active`, which `KVSagaScheduler` calls at a step's arrival) and ends the
ones paused past `session_idle_s` (`_end_idle_sessions`, with the connector's `_idle_sweep`).
The connector sets these tables up; the gate forgets what the sweep ends, and the stats
count it (`abandoned`).

Abandoned sessions (`session_idle_s`, default 1800 s, kvsaga's engine's
`DEFAULT_SESSION_IDLE_S`): a client that stops coming back never sends a last step, and
its session kept its records (the connector's, the policy's, the gate's) and retained
blocks until pressure released the blocks, its records for good. A session paused (its
last step finished) for longer than `session_idle_s` on the connector's clock, with no
step of it in flight (one vLLM asked the connector about and has not finished, or, with
`KVSagaScheduler`, one that arrived since), ends as a last step ends it: its retained
blocks go back to vLLM's prefix cache and its records go (a session none of whose
requests ever ran has no pause: it is never counted). Checked at admission probes and
after each step, at most every min(60 s, limit / 4); `abandoned` counts them. A step that
comes back later starts a new session (its blocks are hits while vLLM's LRU keeps them).
"""

from __future__ import annotations

import time

from kvsaga.session import Session

# Ended sessions whose requests still queued are told apart by arrival: a request whose
# `arrival_time` (vLLM's front end stamps it with time.time()) is before its session's end
# (time.time() here) belongs to the ended session. This assumes the front end and the
# scheduler read one wall clock that does not step back (one host; NTP slewing, not
# stepping): a clock stepped back could take a new session's first request for the old one's
# (it would run unretained, as a request of no session).
ENDED_TRACKED = 4096


class SessionEnds:
    """Ending sessions: by their last step, or abandoned (see the module docstring)."""

    def _orphan_steps(self, sid: str) -> None:
        """Session `sid` ended: its other requests in flight (concurrent steps, asked about
        or still queued) are requests of no session from now on. Their finish retained the
        ended session's context and registered it as paused again, with no last step to
        come: its blocks stayed held until pressure, its records for good. A request queued
        unasked is told by its arrival (`_step`): one that arrived before the end belongs to
        the ended session; one that arrived after is a new session's step."""
        for rid in [r for r, i in self._steps.items() if i.session_id == sid]:
            del self._steps[rid]
            self._orphans.add(rid)
        self._ended_at.pop(sid, None)  # re-inserted last: oldest first stays true
        self._ended_at[sid] = time.time()
        if len(self._ended_at) > ENDED_TRACKED:
            del self._ended_at[next(iter(self._ended_at))]

    def _end_session(self, sid: str, session: Session | None, now: float) -> None:
        """Session `sid` is over (its last step, or abandoned): its retained blocks go back
        (plain prefix cache in vLLM), the policy's record of it (`session`) ends, and the
        connector forgets it."""
        self._release_session(sid)
        if session is not None:
            self.policy.session_ended(session, now)
        self._sessions.pop(sid, None)
        self._paused.pop(sid, None)
        self._flights.pop(sid, None)  # its other requests are of no session from now on
        self._step_ran.discard(sid)

    @property
    def session_idle_s(self) -> float | None:
        """The pause after which a session is ended as abandoned (None: never)."""
        return self._idle_sweep.limit

    def session_active(self, sid: str, now: float) -> None:
        """Session `sid` was active `now` (a step finished, or, from `KVSagaScheduler`, one
        arrived): its pause is timed from now. Nothing on an unbound connector (vLLM's
        prefix caching off: `bind_gpu_block_pool`), which no sweep would ever empty."""
        if self.pool is None:
            return
        self._paused.pop(sid, None)  # re-inserted last: oldest first stays true
        self._paused[sid] = now

    def _end_idle_sessions(self, now: float) -> None:
        """End the sessions paused longer than `session_idle_s` with no step in flight, as
        their last step would (at most every min(60 s, session_idle_s / 4); the gate forgets
        them too). Pauses are kept oldest first: the sweep stops at the first within it."""
        if not self._idle_sweep.due(now):
            return
        idle_s = self.session_idle_s
        busy: set[str] | None = None
        while self._paused:
            sid, since = next(iter(self._paused.items()))
            if not now - since > idle_s:
                break
            del self._paused[sid]
            if busy is None:
                busy = {info.session_id for info in self._steps.values()}
            if sid in busy:  # its step's finish starts its next pause
                continue
            self._end_session(sid, self._sessions.get(sid), now)
            if self.gate is not None:
                self.gate.forget(sid)
            self.stats.abandoned += 1
