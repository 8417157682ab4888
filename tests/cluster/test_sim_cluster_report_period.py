"""Lagging load reports in the cluster simulator (`report_period_s`,
kvsaga/sim/cluster_reports.py; review s49 simcluster, "Design for lagging reports").

Before session 49 every routing read each GPU's live state, so a steal that passed the
router's room test never had its import refused; a serving replica's report lags a stats
period. The default stays live: its rows are those recorded before."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvsaga.routing import RoutingConfig
from kvsaga.sim.cluster import ClusterSimulator, simulate_cluster
from kvsaga.sim.cluster_reports import LaggingReports, report_phase
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import WORKLOADS, generate
from tests.cluster.sim_sessions import session as _session

ROOT = Path(__file__).resolve().parents[2]


def _trace(family: str, load: float):
    rate = WORKLOADS[family].arrival_rate * 4 / 0.1 * load
    return generate(family, 16, seed=5, arrival_rate=rate, scale=0.1)


# Rows of the code before session 49 (b5e3218), 4 GPUs, 2G KV each, lru, tool hints.
OLD_ROWS = {
    ("swe", "kvsaga", "workflow", 4.0): dict(
        tct_mean_s=11.597496679882227, tct_p95_s=26.73006003266653,
        load_imbalance=1.0394909591730288, migrated_gb=6.115295232, num_moved=12,
        num_migrated=12, recomputed_tokens=77, hit_rate=0.9614851813223365,
        makespan_s=38.137528722711984),
    ("web", "kvsaga", "workflow", 1.0): dict(
        tct_mean_s=4.972031194585331, tct_p95_s=11.398919548555991,
        load_imbalance=1.1003661591183769, migrated_gb=4.47741952, num_moved=12,
        num_migrated=12, recomputed_tokens=96, hit_rate=0.9363222461591613,
        makespan_s=15.327022821091647),
    ("swe", "round-robin", "fcfs", 4.0): dict(
        tct_mean_s=14.690470839322902, tct_p95_s=35.07017350428648,
        load_imbalance=1.0478281449316171, migrated_gb=0.0, num_moved=294,
        num_migrated=0, recomputed_tokens=289335, hit_rate=0.7177744033280581,
        makespan_s=46.81682690267756),
}


@pytest.mark.parametrize("case", list(OLD_ROWS))
@pytest.mark.parametrize("period", [None, 0])
def test_live_reports_by_default_give_the_rows_recorded_before(case, period):
    family, router, scheduler, load = case
    config = SimConfig(kv_memory_bytes=2 * 2**30, policy="lru", scheduler=scheduler)
    row = simulate_cluster(_trace(family, load), config, gpus=4, router=router,
                           report_period_s=period).row()
    want = OLD_ROWS[case]
    assert {k: row[k] for k in want} == pytest.approx(want, rel=1e-12)
    assert (row["report_period_s"], row["num_refused"], row["refused_gb"]) == (None, 0, 0.0)


@pytest.mark.parametrize("bad", [-0.5, math.nan, math.inf, "0.5", True])
def test_a_bad_report_period_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match="report_period_s must be a finite number"):
        ClusterSimulator(_trace("web", 1.0), SimConfig(kv_memory_bytes=2 * 2**30),
                         gpus=2, report_period_s=bad)


def test_a_gpus_ticks_are_a_period_apart_from_its_own_phase():
    phases = [report_phase(i, 0.5) for i in range(8)]
    assert phases[0] == 0.0 and all(0.0 <= p < 0.5 for p in phases)
    assert len(set(phases)) == 8  # the GPUs do not all refresh at once
    r = LaggingReports(0.5, phases[1])  # 0.309...
    assert r.tick_at(0.31) == pytest.approx(phases[1])
    assert r.tick_at(0.30) == pytest.approx(phases[1] - 0.5)
    assert r.tick_at(10.0) == pytest.approx(phases[1] + 19 * 0.5)


def _state(stats) -> tuple:
    """What a report says of a GPU's load, without its stamp."""
    return (stats.free_blocks, stats.evictable_blocks, stats.queue_depth, stats.running,
            stats.paused, stats.busy_s, dict(stats.session_tokens),
            dict(stats.tenant_service))


