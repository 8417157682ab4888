"""simulate_cluster refuses a RoutingConfig for a router other than kvsaga, as the Ray
path does (kvsaga.integrations.ray.router.routing_config): it was ignored without a
word, so a comparison believed to run with the knobs ran without them."""

from __future__ import annotations

import pytest

from kvsaga.routing import RoutingConfig
from kvsaga.sim.cluster import ClusterSimulator, simulate_cluster
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import generate

SESSIONS = generate("swe", 2, seed=3, scale=0.1, arrival_rate=2.0)
CONFIG = SimConfig(kv_memory_bytes=2 * 2**30, scheduler="fcfs")


@pytest.mark.parametrize("router", ["affinity", "round-robin"])
def test_a_routing_config_for_another_router_is_refused(router):
    with pytest.raises(ValueError, match=f"kvsaga router only, not '{router}'"):
        simulate_cluster(SESSIONS, CONFIG, gpus=2, router=router,
                         routing=RoutingConfig(steal_margin=1.0))


def test_the_kvsaga_router_takes_it():
    """The router routes with the very config given (a name check alone passed with the
    config dropped: review s46 simcluster, mut_routing_config.py)."""
    routing = RoutingConfig(steal_margin=1.0)
    sim = ClusterSimulator(SESSIONS, CONFIG, gpus=2, router="kvsaga", routing=routing)
    assert sim.router.config is routing
    assert sim.run().row()["router"] == "kvsaga"
