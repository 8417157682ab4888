"""The per-tenant figures of a cluster row: each tenant's task count and mean TCT
(`tenant_tct_means`, `ClusterResult.tenants`), and its slowdown against its sessions run
alone on 1/k of every GPU (`add_cluster_tenant_slowdowns`, what `kvsaga sim --gpus` adds).

Separate from `kvsaga.sim.cluster` because it is fairness accounting over finished runs,
not part of serving a trace: the cluster simulator only hands it the sessions' TCTs, and the
tenant-alone runs are one more caller of `simulate_cluster` (imported when first run:
`kvsaga.sim.cluster` imports this module for the means).
"""

from __future__ import annotations

from collections.abc import Sequence

from kvsaga.sim.compare import add_tenant_slowdowns
from kvsaga.sim.config import SimConfig
from kvsaga.sim.metrics import tenant_key
from kvsaga.sim.trace import Session


def tenant_tct_means(sessions: Sequence[Session],
                     tct: Sequence[float]) -> dict[str, dict[str, float]] | None:
    """Per tenant (sorted), its `tasks` and `tct_mean_s`, `tct` being each session's TCT
    in `sessions`' order; None with a single tenant (as `SimResult.tenants`)."""
    by_tenant: dict[str, list[float]] = {}
    for s, t in zip(sessions, tct, strict=True):
        by_tenant.setdefault(tenant_key(s.tenant), []).append(t)
    if len(by_tenant) <= 1:
        return None
    return {t: {"tasks": len(v), "tct_mean_s": sum(v) / len(v)}
            for t, v in sorted(by_tenant.items())}


def add_cluster_tenant_slowdowns(row: dict, sessions: Sequence[Session], config: SimConfig,
                                 gpus: int, router: str,
                                 report_period_s: float | None = None) -> None:
    """`add_tenant_slowdowns` for a cluster row with several tenants: each tenant's mean TCT
    over its mean TCT when its sessions alone run on 1/k of the cluster (k tenants: the
    same `gpus` GPUs, each `tenant_share(config, k)`, behind the same router, with the
    same reports; on one GPU, the single-GPU row's measure).

    Raises:
        ValueError: a tenant's longest session does not fit 1/k of a GPU's KV blocks
            (`tenant_share_misfit`), before any simulation.
    """
    from kvsaga.sim.cluster import simulate_cluster  # it imports this module at load

    add_tenant_slowdowns(row, sessions, config, alone=lambda own, share: simulate_cluster(
        own, share, gpus=gpus, router=router, report_period_s=report_period_s).tct_mean_s)
