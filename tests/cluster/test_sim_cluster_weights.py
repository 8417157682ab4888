"""The cluster simulator's kvsaga router weighs the fleet's fair share by the GPUs'
scheduler `tenant_weights`, as the Ray Serve deployment's does
(`deployment.router_tenant_weights`). Before, its GPUs' schedulers used the weights and its
router weighed every tenant 1 (review s51 diffray 4)."""

from __future__ import annotations

import pytest

from kvsaga.routing import KvsagaRouter
from kvsaga.sim.cluster import ClusterSimulator
from kvsaga.sim.config import SimConfig


def _config(weights) -> SimConfig:
    return SimConfig(scheduler="workflow", scheduler_params={"tenant_weights": weights})


def test_the_sim_router_weighs_tenants_as_its_gpus_schedulers():
    sim = ClusterSimulator([], _config({"a": 4.0, None: 2.0}), gpus=2)
    assert isinstance(sim.router, KvsagaRouter)
    # A session without a tenant is "default" to the router (`tenant_key`).
    assert sim.router.fair.weights == {"a": 4.0, "default": 2.0}


def test_unweighted_and_other_routers_are_as_before():
    assert ClusterSimulator([], SimConfig(scheduler="workflow"), gpus=2).router.fair.weights == {}
    for router in ("affinity", "round-robin"):
        sim = ClusterSimulator([], _config({"a": 4.0}), gpus=2, router=router)
        assert not hasattr(sim.router, "fair")


def test_none_and_default_weighed_apart_are_refused():
    with pytest.raises(ValueError, match=r"tenant None and 'default'"):
        ClusterSimulator([], _config({None: 2.0, "default": 3.0}), gpus=2)
