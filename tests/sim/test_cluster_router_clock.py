"""The cluster simulator's router reads the simulation's clock, not the wall clock
(`Router.clock` defaults to time.time): a machine slow enough that routing decisions lie
far apart in wall time changed the routing (review repro wall.py: idle-session expiry ran
on wall time)."""

from __future__ import annotations

import itertools
import time

import pytest

import kvsaga.routing as routing
from kvsaga.sim.cluster import ClusterSimulator, simulate_cluster
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import generate

CONFIG = SimConfig(policy="lru", kv_memory_bytes=4 * 2**30)


@pytest.mark.parametrize("router", ["kvsaga", "affinity", "round-robin"])
def test_results_do_not_depend_on_the_wall_clock(router, monkeypatch):
    sessions = generate("swe", 12, seed=1, scale=0.1, arrival_rate=2.0)  # overlapping
    plain = simulate_cluster(sessions, CONFIG, gpus=3, router=router).row()
    ticks = itertools.count()
    slow = staticmethod(lambda: time.time() + 1000.0 * next(ticks))  # 1000 s per reading
    monkeypatch.setattr(routing.Router, "clock", slow)
    assert simulate_cluster(sessions, CONFIG, gpus=3, router=router).row() == plain


def test_the_router_reads_simulated_time():
    sim = ClusterSimulator(generate("swe", 4, seed=1, scale=0.05), CONFIG, gpus=2,
                           router="kvsaga")
    assert sim.router.clock() == 0.0
    res = sim.run()
    assert 0.0 < sim.router.clock() <= res.makespan_s
    assert sim.router.session_idle_s is None
