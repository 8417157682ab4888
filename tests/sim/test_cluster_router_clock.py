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


@pytest.mark.parametrize("router", ["kvsaga", "round-robin"])
def test_the_routers_clock_never_steps_back(router):
    """A step end a GPU's batch ran past is handled at that GPU's clock, and a release
    routed after it may be earlier: the router's clock went back with it (71 readings of
    846 in review repro clock_back.py), and `KvsagaRouter._cool` takes a clock before a
    refusal as its cool-off over."""
    sessions = generate("swe", 12, seed=1, scale=0.1, arrival_rate=2.0)
    sim = ClusterSimulator(sessions, CONFIG, gpus=3, router=router)
    readings = []
    clock = sim.router.clock
    sim.router.clock = lambda: readings.append(clock()) or readings[-1]
    sim.run()
    assert len(readings) > 100
    assert all(b >= a for a, b in zip(readings, readings[1:], strict=False))
