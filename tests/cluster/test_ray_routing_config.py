"""`kvsaga-serve --replicas N --routing-config JSON` reaches the kvsaga router that Ray
Serve builds for the engine replicas: ServerSettings.routing_config -> build_application's
request router kwargs -> KvsagaRequestRouter's RoutingConfig. No cluster: the application
is only built, and the router is made from its kwargs as Ray Serve makes it."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentHandleSource, DeploymentID  # noqa: E402

from kvsaga.integrations.ray.deployment import ENGINE_DEPLOYMENT, build_application  # noqa: E402
from kvsaga.integrations.ray.router import KvsagaRequestRouter  # noqa: E402
from kvsaga.routing import RoutingConfig  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402


def engine_router_config(app):
    """The engine deployment's RequestRouterConfig in a built (not deployed) application:
    the gateway's first bound argument is the engine deployment."""
    engine = app._bound_deployment.init_args[0]._bound_deployment
    assert engine.name == ENGINE_DEPLOYMENT
    return engine._deployment_config.request_router_config


def router_from(app) -> KvsagaRequestRouter:
    cfg = engine_router_config(app)
    assert cfg.request_router_class == "kvsaga.integrations.ray.router.KvsagaRequestRouter"
    r = KvsagaRequestRouter(DeploymentID(name=ENGINE_DEPLOYMENT), DeploymentHandleSource.UNKNOWN)
    r.initialize_state(**cfg.request_router_kwargs)
    return r


def test_the_settings_routing_config_configures_the_replicas_router():
    settings = ServerSettings(routing_config={"busy_balance_quiet": 0, "steal_margin": 2})
    r = router_from(build_application(settings, 2))
    assert r.kv_router.name == "kvsaga"
    assert r.kv_router.config == RoutingConfig(busy_balance_quiet=0, steal_margin=2)
    # Without it the router keeps RoutingConfig's defaults.
    assert router_from(build_application(ServerSettings(), 2)).kv_router.config == RoutingConfig()


def test_router_kwargs_override_the_settings_field_by_field():
    settings = ServerSettings(routing_config={"busy_balance_quiet": 0, "steal_margin": 2})
    app = build_application(settings, 2, router_kwargs={"steal_margin": 4})
    assert router_from(app).kv_router.config == RoutingConfig(busy_balance_quiet=0,
                                                              steal_margin=4)


@pytest.mark.parametrize("router", ["affinity", "round-robin", "ray-default"])
def test_another_router_with_a_routing_config_is_refused(router):
    settings = ServerSettings(routing_config={"busy_balance_quiet": 0})
    with pytest.raises(ValueError, match="apply to the kvsaga router only"):
        build_application(settings, 2, router=router)
