"""KvsagaRequestRouter's configuration (request_router_kwargs) with bad values, on Ray
Serve's fake replicas (no cluster): RoutingConfig fields given with another router were
dropped without a word, and an unknown field was a bare TypeError from the dataclass."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentHandleSource, DeploymentID  # noqa: E402

from kvsaga.integrations.ray.router import KvsagaRequestRouter  # noqa: E402


def _router(**kwargs) -> KvsagaRequestRouter:
    r = KvsagaRequestRouter(DeploymentID(name="KvsagaEngine"), DeploymentHandleSource.UNKNOWN)
    r.initialize_state(**kwargs)
    return r


@pytest.mark.parametrize("kwargs,words", [
    ({"router": "round-robin", "steal_margin": 1.0}, "apply to the kvsaga router only"),
    ({"router": "affinity", "prefix_memory": 8}, "apply to the kvsaga router only"),
    ({"router": "kvsaga", "steal_margin": 1.0, "stael_min_waiting": 1},
     r"unknown RoutingConfig field\(s\) \['stael_min_waiting'\]"),
    ({"router": "kvsaga", "prefix_memory": -1}, "RoutingConfig.prefix_memory"),
    ({"router": "nope"}, "unknown router 'nope'"),
])
def test_bad_router_kwargs_are_value_errors_naming_them(kwargs, words):
    with pytest.raises(ValueError, match=words):
        _router(**kwargs)


def test_good_kwargs_still_configure_the_router():
    r = _router(router="kvsaga", steal_margin=1.5, prefix_memory=16)
    assert r.kv_router.config.steal_margin == 1.5 and r.kv_router.config.prefix_memory == 16
    assert _router(router="round-robin").kv_router.name == "round-robin"


@pytest.mark.parametrize("router,kwargs", [
    ("ray-default", {"steal_margin": 1.0}),  # Ray's own router takes no kwargs: dropped
    ("round-robin", {"steal_margin": 1.0}),
    ("kvsaga", {"no_such_field": 1}),
    ("kvsaga", {"link_bandwidth": 0}),
])
def test_build_application_checks_router_kwargs_up_front(router, kwargs):
    """Checked on the driver when the application is built, not inside the router actor
    once Ray has started it."""
    from kvsaga.integrations.ray.deployment import build_application
    from kvsaga.serve.settings import ServerSettings

    with pytest.raises(ValueError, match="RoutingConfig"):
        build_application(ServerSettings(), 2, router=router, router_kwargs=kwargs)
