"""Agent Fair Share: which tenant's waiting session the `workflow` scheduler admits next.

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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping


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
