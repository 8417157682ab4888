"""What a cluster simulation measures and how its rows print: `ClusterResult` (one run of
`kvsaga.sim.cluster.ClusterSimulator`) and the aligned table of its rows (`format_rows`).

Split from kvsaga/sim/cluster.py in session 46, unchanged, so that both modules stay under
600 lines: cluster.py runs the GPUs behind the router; this module is its result. Both
names are re-exported there, where bench/cluster.py and `kvsaga sim` import them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ClusterResult:
    """One cluster run.

    Attributes:
        router / gpus / policy / scheduler: what ran.
        tct_mean_s / tct_p95_s: task completion time over all sessions.
        load_imbalance: max / mean busy time over the GPUs (1.0: perfectly even).
        migrated_gb: KV moved between GPUs by migrations, in GB.
        num_moved / num_migrated: steps that changed GPU, and those whose KV moved.
        recomputed_tokens: summed over GPUs. hit_rate: hit over queried prompt tokens, both
            summed over GPUs. makespan_s: the latest GPU clock (the max over GPUs, not a
            sum), from t=0 of the trace clock (as `SimResult.makespan_s`). tasks_per_hour:
            sessions per hour of that makespan.
        tenants: as `SimResult.tenants` (with more than one tenant, per tenant: `tasks`,
            `tct_mean_s`; else None). `kvsaga sim --gpus` adds each tenant's `tct_alone_s`
            and `slowdown`, and `afs_max_slowdown_ratio`, to its rows (both:
            `kvsaga.sim.cluster_tenants`).
        report_period_s: seconds between the GPUs' load reports to the router, or None:
            live reports (`ClusterSimulator`).
        num_refused / refused_gb: steps whose move the receiving GPU refused (no room
            for the KV import: possible only when reports lag), and the KV they exported
            for nothing, in GB. Not among `CLUSTER_COLUMNS`: bench/cluster.py reads the
            tables bench/RESULTS.md holds back by those columns (`--baselines`), and
            they predate these fields; it prints them beside a lagged run's table.
        Not measured on a cluster: the KV shares (`kv_utilization` ...) and
        `slo_attainment` of `SimResult` (`kvsaga sim --gpus` says so).
    """

    router: str
    gpus: int
    policy: str
    scheduler: str
    num_sessions: int
    tct_mean_s: float
    tct_p95_s: float
    load_imbalance: float
    migrated_gb: float
    num_moved: int
    num_migrated: int
    recomputed_tokens: int
    hit_rate: float
    makespan_s: float
    tasks_per_hour: float
    tenants: dict[str, dict[str, float]] | None = None
    report_period_s: float | None = None
    num_refused: int = 0
    refused_gb: float = 0.0

    def row(self) -> dict:
        """A JSON-ready dict (`tenants` a copy: slowdowns are added to the row's)."""
        out = dict(self.__dict__)
        if self.tenants is not None:
            out["tenants"] = {t: dict(e) for t, e in self.tenants.items()}
        return out


CLUSTER_COLUMNS = (
    ("router", "router", "{}"), ("gpus", "gpus", "{}"), ("scheduler", "scheduler", "{}"),
    ("policy", "policy", "{}"), ("tct mean s", "tct_mean_s", "{:.1f}"),
    ("tct p95 s", "tct_p95_s", "{:.1f}"), ("tasks/h", "tasks_per_hour", "{:.1f}"),
    ("imbalance", "load_imbalance", "{:.3f}"), ("migr GB", "migrated_gb", "{:.2f}"),
    ("moved", "num_moved", "{:,}"), ("recomputed", "recomputed_tokens", "{:,}"),
    ("hit rate", "hit_rate", "{:.3f}"),
)


def format_rows(rows: list[dict]) -> str:
    """The cluster rows as an aligned text table."""
    cells = [[t for t, _, _ in CLUSTER_COLUMNS]]
    cells += [[fmt.format(r[k]) for _, k, fmt in CLUSTER_COLUMNS] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(CLUSTER_COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True))
                     for r in cells)

