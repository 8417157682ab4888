"""Agent Fair Share across replicas: per-tenant service summed over the fleet, which the
`kvsaga` router (`kvsaga.routing`) reads before it steals a step for a tenant
(`FairShare.holds_back`)."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from kvsaga._validate import is_number
from kvsaga.replica_stats import ReplicaStats
from kvsaga.scheduler.fair_share import SHARE_LAG_TOKENS, check_weights


@dataclass(slots=True)
class FairShare:
    """Per-tenant service summed over every replica: the fleet view of Agent Fair Share.

    Each replica's scheduler accounts the service it gives (GPU seconds or tokens); the
    router adds it up here, so a tenant that is served a lot on one replica has used its
    share everywhere.

    Attributes:
        weights: a tenant's weight (default 1.0); its fair share is weight / total weight
            of the tenants the shares are over (`live`). Checked as the scheduler's
            `tenant_weights` (`check_weights`: 0, negative or NaN made a ratio NaN or
            divided by zero).
        lag: service (tokens, per unit of weight) that a tenant entering the live set is
            at most behind the least-served live tenant (`enter`): the scheduler's
            `share_lag_tokens` and default, for the same reason (`ComputeShares._catch_up`).
        live: the tenants the shares are over (`enter`); None: every tenant in `usage`.
        credit: service added to a live tenant's reported usage when it entered
            (`enter`), kept while it stays live.
    """

    weights: dict[str, float] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)
    lag: float = SHARE_LAG_TOKENS
    live: set[str] | None = field(default=None, init=False)
    credit: dict[str, float] = field(default_factory=dict, init=False)
    # The entry floor when no live tenant stays (`enter`).
    _virtual: float = field(default=0.0, init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self.weights = check_weights(self.weights)
        except ValueError as e:
            raise ValueError(f"FairShare.weights: {e}") from None
        if not is_number(self.lag) or not 0 <= self.lag < math.inf:
            raise ValueError(f"FairShare.lag must be a finite number >= 0, got {self.lag!r}")

    def record(self, tenant: str, service: float) -> None:
        """Add service a tenant received on any replica."""
        if not service >= 0:
            raise ValueError(f"service must be >= 0, got {service!r}")
        self.usage[tenant] = self.usage.get(tenant, 0.0) + service

    def observe(self, reports: Iterable[ReplicaStats | None],
                live: Collection[str] | None = None) -> None:
        """Take the fleet's usage from the replicas' own counts (`tenant_service`, each
        cumulative on its replica): the sum over the replicas that report any. Replicas
        that report none leave the usage recorded so far as it is. `live`: the tenants
        the shares are over from now on (`enter`); None leaves them as they are."""
        total: dict[str, float] = {}
        for st in reports:
            if st is None:
                continue
            for t, v in st.tenant_service.items():
                total[t] = total.get(t, 0.0) + v
        if total:
            self.usage = total
        if live is not None:
            self.enter(live)

    def enter(self, live: Collection[str]) -> None:
        """Make the shares over `live` (the tenants with a session or a step in flight):
        a tenant with no session left anywhere no longer counts in the total service or
        the weight sum. Replicas keep its service long after it left (their idle limit),
        which lowered every live tenant's ratio: one taking 99% of the live service was
        not held back. A tenant entering `live` has its service raised to at least the
        least weighted service of the live tenants that stay, less `lag` (when none
        stays: of the last two or more, never lowered), as the replica scheduler's
        catch-up does: the replicas' service is cumulative since they started, and
        without the floor a tenant that had the fleet to itself for an hour stayed above
        a newcomer's share (held back while the newcomer waited) until the newcomer's
        whole service matched that hour."""
        live = set(live)
        before = self.live if self.live is not None else set()
        if len(before) >= 2:
            self._virtual = max(self._virtual, min(self._weighted(t) for t in before))
        stay = live & before
        least = min((self._weighted(t) for t in stay), default=self._virtual)
        credit = {t: c for t, c in self.credit.items() if t in stay}
        for t in live - before:
            w = self.weights.get(t, 1.0)
            raise_to = (least - self.lag) * w - self.usage.get(t, 0.0)
            if raise_to > 0:
                credit[t] = raise_to
        self.credit = credit
        self.live = live

    def _service(self, tenant: str) -> float:
        """A tenant's service: its reported usage plus its entry credit (`enter`)."""
        return self.usage.get(tenant, 0.0) + self.credit.get(tenant, 0.0)

    def _weighted(self, tenant: str) -> float:
        return self._service(tenant) / self.weights.get(tenant, 1.0)

    def holds_back(self, tenant: str, waiting: Iterable[str], max_share: float) -> bool:
        """Whether an idle replica's capacity is held back from `tenant` (no step is
        stolen for it): its share ratio exceeds `max_share` while another tenant of
        `waiting` (the tenants with work waiting) has had less than its fair share (ratio
        below 1). Idle capacity thus goes first to the tenants served least, and to
        whoever has work when nobody below their share is waiting: a tenant that was
        served once and left does not keep the others from being stolen for."""
        if not self.share_ratio(tenant) > max_share:
            return False
        return any(t != tenant and self.share_ratio(t) < 1.0 for t in waiting)

    def share_ratios(self, tenants: Iterable[str]) -> dict[str, float]:
        """`share_ratio` of each of `tenants`, equal to it bit for bit: the total service
        and weight of the live tenants are summed once for all those among them (each
        `share_ratio` sums them over every live tenant: a router's steal decision with 64
        tenants read 64 x 64 services, routing3), the others alone."""
        base = set(self.usage) if self.live is None else self.live
        sums = None
        out: dict[str, float] = {}
        for t in tenants:
            if t not in base:
                out[t] = self.share_ratio(t)
                continue
            if sums is None:
                sums = (math.fsum(self._service(u) for u in base),
                        math.fsum(self.weights.get(u, 1.0) for u in base))
            out[t] = self._ratio(t, *sums)
        return out

    def _ratio(self, tenant: str, total: float, wsum: float) -> float:
        if total <= 0:
            return 0.0
        fair = self.weights.get(tenant, 1.0) / wsum
        return (self._service(tenant) / total) / fair

    def share_ratio(self, tenant: str) -> float:
        """Received share / fair share (1.0: exactly fair; 0.0: unserved or no usage yet),
        over the `live` tenants and `tenant`; `holds_back` reads them only while someone
        below their share has work waiting."""
        tenants = (set(self.usage) if self.live is None else set(self.live)) | {tenant}
        # fsum: correctly rounded whatever the order, and a set of str iterates in an order
        # PYTHONHASHSEED picks (with sum, a tenant exactly at its share read 1.0 in one
        # process and 0.9999999999999999 in another, and holds_back decided differently)
        return self._ratio(tenant, math.fsum(self._service(t) for t in tenants),
                           math.fsum(self.weights.get(t, 1.0) for t in tenants))
