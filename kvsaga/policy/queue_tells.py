"""`graph`'s side of what the workflow scheduler tells it about waiting demoted steps: their
place in the queue (`admission_rank`, kvsaga/policy/admission_rank.py) and the room they
lack (`admission_room`, kvsaga/policy/admission_room.py), both opt-in. A mixin of
`GraphPolicy`, split from it by concept; it reads graph's `ranks`, `rooms`, `groups`,
`_dirty` and `min_wait_s`. Off, the tells are ignored and graph decides as without them.
"""

from __future__ import annotations

from typing import Any


class QueueTells:
    """The scheduler's tells, learned and read (see the module docstring)."""

    ranks: Any
    rooms: Any

    def _told(self, sid: str) -> None:
        if sid in self.groups:  # its keys read the tell: recompute them
            self._dirty.add(sid)

    def session_admission_rank(self, session, rank: int | None, now: float) -> None:
        if self.ranks is not None:
            self.ranks.told(session.session_id, rank, now)
            self._told(session.session_id)

    # `session_admission_room`: graph's own (`_room_told`, set on the instance by
    # `GraphPolicy.__init__`) with `admission_room` on; off, the base class's no-op, so the
    # scheduler, which measures rooms only for a policy that overrides the hook
    # (`AdmissionOrder._tell_rooms`), measures nothing for graph at its defaults. An
    # instance attribute, not a property: a test or a caller may replace it.

    def _room_told(self, session, blocks: int | None, now: float) -> None:
        self.rooms.told(session.session_id, blocks, now)
        self._told(session.session_id)

    def _queue_admitted(self, session, now: float) -> bool:
        """The session's step started: whether a tell's delay was learned (keys change)."""
        learned = False
        for told in (self.ranks, self.rooms):
            if told is not None and told.admitted(session.session_id, session.workflow, now):
                learned = True
        return learned

    def _queue_forget(self, sid: str) -> None:
        for told in (self.ranks, self.rooms):
            if told is not None:
                told.forget(sid)

    def _queue_time(self, sid: str, workflow: str | None, t: float) -> float:
        """A demoted session's expected time until its blocks are read, `t` graph's own,
        read from the tells where its step waits (the rank's first, then the room's)."""
        for told in (self.ranks, self.rooms):
            if told is not None and told.waiting(sid):
                t = max(told.time(sid, workflow, t), self.min_wait_s)
        return t
