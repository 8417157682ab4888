"""The session signals of `kvsaga.manager.KVCacheManager` (a mixin): how a step ends and what
the engine says about a session between steps. `finish_step` pauses it (its blocks stay
cached and evictable), `pause_hint` names what a paused session waits on after the fact,
`resume_hint` / `resume_withdrawn` announce its next step or take that back, `preempt` takes
a running step's blocks back, and `end_session` forgets it. Each tells the policy first and
changes nothing when that hook raises. A release's pool hook (`blocks_cached`) raising after
it is not taken back but completed: the call's change stands, less the blocks the policy was
not told of, which are dropped (`_release_table`). Split from kvsaga/manager.py by concept.
"""

from __future__ import annotations

from kvsaga._validate import check_bool
from kvsaga.errors import InvalidRequest
from kvsaga.manager_reads import ending_error
from kvsaga.ownership import dead_blocks, disown, reown
from kvsaga.pool import CACHED, BlockPool, release_again
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
            Whatever the policy's `step_finished`, the pool's `blocks_cached` or the
                policy's `blocks_disowned` raises (below).

        A raising policy hook propagates: `step_finished` changes nothing (the step stays
        open); the release's `blocks_cached` (told after it) leaves the session paused, the
        policy told of the pause, and the blocks that release cached dropped (freed and
        unindexed: the policy never saw them), so its next step computes them again.

        Once paused, the session's blocks that hold none of its context any more are
        disowned (`_disown_dead`: a context the client compacted or edited), after the
        release: while the step ran they stayed its own. A raising `blocks_disowned` (told
        before they are disowned) propagates AFTER the step is finished and the session
        paused, with nothing disowned (a retried `finish_step` is refused: no open step; the
        next finish disowns them).
        """
        s = self._running(session_id)
        if s.ending:  # (its policy was told the end: only end_session may follow)
            raise ending_error(session_id)
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
        self._release_table(s, keep_tail=True, was=was)
        if session_id in self._left_owned:  # (rare: an edited context, a gap in the hits)
            self._disown_dead(s, now)

    def _disown_dead(self, s: Session, now: float) -> None:
        """Disown the blocks that left paused session `s`'s table (at its `finish_step` or
        `preempt`) and hold none of its context now: a block whose position is past its
        hashes, or whose hash is not its hash there (a context the client compacted or
        edited: `begin_step` cut its hashes at the common prefix). They become plain cache,
        as an ended session's blocks do: the policy is told of the CACHED ones first
        (`blocks_disowned`, tail first), so that it stops pricing them as the session's
        paused context while the scheduler charges it only its context (review s54
        mutsched2, section 2). Blocks past a gap in its hits still hold its context (their
        hashes are its own there) and stay its own; so do its blocks while a step runs (the
        `workflow` scheduler charges a running compacted step its old context:
        tests/scheduler/test_compacted_running_charge.py). A later prompt that repeats the
        old tokens still hits them by content, and gives them back to the session when no
        other session holds them (`_reown`, from the record kept here).

        A raising `blocks_disowned` propagates with nothing disowned (the step is finished
        or preempted, and the session paused, all the same); the next finish or preempt
        tries again."""
        sid = s.session_id
        left = self._left_owned[sid]
        owner = self.block_owner
        dead = dead_blocks(left, sid, s.block_ids, owner, self.block_position,
                           self.pool.block_hash, s.block_hashes)
        if dead:
            state = self.pool.state
            self.policy.blocks_disowned(s, [b for b in dead if state[b] == CACHED], now)
            self._changes += 1
            disown(dead, sid, owner, left, self._disowned, self.pool.block_hash)
        if not left:
            del self._left_owned[sid]

    def _reown(self, s: Session, hits: list[int], rec: dict[int, bytes]
               ) -> list[tuple[int, bytes]]:
        """Give running session `s` back the blocks of its `rec` (what `_disown_dead` took
        from it) that its `hits` (just referenced, shared ones already disowned) hold again
        at their position: a later prompt repeated the old context (a retry, a restored
        checkpoint, a tree search going back to a branch). Only a block no one owns now and
        no other session's table holds (a prefix another session hit stays plain cache, as
        any shared block does). Set before the step's release files the block with the
        policy, which reads its owner there, as for any block of the session's table.
        Returns those given back; `kvsaga.ownership.reown` has the rule."""
        sid = s.session_id
        back = reown(rec, sid, hits, self.block_owner, self.block_position,
                     self.pool.block_hash, lambda b, p: self._held_elsewhere(s, b, p))
        if not rec:
            del self._disowned[sid]
        return back

    def _held_elsewhere(self, s: Session, b: int, p: int) -> bool:
        """Whether a session other than `s` has block `b` at position `p` of its table."""
        for t in self.sessions.values():
            ids = t.block_ids
            if t is not s and len(ids) > p and ids[p] == b:
                return True
        return False

    def _disowned_before(self, rec: dict[int, bytes]) -> tuple[dict[int, bytes], list]:
        """A copy of a compacted session's record `rec` and its blocks' owners, taken before
        `_reown` changes them, for `_put_disowned_back`."""
        owner = self.block_owner
        return dict(rec), [(b, owner[b]) for b in rec]

    def _put_disowned_back(self, sid: str, saved: tuple[dict[int, bytes], list]) -> None:
        """Undo `_reown` (whole, or cut anywhere in it) for a `begin_step` taken back: the
        record and its blocks' owners as `_disowned_before` saw them, before the take-back
        releases the blocks (the policy reads their owner there)."""
        rec, owners = saved
        owner = self.block_owner
        for b, o in owners:
            owner[b] = o
        self._disowned[sid] = rec

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

        A compacted step's old context (blocks that hold none of the session's context
        now) is disowned after the release, as at `finish_step`: the retry sends the same
        prompt, so they are dead from here on (else priced as the session's context until
        the retry's finish, other paused sessions' live contexts evicted first). A raising
        `blocks_disowned` propagates after the preempt, nothing disowned; the next finish
        or preempt disowns them.
        """
        s = self._running(session_id)
        if s.ending:
            raise ending_error(session_id)
        now = self._time(now)
        self._changes += 1
        was = s.paused_at, s.hint
        s.state = SessionState.PAUSED
        s.paused_at = now
        self._release_table(s, keep_tail=False, was=was)
        if session_id in self._left_owned:  # (rare: a compacted or edited context)
            self._disown_dead(s, now)

    def end_session(self, session_id: str, *, now: float | None = None,
                    force: bool = False) -> None:
        """Forget a session. Its full blocks stay as plain prefix cache for anyone (no block
        stays owned by it: those that left its table while it owned them included).

        A raising policy hook propagates. A paused session's retained partial tail is
        evicted first (its eviction tells the policy first: a raise there changes nothing),
        then the policy is told the end (a raise there leaves the session paused, less that
        tail, as if the policy had evicted it). A running session's release raising in
        `blocks_cached` (told after the end) still leaves the session ended, the blocks
        that release cached dropped (`_release_table`).

        `force=True` (an owner's sweep of a session whose end keeps failing): an Exception
        of `session_ended` does not keep the session: it is ended all the same (its blocks
        released, as above), then the hook's error propagates. A policy whose hook raised
        may keep what it held for the session; the blocks are the pool's again either way.

        An interrupt (KeyboardInterrupt) cut into it leaves the session either ended or
        known, for a retry of `end_session` to end: an end the policy was told is marked
        (`Session.ending`: the retry does not tell it again), a table released is marked so
        (PAUSED: never released again), and the forgetting is restartable. Until that retry
        the session is for `end_session` only: begin_step, finish_step and preempt refuse it
        (InvalidRequest), and `idle_sessions` names it for the sweeps. Not covered: on the
        C++ core, a cut exactly at the pool release's return (taken as its `blocks_cached`
        raising). Under KVSAGA_CORE=python a cut inside the pure-Python release finishes
        it, untold, as that hook's raise, and one at its entry (nothing released) is
        followed by the release, then propagates (findings s54 pyloops).
        """
        check_bool("force", force, InvalidRequest)
        s = self._session(session_id)
        now = self._time(now)
        hook_error: Exception | None = None
        if s.tail is not None:  # first, on a retry too (a paused session's)
            self._evict_paused_tail(s)
        if not s.ending:  # (else a retry of an end an interrupt cut: the policy was told)
            hook_error = self._tell_end(s, now, force)
        if s.state is SessionState.RUNNING:
            try:  # (`_release_table` marks it PAUSED once its table is released)
                self._release_table(s, keep_tail=False)
            finally:  # the policy was told the end: once released, the session ends, then
                if s.state is not SessionState.RUNNING:  # the error rises (a cut before
                    self._forget(s)  # the release keeps it RUNNING: a retry releases)
        else:
            self._forget(s)
        if hook_error is not None:
            raise hook_error

    def _tell_end(self, s: Session, now: float, force: bool) -> Exception | None:
        """`end_session`'s part before the release, after the tail's eviction: tell the
        policy the end, mark `s.ending`. Returns the hook's Exception that `force`
        let pass. No call separates the hook's return from the mark (an interrupt, which
        CPython raises only at a call, a loop's jump back or a function's entry, cannot
        land in between; one at the hook's return is taken as the hook's own)."""
        self._changes += 1
        try:
            self.policy.session_ended(s, now)
        except Exception as e:
            if not force:  # nothing else changed yet
                self._changes -= 1
                raise
            s.ending = True
            return e
        except BaseException:  # an interrupt: nothing else changed yet, forced or not
            self._changes -= 1
            raise
        s.ending = True
        return None

    def _evict_paused_tail(self, s: Session) -> None:
        """Evict a paused session's retained partial tail (its eviction tells the policy
        first: a raise there changes nothing), as its end does first."""
        if s.state is not SessionState.RUNNING and s.tail is not None:
            b, gen, _ = s.tail
            if self.pool.state[b] == CACHED and self.pool.generation[b] == gen:
                self._drop(b)
            s.tail = None

    def _forget(self, s: Session) -> None:
        """Disown `s`'s blocks (those that left its table while it owned them included) and
        forget it (`end_session`, once the policy was told). Restartable: an interrupt
        before its last two statements (which no call separates) leaves `s` known with
        its leftovers, for `end_session`'s retry to disown again."""
        owner, sid = self.block_owner, s.session_id
        for blocks in (s.block_ids, self._left_owned.get(sid, ())):
            for b in blocks:
                if owner[b] == sid:
                    owner[b] = None
        del self.sessions[sid]
        self._left_owned.pop(sid, None)
        self._disowned.pop(sid, None)

    def _release_table(self, s: Session, keep_tail: bool, was: tuple | None = None) -> None:
        """Drop the step's references, tail first, so that policies see tails go first.

        When the pool's `blocks_cached` hook raises (the pool has released every block;
        the policy was told of none: `PoolObserver`), the release is completed
        consistently rather than taken back: the blocks it cached are dropped as unseen
        (`_drop_released`) and the error propagates. Taking it back would need the policy
        to forget the `step_finished` (or `session_ended`) it was told before, which no
        hook can say. `was`: the session's (paused_at, hint) before its caller paused it
        (one more `_changes`), put back when nothing could be released."""
        pool = self.pool
        table = s.block_ids
        partial = s.num_computed % self.block_size
        tail = table[-1] if partial and keep_tail else -1
        ids = table[::-1]
        cut, calls = None, pool.calls
        try:
            pool.release_many(ids, keep_unhashed=tail)
        except BaseException as e:  # (an interrupt at the call's return lands here too)
            try:  # the Python pool cut at its entry (nothing released): released now
                # (`calls` moved: the call returned, told; decided inline, with no call, so
                # a second pending signal cannot land before it: review s55 diffint LOW-1)
                told = pool.calls != calls or release_again(pool, ids, tail, e, calls)
            except BaseException:
                # No call began: a refusal, `RELEASE_RETRIES` + 1 cuts at the entry, or a
                # further interrupt before one began (all read by `_releasing`, with no call,
                # so with no interrupt point before the stores): nothing released, the
                # session running as it was (its table holds the references); the policy,
                # told `step_finished` already, is told it again by a retry (no hook takes
                # it back). A later interrupt, once a call began, has released untold.
                if pool.__class__ is BlockPool and pool._releasing is not ids:
                    s.state = SessionState.RUNNING
                    if was is not None:
                        self._changes -= 1
                        s.paused_at, s.hint = was
                    raise e from None
                told = False
            if not told:
                s.state = SessionState.PAUSED  # no longer holds the references: never again
                self._drop_released(s)
                raise  # (the first error; a retry's hook error its cause)
            cut = e
        s.state = SessionState.PAUSED  # (already so for finish_step and preempt)
        s.tail = None
        if tail >= 0 and pool.state[tail] == CACHED:
            s.tail = (tail, pool.generation[tail], partial)
        if not keep_tail:  # the partial tail's tokens lost their slots with it
            s.num_computed -= s.num_computed % self.block_size
        if cut is not None:
            raise cut

    def _drop_released(self, s: Session) -> None:
        """After a release of `s`'s table whose `blocks_cached` hook raised: free and
        unindex, without telling the policy, the blocks that release cached (the policy
        never saw them cached; told of their eviction, LRU's queue would unlink blocks it
        never linked), as an eviction would, and cut `s`'s table before the first of them
        (its computed tokens with it; its retained tail is gone). The session's next step
        computes them again. Blocks other running steps still hold stay as they are (one
        `s` owns and no longer lists is remembered for `end_session`). Before this, the
        blocks stayed CACHED unknown to the policy, and every resume of `s` raised in the
        hit's `blocks_uncached` until the session was ended (review s50 hooks, item 2)."""
        table, state = s.block_ids, self.pool.state
        gone = [b for b in table if state[b] == CACHED]
        s.tail = None
        if not gone:
            return
        self._changes += 1
        late = self._evict_unseen(gone)  # (kvsaga/manager_rollback.py; an interrupt that
        cut = table.index(gone[0])  # cut it: raised once the table is cut too)
        self._note_left(s, table, table[:cut])
        del table[cut:]
        s.num_computed = min(s.num_computed, cut * self.block_size)
        if late is not None:
            raise late
