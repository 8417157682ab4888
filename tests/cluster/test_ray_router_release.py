"""KvsagaRequestRouter releases each routed request exactly once, through Ray Serve's own
routing loop (`_choose_replica_for_request`) on its fake replicas: a request the caller
gives up on before it reached a replica, a request sent and completed, and a request a
replica rejected and Ray routed again."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import (  # noqa: E402
    DeploymentHandleSource,
    DeploymentID,
    RequestMetadata,
)
from ray.serve.request_router import PendingRequest  # noqa: E402

from tests.cluster.ray_fakes import StatsReplica, make_router  # noqa: E402


def pending(session: str, rid: str) -> PendingRequest:
    return PendingRequest(args=[{"kvsaga": 1, "session": session}], kwargs={},
                          metadata=RequestMetadata(rid, rid))


def replica_id(router, name: str):
    return next(i for i in router.curr_replicas if i.unique_id == name)


def test_a_request_cancelled_before_it_reached_a_replica_is_released():
    """Both replicas never answer Ray's queue-length probe (they are full): each request
    waits in Ray's routing loop, routed by kvsaga, until its caller gives up. Before the
    fix nothing released them: in_flight {'a': 3, 'b': 2} on an idle fleet."""
    async def go():
        router = make_router([StatsReplica("a"), StatsReplica("b")])
        for i in range(5):
            task = asyncio.ensure_future(
                router._choose_replica_for_request(pending(f"t/s{i}", f"r{i}")))
            for _ in range(50):  # until kvsaga has routed it
                await asyncio.sleep(0)
                if f"r{i}" in router._routes:
                    break
            assert f"r{i}" in router._routes
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.sleep(0)
        return router

    router = asyncio.run(go())
    assert router.kv_router.in_flight == {"a": 0, "b": 0}
    assert router._routes == {}


def test_a_sent_request_is_released_once():
    """A request Ray sent (its future got a replica) is released by its completion only,
    once: another request in flight on the same replica stays counted."""
    async def go():
        a = StatsReplica("a")
        a.set_queue_len_response(0)
        router = make_router([a])
        first = await router._choose_replica_for_request(pending("t/s1", "r1"))
        second = await router._choose_replica_for_request(pending("t/s2", "r2"))
        assert first is second is a
        await asyncio.sleep(0)  # the futures' done callbacks
        assert router.kv_router.in_flight == {"a": 2}
        router.on_request_completed(replica_id(router, "a"), "r1")
        router.on_request_completed(replica_id(router, "a"), "r1")  # a stray repeat
        await asyncio.sleep(0)
        assert router.kv_router.in_flight == {"a": 1} and list(router._routes) == ["r2"]

    asyncio.run(go())


def test_a_rejected_request_keeps_its_route_while_ray_routes_it_again():
    """A replica rejects a try (Ray cancels it, and its completion arrives from another
    thread, here after the retry was routed): the retry keeps the decision, and the route
    is released when the retry completes, not by the rejected try's completion."""
    async def go():
        a = StatsReplica("a")
        a.set_queue_len_response(0)
        router = make_router([a])
        pr = pending("t/s1", "r1")
        await router._choose_replica_for_request(pr)
        await router._choose_replica_for_request(pr, is_retry=True)  # the retry
        router.on_request_completed(replica_id(router, "a"), "r1")  # the rejected try
        await asyncio.sleep(0)
        assert "r1" in router._routes and router.kv_router.in_flight == {"a": 1}
        router.on_request_completed(replica_id(router, "a"), "r1")  # the retry
        assert router._routes == {} and router.kv_router.in_flight == {"a": 0}

    asyncio.run(go())


async def route_then_lose_its_replica(rid: str, answers: bool = True):
    """A request routed to a full replica (its probe never answers) whose replica goes
    away while the request waits in Ray's loop: Ray routes the same try again, to the
    other replica, which then answers (if `answers`; else it is full too). Returns the
    router, the task and the other replica."""
    a, b = StatsReplica("a"), StatsReplica("b")
    router = make_router([a, b])
    task = asyncio.ensure_future(router._choose_replica_for_request(pending("t/s1", rid)))
    for _ in range(50):
        await asyncio.sleep(0)
        if rid in router._routes:
            break
    assert router._routes[rid].tries == 1
    other = b if router._routes[rid].route.replica == "a" else a
    if answers:
        other.set_queue_len_response(0)
    router.update_replicas([other])
    return router, task, other


def test_a_request_routed_again_when_its_replica_left_is_released_by_its_completion():
    """Before the fix the re-made route counted the waiting try a second time (tries 2)
    and its only completion left it routed: in_flight {'b': 1} on an idle fleet."""
    async def go():
        router, task, other = await route_then_lose_its_replica("r1")
        got = await asyncio.wait_for(task, 10)
        assert got is other
        await asyncio.sleep(0)
        assert router._routes["r1"].tries == 1
        router.on_request_completed(replica_id(router, other.replica_id.unique_id), "r1")
        await asyncio.sleep(0)
        return router, other.replica_id.unique_id

    router, name = asyncio.run(go())
    assert router._routes == {}
    assert router.kv_router.in_flight == {name: 0}


def test_a_request_routed_again_when_its_replica_left_is_released_when_cancelled():
    """The caller gives up while the re-routed request still waits: the route made after
    the replica left is released (the try's callback looks the request's route up; before
    the fix it was bound to the first route, already replaced)."""
    async def go():
        router, task, other = await route_then_lose_its_replica("r1", answers=False)
        for _ in range(200):  # Ray's loop probes again after its deadline (0.1 s)
            await asyncio.sleep(0.05)
            if router._routes["r1"].route.replica == other.replica_id.unique_id:
                break
        assert router._routes["r1"].route.replica == other.replica_id.unique_id
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)
        return router, other.replica_id.unique_id

    router, name = asyncio.run(go())
    assert router._routes == {}
    assert router.kv_router.in_flight == {name: 0}


def test_the_router_class_pickles_by_value_beside_a_live_router():
    """Ray pickles the router class by value when a deployment is configured
    (`RequestRouterConfig`); a router alive in this process must not go with it, and
    loading the class again must not forget it. Before, the live routers were a WeakSet on
    the class: a live one failed the pickle (Ray's `cannot pickle 'weakref.ReferenceType'
    object`), and then, pickled empty, a load in the same process (cloudpickle sets the
    tracked class's attributes again) emptied it, so the gateway never told the router
    that a session ended. Now they live in `registry`, pickled by reference."""
    from ray import cloudpickle

    import kvsaga.integrations.ray.router as module
    from kvsaga.integrations.ray import registry
    from kvsaga.integrations.ray.router import KvsagaRequestRouter

    async def build():
        return make_router([StatsReplica("a")])

    live = asyncio.run(build())
    assert live in registry.routers_here()
    cloudpickle.register_pickle_by_value(module)
    try:
        cls = cloudpickle.loads(cloudpickle.dumps(KvsagaRequestRouter))
    finally:
        cloudpickle.unregister_pickle_by_value(module)
    assert live in registry.routers_here()

    async def build_from_copy():
        r = cls(DeploymentID(name="KvsagaEngine"), DeploymentHandleSource.UNKNOWN)
        r.initialize_state()
        r.update_replicas([StatsReplica("a")])
        return r

    other = asyncio.run(build_from_copy())
    assert {live, other} <= set(registry.routers_here())
    empty = cloudpickle.loads(cloudpickle.dumps(registry.ROUTERS))
    assert type(empty) is type(registry.ROUTERS) and len(empty) == 0
