"""The session signals of `kvsaga.manager.KVCacheManager` (a mixin): how a step ends and what
the engine says about a session between steps. `finish_step` pauses it (its blocks stay
cached and evictable), `pause_hint` names what a paused session waits on after the fact,
`resume_hint` / `resume_withdrawn` announce its next step or take that back, `preempt` takes
a running step's blocks back, and `end_session` forgets it. Each tells the policy first and
changes nothing when the policy raises. Split from kvsaga/manager.py by concept.
"""

from __future__ import annotations

from kvsaga._validate import check_bool
from kvsaga.errors import InvalidRequest
from kvsaga.pool import CACHED
from kvsaga.session import PauseHint, Session, SessionState


class SessionSignals:
    """`finish_step`, `pause_hint`, `resume_hint`, `resume_withdrawn`, `preempt`,
    `end_session` (see the module docstring)."""

    def finish_step(
        self,
        session_id: str,
        *,
        now: float | None = None,
        tool: str | None = None,
        expected_s: float | None = None,
        last_step: bool = False,
    ) -> None:
        """Close the running step. The session pauses; its blocks stay cached and evictable.

        Args:
            tool: the tool call the session now waits on, if any.
            expected_s: expected pause in seconds; overrides the policy's prediction.
            last_step: no step follows; same as `end_session` after this call.
        Raises:
            InvalidRequest: bad hint values, or the session has no open step.
        """
        s = self._running(session_id)
        hinted = self._hint(session_id, now, tool, expected_s, last_step)
        if hinted is None:
            return
        hint, now = hinted
        self._changes += 1
        was = s.paused_at, s.hint
        s.state = SessionState.PAUSED
        s.paused_at = now
        s.hint = hint
        try:
            self.policy.step_finished(s, now, hint)
        except BaseException:  # nothing released yet: the step is open as it was
            self._changes -= 1
            s.state = SessionState.RUNNING
            s.paused_at, s.hint = was
            raise
        self._release_table(s, keep_tail=True)

    def pause_hint(
        self,
        session_id: str,
        *,
        now: float | None = None,
        tool: str | None = None,
        expected_s: float | None = None,
        last_step: bool = False,
    ) -> None:
        """Say what a paused session waits on, when it was not known at `finish_step`.

        Raises:
            UnknownSession; InvalidRequest if the session is running or the hint is bad.
        """
        s = self._session(session_id)
        if s.state is SessionState.RUNNING:
            raise InvalidRequest(f"session {session_id!r} is running; hint at finish_step")
        hinted = self._hint(session_id, now, tool, expected_s, last_step)
        if hinted is None:
            return
        hint, now = hinted
        old, s.hint = s.hint, hint
        try:
            self.policy.pause_hinted(s, now, hint)
        except BaseException:
            s.hint = old
            raise

    def _hint(
        self, session_id: str, now: float | None, tool: str | None,
        expected_s: float | None, last_step: bool,
    ) -> tuple[PauseHint, float] | None:
        """The checked hint and the time, or None once `last_step` has ended the session."""
        hint = PauseHint(tool, expected_s, check_bool("last_step", last_step, InvalidRequest))
        now = self._time(now)
        if last_step:
            self.end_session(session_id, now=now)
            return None
        return hint, now

    def resume_hint(self, session_id: str, *, now: float | None = None) -> None:
        """Say that a paused session's next step is imminent (its tool returned)."""
        s = self._session(session_id)
        now = self._time(now)
        if s.state is SessionState.PAUSED:
            self.policy.resume_hinted(s, now)
            self.prefetch(session_id, now=now)

    def resume_withdrawn(self, session_id: str, *, now: float | None = None) -> None:
        """Take back `resume_hint`, or a preempted step's start: the step was aborted before
        it ran (again), so the session stays paused as after its last completed step and
        its blocks are no longer needed now (`EvictionPolicy.resume_withdrawn`). Blocks the
        hint's prefetch loaded stay where they are. A no-op for a session that is not
        paused."""
        s = self._session(session_id)
        now = self._time(now)
        if s.state is SessionState.PAUSED:
            self.policy.resume_withdrawn(s, now)

    def preempt(self, session_id: str, *, now: float | None = None) -> None:
        """Take a running step's blocks back (the engine requeues it and calls begin_step).

        Full blocks stay cached, so the retry hits whatever survives; the partial tail is
        freed, and `num_computed_tokens` drops to the full blocks' tokens (a mid-prefill
        partial block's tokens have no slots any more).
        """
        s = self._running(session_id)
        now = self._time(now)
        self._changes += 1
        s.state = SessionState.PAUSED
        s.paused_at = now
        self._release_table(s, keep_tail=False)

    def end_session(self, session_id: str, *, now: float | None = None) -> None:
        """Forget a session. Its full blocks stay as plain prefix cache for anyone (no block
        stays owned by it: those that left its table while it owned them included)."""
        s = self._session(session_id)
        now = self._time(now)
        self._changes += 1
        try:
            self.policy.session_ended(s, now)
        except BaseException:  # first: nothing else changed yet
            self._changes -= 1
            raise
        if s.state is SessionState.RUNNING:
            self._release_table(s, keep_tail=False)
        elif s.tail is not None:
            b, gen, _ = s.tail
            if self.pool.state[b] == CACHED and self.pool.generation[b] == gen:
                self._drop(b)
        owner = self.block_owner
        for blocks in (s.block_ids, self._left_owned.pop(session_id, ())):
            for b in blocks:
                if owner[b] == session_id:
                    owner[b] = None
        del self.sessions[session_id]

    def _release_table(self, s: Session, keep_tail: bool) -> None:
        """Drop the step's references, tail first, so that policies see tails go first."""
        pool = self.pool
        table = s.block_ids
        partial = s.num_computed % self.block_size
        tail = table[-1] if partial and keep_tail else -1
        pool.release_many(table[::-1], keep_unhashed=tail)
        s.tail = None
        if tail >= 0 and pool.state[tail] == CACHED:
            s.tail = (tail, pool.generation[tail], partial)
        if not keep_tail:  # the partial tail's tokens lost their slots with it
            s.num_computed -= s.num_computed % self.block_size
