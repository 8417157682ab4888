"""POST /v1/sessions/{id}/end reaches the session's home: never stolen, no KV migrated
to a replica that is about to delete it (review repro r2_end)."""

from __future__ import annotations

import asyncio
import json

import pytest

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest


def idle(**kwargs) -> ReplicaStats:
    return ReplicaStats(total_blocks=1000, free_blocks=1000, **kwargs)


def overloaded(**kwargs) -> ReplicaStats:
    return ReplicaStats(total_blocks=1000, free_blocks=900, queue_depth=5, running=3, **kwargs)


def test_an_end_request_stays_on_an_overloaded_home():
    r = KvsagaRouter(["a", "b"])
    r.homes["t/s"] = "a"
    stats = {"a": overloaded(session_tokens={"t/s": 10000}), "b": idle()}
    end = r.route(RouteRequest(session="t/s", tenant="t", stay=True), stats)
    assert (end.replica, end.moved_from, end.migrate) == ("a", None, False)
    r.finished(end)
    step = r.route(RouteRequest(session="t/s", tenant="t"), stats)  # a step would move
    assert (step.replica, step.moved_from, step.reason) == ("b", "a", "steal")


def test_an_end_request_stays_on_a_home_adopted_from_a_report():
    """The router holds no home for the session (a gateway restart, or forgotten after
    session_idle_s): it adopts the replica whose report lists it. Before the fix the end
    request was then stolen like a step: to b, migrating the KV of a session about to end
    (review repro stay_steal)."""
    r = KvsagaRouter(["a", "b"])
    stats = {"a": overloaded(session_tokens={"t/s": 4000}), "b": idle()}
    end = r.route(RouteRequest(session="t/s", tenant="t", context_tokens=4000, stay=True),
                  stats)
    assert (end.replica, end.moved_from, end.migrate, end.reason) == ("a", None, False,
                                                                      "affinity")
    assert r.num_stolen == 0 and r.num_migrated == 0
    r.finished(end)
    step = r.route(RouteRequest(session="t/s", tenant="t", context_tokens=4000), stats)
    assert (step.replica, step.moved_from) == ("b", "a")  # a step still moves


def test_an_end_request_after_an_unconfirmed_move_pulls_the_context_only():
    """The move's step may not have reached b: the end request goes to b, which takes the
    session's context from a (so a ends its copy) but not its KV, and ends it."""
    r = KvsagaRouter(["a", "b"])
    r.homes["t/s"] = "a"
    stats = {"a": overloaded(session_tokens={"t/s": 10000}), "b": idle()}
    moved = r.route(RouteRequest(session="t/s", tenant="t"), stats)
    r.finished(moved, ran=False)
    end = r.route(RouteRequest(session="t/s", tenant="t", stay=True), stats)
    assert (end.replica, end.moved_from, end.migrate) == ("b", "a", False)


def test_an_end_request_of_a_lost_session_pulls_nothing():
    r = KvsagaRouter(["a", "b"])
    r.homes["t/s"] = "a"
    r.remove_replica("a")
    end = r.route(RouteRequest(session="t/s", stay=True), {"b": idle()})
    assert (end.replica, end.moved_from) == ("b", None)


def test_through_the_ray_router_an_end_call_is_not_stolen():
    pytest.importorskip("ray.serve")
    from kvsaga.integrations.ray.gateway import routing_call
    from kvsaga.serve.settings import ServerSettings
    from tests.cluster.ray_fakes import StatsReplica, make_router, pending

    async def choose(router, call: dict, rid: str) -> str:
        pr = pending(call, rid)
        ranks = await router.choose_replicas(list(router.curr_replicas.values()), pr)
        return ranks[0][0].replica_id.unique_id

    async def go():
        settings = ServerSettings()
        a = StatsReplica("a", total_blocks=1000, free_blocks=1000)
        b = StatsReplica("b", total_blocks=1000, free_blocks=1000)
        router = make_router([a, b])
        body = json.dumps({"model": "m", "session_id": "s1",
                           "messages": [{"role": "user", "content": "x" * 40000}]}).encode()
        home = await choose(router, routing_call(settings, "POST", "/v1/chat/completions",
                                                 b"", [], body), "r1")
        router.on_request_completed(
            next(i for i in router.curr_replicas if i.unique_id == home), "r1")
        # The home now holds other sessions' queued and running steps.
        (a if home == "a" else b).stats.update(queue_depth=2, running=1,
                                               session_tokens={"anon/s1": 10000})
        end = routing_call(settings, "POST", "/v1/sessions/s1/end", b"", [], b"")
        assert await choose(router, end, "r2") == home
        return home, end["route"]

    home, route = asyncio.run(go())
    assert route == {"replica": home, "moved_from": None, "migrate": False,
                     "reason": "affinity"}
