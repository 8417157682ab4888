"""Why sessions wait for admission under the `workflow` scheduler: session-seconds of
waiting charged to what held the next session back (`WAIT_CAUSES`), how full the admitted
contexts kept the tiers meanwhile, and the check that a held refusal still has the cause it
was charged with (`Scheduler.refusal_stands` asks `_refusal_kept`).

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from it by concept: it
reads the scheduler's admitted sessions (`sessions`), its waiting queues (`_pending`), its
tiers (`capacity`, `manager`) and the last refusal asked (`_asked`, `_first_end`); the
admission rules set its marks through `_held_back`. Plain Python, no torch.
"""

from __future__ import annotations

from kvsaga.scheduler.base import Executor, SchedulerOutput

# What holds the next session to admit back (`WorkflowScheduler.wait_causes`), in the order
# checked: "pool": its first chunk exceeds the free and evictable blocks (the running steps'
# blocks fill the GPU); "contexts": the admitted sessions' own contexts plus its uncached
# prompt exceed the tiers (memory is full of live data); "growth": they fit, but not with
# the growth predicted for it and the admitted sessions; "reserve": the running steps' decode
# reserve; "batch": nothing was tried (token budget, max_num_seqs, resumed steps first).
WAIT_CAUSES = ("pool", "contexts", "growth", "reserve", "batch")


class WaitCauses:
    """What held the waiting sessions back, charged over time (see the module docstring)."""

    def _init_wait_causes(self) -> None:
        # Why sessions wait for admission: session-seconds of waiting by what held the next
        # session back (`WAIT_CAUSES`), and how full the admitted contexts kept the tiers.
        self.wait_causes = dict.fromkeys(WAIT_CAUSES, 0.0)
        self.waiting_s = 0.0  # time with at least one session waiting for admission
        self.waiting_context_s = 0.0  # over it: admitted contexts' share of the tiers x time
        self._cause: str | None = None  # what held back the head in this batch step
        self._pool_need = 0  # the pool check's blocks of the step `_fits` checks
        self._cause_need: int | None = None  # that of the head, if `_cause` is not "pool"
        self._held = "batch"  # ... in the last batch step: charged until the next one
        # (start, waiting, cause, fill, the totals then) of the interval being charged
        self._since: tuple[float, int, str, float, tuple[float, float, float]] | None = None

    def _refusal_kept(self, asked) -> bool:
        # The cause charged must stay. A head that passed the pool check must still pass it;
        # fewer hits for a new session's step grow its working set: "growth" may turn into
        # "contexts", a "reserve" refusal may fail the session gate first.
        if self._cause_need is None:
            return True
        req, found, limit, _ = asked[0]
        need = found.blocks_to_admit(self._first_end(found, limit))
        if need > self.manager.pool.num_available or (
                found is not self._asked[0][1] and req.session_id not in self.sessions
                and self._held != "contexts"):
            return False
        self._cause_need = need
        return True

    # -- why sessions wait ----------------------------------------------------------------
    def admit_waiting(self, now: float, budget: int, executor: Executor,
                      out: SchedulerOutput) -> None:
        # One `_account` after the attempt suffices: the interval it closes was opened with
        # the cause that held then (`_since`), whatever this attempt finds.
        self._cause = self._cause_need = None
        super().admit_waiting(now, budget, executor, out)
        self._held = self._cause or "batch"
        self._account(now)

    def _account(self, now: float) -> None:
        """Charge the time since the last change to what held the waiting sessions back
        then, and start a new interval (called around every admission attempt and at every
        queueing of a session for admission or removal from its queue, so each waiting
        session is counted from its arrival to its admission or cancellation). An interval
        that goes on unchanged is charged from its start each time (its totals then, plus
        its length times its rate), so a refusal repeated at every batch step charges the
        same as one at its end."""
        waiting = sum(len(q) for q in self._pending.values())
        fill = self._context_blocks() / self.capacity if waiting else 0.0
        since = self._since
        if since is not None:
            t, was_waiting, cause, was_fill, totals = since
            dt = max(now - t, 0.0)
            self.wait_causes[cause] = totals[0] + dt * was_waiting
            self.waiting_s = totals[1] + dt
            self.waiting_context_s = totals[2] + dt * was_fill
            if (was_waiting, cause, was_fill) == (waiting, self._held, fill):
                return
        self._since = None
        if waiting:
            totals = (self.wait_causes[self._held], self.waiting_s, self.waiting_context_s)
            self._since = (now, waiting, self._held, fill, totals)

    def _context_blocks(self) -> int:
        """Blocks of the admitted sessions' own contexts, without predicted growth: the
        running total `WorkingSetGate._set_blocks` and `Demotions._forget` keep (this was
        the sum below, read per admission attempt and per shrink check: O(admitted
        sessions) a read, review s50 scheduler 2)."""
        return self._context_total

    def _context_blocks_summed(self) -> int:
        """`_context_blocks` summed afresh over the admitted sessions (tests check the
        running total against it)."""
        bs = self.manager.block_size
        return sum(-(-max(i.context - i.shared, 0) // bs) for i in self.sessions.values())

    def _held_back(self, cause: str) -> None:
        """Note why the first session tried in this batch step (the head) was not admitted
        (and, if it passed the pool check, the blocks that check needed: `refusal_stands`)."""
        if self._cause is None:
            self._cause = cause
            self._cause_need = None if cause == "pool" else self._pool_need
