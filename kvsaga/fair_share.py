"""Agent Fair Share across replicas: per-tenant service summed over the fleet, which the
`kvsaga` router (`kvsaga.routing`) reads before it steals a step for a tenant
(`FairShare.holds_back`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kvsaga.replica_stats import ReplicaStats


@dataclass(slots=True)
class FairShare:
    """Per-tenant service summed over every replica: the fleet view of Agent Fair Share.

    Each replica's scheduler accounts the service it gives (GPU seconds or tokens); the
    router adds it up here, so a tenant that is served a lot on one replica has used its
    share everywhere.

    Attributes:
        weights: a tenant's weight (default 1.0); its fair share is weight / total weight
            of the tenants seen.
    """

    weights: dict[str, float] = field(default_factory=dict)
    usage: dict[str, float] = field(default_factory=dict)

    def record(self, tenant: str, service: float) -> None:
        """Add service a tenant received on any replica."""
        if not service >= 0:
            raise ValueError(f"service must be >= 0, got {service!r}")
        self.usage[tenant] = self.usage.get(tenant, 0.0) + service

    def observe(self, reports: Iterable[ReplicaStats | None]) -> None:
        """Take the fleet's usage from the replicas' own counts (`tenant_service`, each
        cumulative on its replica): the sum over the replicas that report any. Replicas
        that report none leave the usage recorded so far as it is."""
        total: dict[str, float] = {}
        for st in reports:
            if st is None:
                continue
            for t, v in st.tenant_service.items():
                total[t] = total.get(t, 0.0) + v
        if total:
            self.usage = total

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

    def share_ratio(self, tenant: str) -> float:
        """Received share / fair share (1.0: exactly fair; 0.0: unserved or no usage yet).
        Fair shares are over every tenant served so far; `holds_back` reads them only
        while someone below their share has work waiting."""
        total = sum(self.usage.values())
        if total <= 0:
            return 0.0
        tenants = set(self.usage) | {tenant}
        wsum = sum(self.weights.get(t, 1.0) for t in tenants)
        fair = self.weights.get(tenant, 1.0) / wsum
        return (self.usage.get(tenant, 0.0) / total) / fair
