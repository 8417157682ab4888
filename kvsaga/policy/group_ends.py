"""The ownership changes the pool does not report, for the grouped policies (a mixin of
`kvsaga.policy.groups.GroupedPolicy`): a session's end (`session_ended`: its whole group goes
to `dead`, and the blocks its release caches right after follow) and the disowning of a
compacted context's blocks at its session's pause (`blocks_disowned`: those blocks go to
`dead`). Nobody is expected to read either again, so every grouped policy evicts them
first. Split from kvsaga/policy/groups.py by concept.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvsaga.session import Session

# Where a block sits (`GroupedPolicy._where`): the module docstring of groups.py.
UNTRACKED, DEAD, PLAIN, OWNED = 0, 1, 2, 3


class GroupEnds:
    """`session_ended` and `blocks_disowned` (see the module docstring)."""

    def session_ended(self, session: Session, now: float) -> None:
        self._touch(now)
        self._learned += 1
        sid = session.session_id
        self.views.pop(sid, None)
        self._index.drop(sid)  # its index entries turn stale
        self._base.pop(sid, None)
        self._dirty.discard(sid)
        for b in self.groups.pop(sid, []):  # tail first
            self.dead.push(b)
            self._where[b] = DEAD
            self._owner[b] = None
        self._ending = sid

    def blocks_disowned(self, session: Session, block_ids: list[int], now: float) -> None:
        """Move those of `block_ids` filed in `session`'s group to `dead`, tail first, as
        `session_ended` moves a whole group (the context the client compacted away).
        Idempotent: experts that share this tracking (`adaptive`) are each told, and only
        the first moves anything."""
        self._touch(now)
        sid = session.session_id
        g = self.groups.get(sid)
        if g is None:
            return
        where, owner = self._where, self._owner
        gone = {b for b in block_ids if where[b] == OWNED and owner[b] == sid}
        if gone:
            self._to_dead(sid, g, [b for b in g if b in gone], now)  # group order

    def _to_dead(self, sid: str, g: list[int], moved: list[int], now: float) -> None:
        """Take `moved` (entries of `sid`'s group `g`, in its order: tail first) out of it
        into `dead`; the session is re-keyed at the next search."""
        gone = set(moved)
        kept = [b for b in g if b not in gone]
        if kept:
            g[:] = kept
        else:
            del self.groups[sid]
        where, owner, dead = self._where, self._owner, self.dead
        for b in moved:
            dead.push(b)
            where[b] = DEAD
            owner[b] = None
        self._mark(sid)
