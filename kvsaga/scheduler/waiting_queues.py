"""The `workflow` scheduler's waiting queues: admitted sessions' steps (`_resumed`, retries
first) and, per tenant, the sessions waiting for admission (`_pending`), with where a demoted
session's next step is queued (`_insert_demoted`, bounded by `max_overtake`) and Agent Fair
Share's deficits kept over the backlogged tenants.

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from it by concept in
session 35 (workflow.py had reached the 600-line limit), unchanged: it implements
`Scheduler`'s queue hooks (`waiting`, `num_waiting`, `_enqueue`, `_dequeue`) over the queues
the scheduler's `__init__` creates, and tells the other mixins of each change
(`WorkingSetGate._queue_charge`, `Demotions._undo_demotion` and `_shrink`,
`AdmissionOrder._waiting_added` / `_waiting_removed` / `_order_changed`, `WaitCauses._account`).
Which waiting step is tried next is `kvsaga.scheduler.admission_candidates`'.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Any


class WaitingQueues:
    """What waits for admission, in which queue (see the module docstring)."""

    @property
    def waiting(self) -> list[Any]:
        out = list(self._resumed)
        for q in self._pending.values():
            out.extend(q)
        return out

    @property
    def num_waiting(self) -> int:
        return len(self._resumed) + sum(len(q) for q in self._pending.values())

    def _enqueue(self, req: Any, now: float, *, retry: bool) -> None:
        info = self.sessions.get(req.session_id)
        if info is None and self._undoable and not retry:
            info = self._undo_demotion(req, now)
        if info is not None:
            if retry:
                self._resumed.appendleft(req)
                self._retries.add(id(req))
                self._preempted_charge(info, req)  # (`WorkflowScheduler`)
            else:
                self._resumed.append(req)
                info.active = True
                if not self.paused_growth:  # its next step came: its growth counts again
                    self._queue_charge(info, req)  # `WorkingSetGate`
                    if self.queue_shrink:
                        self._shrink(now)
            return
        q = self._pending.get(req.tenant)
        if q is None:
            q = self._pending[req.tenant] = deque()
            self._backlog_changed()
        if req.resumed:  # a demoted session's next step: its task is under way
            self._insert_demoted(q, req)
            self._pending_resumed += 1
        else:
            q.append(req)
        self._waiting_added(req)
        self._order_changed()
        self._account(now)

    def _insert_demoted(self, q: deque[Any], req: Any) -> None:
        """Queue a resumed step of a session not admitted here ahead of its tenant's new
        sessions and of the resumed steps waiting, except behind any of those already
        overtaken `max_overtake` times (`WorkflowScheduler`'s `max_overtake`). Every
        resumed step waiting is counted (`_overtaken`, dropped by `_dequeue`), not only
        those of sessions demoted here (`_deferred`): a session moved in from another
        GPU (the simulator's cluster) was never admitted here, and uncounted it was
        overtaken by every later demoted step. The place holds under the "fifo" order or
        `readmit_order` "first"; the other orders sort the queue again."""
        overtaken = self._overtaken
        i = 0
        for j, r in enumerate(q):
            if not r.resumed:
                break
            if overtaken[r.session_id] >= self.max_overtake:
                i = j + 1
        for r in itertools.islice(q, i, None):
            if not r.resumed:
                break
            overtaken[r.session_id] += 1
        overtaken[req.session_id] = 0
        q.insert(i, req)

    def _dequeue(self, req: Any, now: float) -> bool:
        """As `Scheduler._dequeue`. A session leaving the admission queues (admitted, or
        cancelled while it waited) closes the interval `wait_causes` charges at `now`: left
        open, a cancelled session was charged as waiting until the next queueing or
        admission attempt (minutes, in an idle server)."""
        self._retries.discard(id(req))
        if self._resumed and self._resumed[0] is req:
            self._resumed.popleft()
            return True
        if req in self._resumed:
            self._resumed.remove(req)
            return True
        q = self._pending.get(req.tenant)
        if q is None or req not in q:
            return False
        q.remove(req)
        if req.resumed:
            self._pending_resumed -= 1
        self._overtaken.pop(req.session_id, None)
        self._waiting_removed(req)
        if not q:
            del self._pending[req.tenant]
            self._backlog_changed()
        self._account(now)
        return True

    def _backlog_changed(self) -> None:
        """The set of backlogged tenants changed: their deficits restart (AFS)."""
        self._fair.backlog_changed(self._pending)

    @property
    def deficits(self) -> dict[str | None, float]:
        """The backlogged tenants' Agent Fair Share deficits (`FairShare`)."""
        return self._fair.deficits
