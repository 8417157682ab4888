"""`graph`'s side of what the workflow scheduler tells it about waiting demoted steps: their
place in the queue (`admission_rank`, kvsaga/policy/admission_rank.py) and the room they
lack (`admission_room`, kvsaga/policy/admission_room.py), and the room a demoted session
still paused on its tool would lack were its step queued now (`paused_room`, the same
module), all opt-in. A mixin of
`GraphPolicy`, split from it by concept; it reads graph's `ranks`, `rooms`, `groups`,
`_dirty` and `min_wait_s`. Off, the tells are ignored and graph decides as without them.
"""

from __future__ import annotations

from typing import Any

from kvsaga.policy.admission_rank import AdmissionRanks
from kvsaga.policy.admission_room import AdmissionRooms
from kvsaga.policy.trust import flag


class QueueTells:
    """The scheduler's tells, learned and read (see the module docstring)."""

    ranks: Any
    rooms: Any
    paused_rooms: Any

    def _init_queue_tells(self, prior: float, admission_rank: object, admission_room: object,
                          paused_room: object) -> None:
        """The options' learners (None: off), and the room hooks listened to where on."""
        self.ranks = AdmissionRanks(prior) if flag("admission_rank", admission_rank) else None
        self.rooms = AdmissionRooms(prior) if flag("admission_room", admission_room) else None
        self.paused_rooms = AdmissionRooms(prior, keep=True) \
            if flag("paused_room", paused_room) else None
        if self.rooms is not None:  # listens to the room; off, the base class's no-op
            self.session_admission_room = self._room_told
        if self.paused_rooms is not None:
            self.session_paused_room = self._paused_room_told

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

    def _paused_room_told(self, session, blocks: int | None, now: float) -> None:
        """`session_paused_room` with `paused_room` on (as `_room_told`)."""
        self.paused_rooms.told(session.session_id, blocks, now)
        self._told(session.session_id)

    def _queue_admitted(self, session, now: float) -> bool:
        """The session's step started: whether a tell's delay was learned (keys change)."""
        learned = False
        for told in (self.ranks, self.rooms, self.paused_rooms):
            if told is not None and told.admitted(session.session_id, session.workflow, now):
                learned = True
        return learned

    def _queue_forget(self, sid: str) -> None:
        for told in (self.ranks, self.rooms, self.paused_rooms):
            if told is not None:
                told.forget(sid)

    def _queue_time(self, sid: str, workflow: str | None, t: float) -> float:
        """A demoted session's expected time until its blocks are read, `t` graph's own,
        read from the tells where its step waits (the rank's first, then the room's), or
        where it is paused on its tool, from the room told for that (`paused_room`)."""
        for told in (self.ranks, self.rooms, self.paused_rooms):
            if told is not None and told.waiting(sid):
                t = max(told.time(sid, workflow, t), self.min_wait_s)
        return t
