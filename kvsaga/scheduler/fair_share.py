"""Agent Fair Share: which tenant's waiting session the `workflow` scheduler admits next, and
(below, "Compute") how a batch step's tokens are split among tenants.

Each tenant has a weight (1 by default) and a deficit. At each session admission, every
backlogged tenant (one with a session waiting for admission) is credited its weight share of
that admission and the admitted tenant is debited 1; the tenant with the largest deficit
goes next (ties: the oldest waiting session). Deficits restart at 0 whenever the backlogged
set changes.

Only admissions in fair order are charged: the admitted tenant's deficit is the largest.
The others are work-conserving: a session of another tenant that holds less than its memory
share admitted while the favoured tenant's next session cannot fit (`_entitled_heads`), a
session backfilled behind the head, or a demoted session coming back. The memory shares
below bound those; charging them would push the admitted tenant's deficit below -1 and
void the bound (tests/test_manager_stateful.py found that sequence).

Deviation bound: a tenant's deficit is its weighted fair share of the charged admissions
minus its charged admissions. The backlogged tenants' deficits sum to 0 and each stays
above -1 (a tenant is debited only when its deficit is the largest, hence >= 0, and it is
credited a positive share first), so each stays below k - 1 (k tenants). Hence, while the backlogged
set stays the same, each tenant's admissions exceed its fair share by less than 1 and fall
short of it by less than k - 1: for two tenants, less than one session either way.
tests/scheduler/test_fair_share.py checks it on random weights and admission sequences.

Memory (in `WorkflowScheduler`): with k >= 2 tenants present (admitted or waiting), tenant
t's share of the tiers is limit x w_t / (sum of the present tenants' weights). When a
session of t waits and t's admitted working sets plus its own fit within t's share, it is
refused only while other tenants' active sessions (a step queued or running) hold the room:
other tenants' paused sessions above their shares are demoted for it (all that are needed,
or none when that cannot make room), and the next session of a tenant that does not fit
does not hold it back (it is tried next). Without a second tenant nothing binds: a tenant
alone uses all of the memory. tests/scheduler/test_share.py checks both sides.

Compute (`ComputeShares`, opt-in: `WorkflowScheduler(share_step_tokens=N)`, default 0 =
off, because the cap shortens every batch step while tenants compete and a real engine pays
a fixed cost per step; bench/scheduling_mix.py fits N on the simulator): while two or more
tenants compete in a batch step (a request running or waiting), the step's tokens are split
among them by `share_allowances` (max-min fair by weight over `share_step_tokens`; a tenant
that needs less than its share leaves the rest to the others). A running prefill chunk or an
admitted step's first chunk takes only what its tenant has left; a tenant with nothing left
sits the step out, and its queued step does not hold back another tenant's. Decodes (and
1-token chunks) always run and are charged first. Bound, per step: each competing tenant
computes at least min(its demand, floor(share_step_tokens x its weight share)) tokens (at
least 1), so a tenant with many sessions cannot fill the step with its prefill while another
tenant's steps wait or decode in it. tests/scheduler/test_share_compute.py checks the bound
on random demands and the scheduler following it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence


class FairShare:
    """Deficits of the backlogged tenants (see the module docstring).

    Args:
        weights: weight per tenant; absent tenants weigh 1.
    """

    def __init__(self, weights: Mapping[str | None, float]) -> None:
        self.weights = dict(weights)
        self.deficits: dict[str | None, float] = {}  # backlogged tenants only

    def weight(self, tenant: str | None) -> float:
        return self.weights.get(tenant, 1.0)

    def backlog_changed(self, backlogged: Iterable[str | None]) -> None:
        """The set of backlogged tenants changed: their deficits restart at 0."""
        self.deficits = dict.fromkeys(backlogged, 0.0)

    def next_tenant(self, oldest: Callable[[str | None], float]) -> str | None:
        """The backlogged tenant with the largest deficit; ties go to the smallest
        `oldest(tenant)` (the arrival of its oldest waiting session)."""
        d = self.deficits
        if len(d) == 1:
            return next(iter(d))
        return max(d, key=lambda t: (d[t], -oldest(t)))

    def charge(self, tenant: str | None) -> None:
        """`tenant` had a session admitted: credit every backlogged tenant its share of the
        admission and debit `tenant` 1. A tenant not backlogged, or admitted out of fair
        order (its deficit is not the largest), is not charged."""
        d = self.deficits
        if tenant not in d or d[tenant] < max(d.values()):
            return  # out of fair order (see the module docstring): not charged
        total = sum(self.weight(t) for t in d)
        for t in d:
            d[t] += self.weight(t) / total
        d[tenant] -= 1.0


def share_allowances(demands: Mapping[str | None, float], weights: Mapping[str | None, float],
                     step_tokens: int) -> dict[str | None, int]:
    """Agent Fair Share of one batch step's compute: tokens each competing tenant may have
    computed in the step (max-min fair by weight, i.e. water-filling).

    `demands`: tokens each competing tenant could use in the step (its running requests'
    next chunks and decodes; `math.inf` with a session step waiting). `step_tokens` is
    split by weight; a tenant whose demand is below its share gets its demand and the rest
    of its share goes to the others, by weight (work-conserving). Bound: every tenant gets
    at least min(its demand, floor(step_tokens x w_t / sum of the weights), and at least 1).
    """
    left = dict(demands)
    out: dict[str | None, int] = {}
    room = float(step_tokens)
    while left:
        total = sum(weights.get(t, 1.0) for t in left)
        sated = [t for t in left if left[t] <= room * weights.get(t, 1.0) / total]
        if not sated:
            break
        for t in sated:
            out[t] = int(left.pop(t))
            room -= out[t]
    for t in left:
        out[t] = max(int(room * weights.get(t, 1.0) / total), 1)
    return out


class ComputeShares:
    """Agent Fair Share of compute, a part of `WorkflowScheduler` (a mixin): while two or
    more tenants compete (a request running or waiting), each batch step's tokens follow
    `share_allowances` over `share_step_tokens`: a running request's prefill chunk and an
    admitted request's first chunk take only what their tenant's allowance has left (none
    left: it sits the step out). Decodes are never held back, so a step's decodes all run
    (the engine's batched decode and the simulator's decode runs rely on it). With fewer
    than two tenants competing, or `share_step_tokens` 0, nothing changes.

    Why: a tenant with many sessions otherwise fills every batch step with its prefill
    chunks, and another tenant's decodes ride in those long steps (bench/RESULTS.md, the
    noisy-neighbour rows). Short steps while tenants compete bound that.
    """

    share_step_tokens = 0
    _allow: dict[str | None, int] | None = None

    def _compete(self, needs: Sequence[int]) -> dict[str | None, int] | None:
        """The step's allowances, from the running requests' `needs` (None: no sharing)."""
        if not self.share_step_tokens:
            return None
        demands: dict[str | None, float] = {}
        for r, n in zip(self.running, needs, strict=True):
            demands[r.tenant] = demands.get(r.tenant, 0) + n
        for r in self._waiting_heads():
            demands[r.tenant] = math.inf
        if len(demands) < 2:
            return None
        allow = share_allowances(demands, self.tenant_weights,
                                 min(self.share_step_tokens, self.max_num_batched_tokens))
        for r, n in zip(self.running, needs, strict=True):
            if n == 1:  # decodes always run: charged first
                allow[r.tenant] -= 1
        return allow

    def schedule(self, now, executor):
        if not self.share_step_tokens:  # off (the default): no pass over the running requests
            return super().schedule(now, executor)
        needs = [executor.num_new_tokens(r) for r in self.running]
        self._allow = self._compete(needs)
        try:
            return super().schedule(now, executor)
        finally:
            self._allow = None

    def admit_waiting(self, now, budget, executor, out) -> None:
        alone = self._allow is None  # a decode run's call: every running request decodes
        if alone and self.share_step_tokens:
            self._allow = self._compete([1] * len(self.running))
        try:
            super().admit_waiting(now, budget, executor, out)
        finally:
            if alone:
                self._allow = None

    def _grant(self, req, n: int) -> int:
        allow = self._allow
        if allow is None or n <= 1:
            return n
        n = max(min(n, allow[req.tenant]), 0)
        allow[req.tenant] -= n
        return n

    def _chunk_limit(self, req, budget: int) -> int:
        allow = self._allow
        if allow is None:
            return budget
        return max(min(budget, allow.get(req.tenant, budget)), 0)

    def _charge_chunk(self, req, n: int) -> None:
        if self._allow is not None and req.tenant in self._allow:
            self._allow[req.tenant] -= n

    def _share_backfill(self, head) -> list:
        """When `head`'s tenant has no allowance left in this step: the first waiting
        request of each tenant that has some (so one tenant's queue does not hold the
        others' compute back)."""
        allow = self._allow
        if allow is None or allow.get(head.tenant, 1) > 0:
            return []
        seen = {head.tenant}
        out = []
        for r in self._waiting_heads():
            if r.tenant not in seen and allow.get(r.tenant, 0) > 0:
                seen.add(r.tenant)
                out.append(r)
        return out