def test_a_read_is_the_gpus_state_at_its_last_tick():
    """At every routing, each built GPU's report is stamped with its last tick at or
    before the router's clock and shows the GPU's state then: its live state after the
    last change before that tick (recorded here after each action, at the GPU's clock,
    and each move, at the router's). A GPU's clock may be behind a move the router made
    (an idle GPU acts at its clock after a routing at a later time): its changes count
    in the order they were made, each at the latest time of those so far."""
    period = 0.5
    sim = ClusterSimulator(_trace("swe", 4.0), SimConfig(kv_memory_bytes=2 * 2**30,
                                                         scheduler="workflow"),
                           gpus=4, router="kvsaga", report_period_s=period)
    history: dict[str, list[tuple[float, tuple]]] = {}

    def record(gpu, t):
        changes = history.setdefault(gpu.name, [])
        changes.append((max(t, changes[-1][0]) if changes else t, _state(gpu.live_stats())))

    class Recorded(sim.gpu_class):
        def advance_one(self):
            t = self.now
            super().advance_one()
            record(self, t)

    sim.gpu_class = Recorded
    move = sim._move

    def moved(session, old, new, migrate):
        delay = move(session, old, new, migrate)
        if delay is not None:
            for g in (old, new):
                record(g, sim.now)
        return delay
    sim._move = moved
    route, reads, stale = sim.router.route, [], []

    def check(req, stats):
        for g in sim.gpus.active:
            st = stats[g.name]
            tick = g.reports.tick_at(sim.now)
            changes = history.get(g.name, [])
            before = [s for t, s in changes if t < tick]
            reads.append((st.taken_at, _state(st)) == (tick, before[-1] if before else
                                                        _state(sim.gpus.fresh_stats())))
            stale.append(changes and _state(st) != changes[-1][1])
        return route(req, stats)
    sim.router.route = check
    sim.run()
    assert len(reads) > 500 and all(reads)
    assert sum(stale) > 100  # (the live state had moved on)


def test_a_report_copies_the_sessions_tokens():
    """A lagging report is a copy: a session's growth after its tick does not show."""
    sim = ClusterSimulator(_trace("swe", 4.0), SimConfig(kv_memory_bytes=2 * 2**30),
                           gpus=2, router="kvsaga", report_period_s=1.0)
    sim.run()
    for g in sim.gpus.active:
        assert type(g.routing_stats().session_tokens) is dict


# Two GPUs of 320 blocks. D, S2, S3 and S share a prefix group on gpu0. gpu1's report
# ticks at 0.618 + k (its phase at a 1 s period): R runs there across 0.618, so that
# report shows one step running and the pool free; R finishes, then Q arrives and fills
# gpu1 (the router counts Q as the step its report shows running). When S's tool returns
# (1.26 s) gpu0 has a step waiting and gpu1, by its report, none and room for S: it steals
# S, and S's import finds Q's blocks.
LAG_SESSIONS = [
    _session("D", 0.0, "g", [(300, 1000, 0)]),
    _session("S2", 0.001, "g", [(300, 1000, 0)]),
    _session("S3", 0.002, "g", [(300, 1000, 0)]),
    _session("S", 0.003, "g", [(1000, 10, 1.0), (50, 10, 0)]),
    _session("R", 0.58, "r", [(100, 5, 0)]),
    _session("Q", 1.0, "q", [(4500, 500, 0)]),
]
LAG_CONFIG = SimConfig(num_gpu_blocks=320, scheduler="fcfs", policy="lru")


def _lag_run(period):
    routing = RoutingConfig(bytes_per_token=LAG_CONFIG.cost.kv_spec.bytes_per_token,
                            cost=LAG_CONFIG.cost, steal_margin=1.0, busy_balance=0.0,
                            prefix_slack=100.0)
    sim = ClusterSimulator(LAG_SESSIONS, LAG_CONFIG, gpus=2, router="kvsaga",
                           routing=routing, report_period_s=period)
    return sim, sim.run()


def test_a_steal_on_a_stale_report_is_refused_without_patching_the_room_test():
    sim, res = _lag_run(1.0)
    assert sim.router.num_stolen == 1
    assert (res.num_refused, res.num_moved, res.num_migrated) == (1, 0, 0)
    # The refused import exported S's context: 1010 tokens, 63 full blocks of 2 MiB.
    assert res.refused_gb == pytest.approx(63 * LAG_CONFIG.cost.block_bytes / 1e9)
    assert res.recomputed_tokens == 0  # S ran on at home, on its KV
    assert res.report_period_s == 1.0
    live_sim, live = _lag_run(None)  # the live report shows gpu1 full: no steal
    assert (live_sim.router.num_stolen, live.num_refused) == (0, 0)
    assert live_sim._finished["S"] < sim._finished["S"]


_ROWS = """
import json, sys
from kvsaga.sim.cluster import simulate_cluster
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import generate
s = generate("bfcl", 24, seed=4, arrival_rate=40.0, scale=0.1)
for t, sid in enumerate(("a", "b", "c")):
    s[t::3] = [__import__("dataclasses").replace(x, tenant=sid) for x in s[t::3]]
row = simulate_cluster(s, SimConfig(kv_memory_bytes=2 * 2**30, scheduler="workflow"),
                       gpus=3, router="kvsaga", report_period_s=0.25).row()
print(json.dumps(row, sort_keys=True))
"""


def test_lagged_rows_do_not_depend_on_the_hash_seed():
    rows = set()
    for seed in ("0", "1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", _ROWS], env=env, capture_output=True,
                             text=True, check=True, cwd=ROOT).stdout
        rows.add(out)
    assert len(rows) == 1
    assert json.loads(rows.pop())["report_period_s"] == 0.25
