"""The fleet's fair-share gate weighs tenants as the replicas' schedulers do (review s51
ray 2): `kvsaga-serve --replicas N --scheduler-params '{"tenant_weights": ...}'` reaches
the kvsaga router Ray Serve builds (ServerSettings.scheduler_params -> build_application's
request router kwargs -> KvsagaRouter's FairShare). Before, the router weighed every tenant
1: a tenant weighted 4:1 that got its weighted share (80%) looked 1.6x over-served and was
held back from idle replicas while the other tenant waited."""

from __future__ import annotations

import pytest

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest

SERVICE = {"big": 800.0, "light": 200.0}  # big's weighted share at 4:1


def _fleet() -> dict:
    return {"a": ReplicaStats(total_blocks=1000, free_blocks=1000, busy_s=50.0,
                              tenant_service=SERVICE),
            "b": ReplicaStats(total_blocks=1000, free_blocks=900, queue_depth=6, running=4,
                              busy_s=50.0, session_tokens={"big/s": 1000},
                              tenant_service={})}


def _big_step(r: KvsagaRouter):
    """light's session waits on the loaded b; then big's step (home b) is routed."""
    busy_a = {**_fleet(), "a": ReplicaStats(total_blocks=1000, free_blocks=1000,
                                            queue_depth=20, running=4,
                                            tenant_service=SERVICE)}
    assert r.route(RouteRequest(session="light/t", tenant="light"), busy_a).replica == "b"
    r.homes["big/s"] = "b"
    return r.route(RouteRequest(session="big/s", tenant="big"), _fleet())


def test_a_tenant_at_its_weighted_share_is_stolen_for():
    r = KvsagaRouter(["a", "b"], tenant_weights={"big": 4.0})
    route = _big_step(r)
    assert r.fair.share_ratio("big") == pytest.approx(1.0)
    assert (route.replica, route.moved_from, route.reason) == ("a", "b", "steal")
    # Unweighted (the router before), big looks 1.6x over-served and is held back.
    assert _big_step(KvsagaRouter(["a", "b"])).reason == "affinity"


def test_bad_router_weights_are_refused_naming_them():
    with pytest.raises(ValueError, match=r"FairShare.weights: .*tenant_weights\['x'\]"):
        KvsagaRouter(tenant_weights={"x": 0.0})


def test_the_replicas_scheduler_weights_reach_the_ray_router():
    pytest.importorskip("ray.serve")
    from kvsaga.integrations.ray.deployment import build_application, router_tenant_weights
    from kvsaga.serve.settings import ServerSettings
    from tests.cluster.test_ray_routing_config import engine_router_config, router_from

    settings = ServerSettings(scheduler="workflow",
                              scheduler_params={"tenant_weights": {"big": 4, None: 2.0}})
    # The anonymous tenant (the scheduler's None) is "anon" to the router, as the
    # gateway and the replicas' reports name it (JSON keys: Ray checks the kwargs so).
    assert router_tenant_weights(settings) == {"big": 4.0, "anon": 2.0}
    r = router_from(build_application(settings, 2))
    assert r.kv_router.fair.weights == {"big": 4.0, "anon": 2.0}
    assert router_from(build_application(ServerSettings(), 2)).kv_router.fair.weights == {}
    # Ray Serve's default router takes no kwargs; affinity and round-robin no weights.
    for other in ("ray-default", "affinity"):
        cfg = engine_router_config(build_application(settings, 2, router=other))
        assert "tenant_weights" not in cfg.request_router_kwargs


def test_weights_for_another_router_are_refused():
    pytest.importorskip("ray.serve")
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from kvsaga.integrations.ray.router import KvsagaRequestRouter

    r = KvsagaRequestRouter(DeploymentID(name="KvsagaEngine"), DeploymentHandleSource.UNKNOWN)
    with pytest.raises(ValueError, match="tenant_weights apply to the kvsaga router only"):
        r.initialize_state(router="affinity", tenant_weights={"big": 4.0})


def test_a_none_tenant_weight_is_refused_naming_anon():
    """The router names the anonymous tenant "anon" (the gateway, the replicas' reports):
    a None key, the scheduler's name for it, was taken and weighed nobody (review s51
    diffray 3)."""
    with pytest.raises(ValueError, match=r"tenant None .*\"anon\""):
        KvsagaRouter(["a"], tenant_weights={None: 2.0, "big": 4.0})
    assert KvsagaRouter(["a"], tenant_weights={"anon": 2.0}).fair.weights == {"anon": 2.0}
