"""Which waiting step the `workflow` scheduler tries to admit next (`_candidate`) and which
it tries instead when that one does not fit (`_backfill`): admitted sessions' resumed steps
first (a warm one may go ahead of the head, `_pick_resumed`), then the next tenant's head
session by Agent Fair Share, sessions queued behind it (`backfill_window`), the heads of
tenants below their shares of the tiers (`_entitled_heads`) and compute shares' steps.

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from it by concept in
session 35 (workflow.py had reached the 600-line limit), unchanged: it implements
`Scheduler`'s `_candidate` and `_backfill` over the queues of
`kvsaga.scheduler.waiting_queues`, and reads the reserve (`AdmissionOrder._reserved`,
`_holding`, `_sort_pending`), Agent Fair Share (`_fair`, `_tenant_blocks`, the shares
`Demotions._shares` computes, `ComputeShares._share_backfill`, which reads `_waiting_heads`
from here) and the prefix index (`manager`, for `_is_warm`). The bookkeeping of an admission
(`_admitted`, the bypass and backfill counts) stays in workflow.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any


class AdmissionCandidates:
    """Who is tried next for admission (see the module docstring)."""

    def _candidate(self, now: float) -> Any | None:
        held = self._reserved(now)
        if self._resumed:
            return self._pick_resumed()
        if held is not None or not self._pending:
            return held
        self._sort_pending()
        return self._pending[self._fair.next_tenant(self._oldest)][0]

    def _backfill(self, head: Any) -> Sequence[Any]:
        """Sessions queued behind `head`, a session waiting for admission, in its tenant's
        queue (at most `backfill_window`, and none once `max_backfill` went ahead of it).
        While the reserve holds (`_candidate` set `_holding`), only admitted sessions'
        steps (compute shares') may go instead: no session is admitted before it."""
        if self._holding is not None:
            return [r for r in self._share_backfill(head) if r.session_id in self.sessions]
        q = self._pending.get(head.tenant)
        if not q or q[0] is not head:
            return self._share_backfill(head)
        passed = self._backfills_past.get(head.session_id, 0)
        same = [] if passed >= self.max_backfill else list(
            itertools.islice(q, 1, 1 + self.backfill_window))
        return same + self._entitled_heads(head.tenant) + self._share_backfill(head)

    def _waiting_heads(self) -> list[Any]:
        """The first waiting step of each tenant (resumed steps first), for compute shares."""
        heads: dict[str | None, Any] = {}
        for r in itertools.chain(self._resumed, (q[0] for q in self._pending.values())):
            heads.setdefault(r.tenant, r)
        return list(heads.values())

    def _entitled_heads(self, tenant: str | None) -> list[Any]:
        """The next sessions of the other waiting tenants that hold less than their shares
        of the tiers (`_shares`), in Agent Fair Share order: a tenant whose session cannot
        be admitted does not hold back a tenant entitled to memory."""
        if len(self._pending) < 2:
            return []
        shares = self._shares(self.overcommit * self.capacity)
        held, d = self._tenant_blocks, self._fair.deficits
        others = sorted((t for t in self._pending if t != tenant and held.get(t, 0) < shares[t]),
                        key=lambda t: (-d.get(t, 0.0), self._oldest(t)))
        return [self._pending[t][0] for t in others]

    def _pick_resumed(self) -> Any:
        """The head of the resumed queue, or a warm step among the first
        `admission_window` (at most `max_bypass` times ahead of one head)."""
        head = self._resumed[0]
        if head is not self._head:
            self._head, self._bypassed = head, 0
        if id(head) in self._retries or self._bypassed >= self.max_bypass or self._is_warm(head):
            return head
        for i in range(1, min(self.admission_window, len(self._resumed))):
            if self._is_warm(self._resumed[i]):
                return self._resumed[i]
        return head

    def _is_warm(self, req: Any) -> bool:
        """Whether most of a paused session's context is still on the GPU: the block at
        the middle of its prompt is resident (policies evict tails first, so the head up to
        it almost surely is too). O(1), unlike a lookup."""
        s = self.manager.sessions.get(req.session_id)
        if s is None:
            return False
        mid = req.num_tokens // (2 * self.manager.block_size)
        return mid < len(s.block_hashes) and self.manager.index.get(s.block_hashes[mid]) is not None

    def _oldest(self, tenant: str | None) -> float:
        """Arrival of the tenant's head waiting session (AFS ties): its oldest under "fifo",
        its least predicted work under "predicted"."""
        return self._pending[tenant][0].arrival
