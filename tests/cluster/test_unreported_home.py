"""A session taken by a queue steal lives on a replica that then stops reporting (under Ray
Serve: its engine stopped, `{}`, until the health check replaces it) while the router still
has steps of other sessions in flight there. The session's next step used to raise KeyError
out of `KvsagaRouter._steal_source` (`stats[home]`), which Ray Serve's routing loop retries
for good, holding every request (review s51 ray 1)."""

from __future__ import annotations

import asyncio

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest

BIG = dict(total_blocks=1000, free_blocks=1000)


def _stolen_onto_b(r: KvsagaRouter) -> None:
    """`s` moves a -> b by a queue steal, and 3 steps of other sessions are in flight on b."""
    stats = {"a": ReplicaStats(**BIG, queue_depth=5, running=4, session_tokens={"s": 100},
                               busy_s=1.0),
             "b": ReplicaStats(**BIG, busy_s=1.0),
             "c": ReplicaStats(**BIG, running=2, busy_s=1.0)}
    r.homes["s"] = "a"
    moved = r.route(RouteRequest("s", context_tokens=100), stats)
    assert (moved.replica, moved.moved_from, moved.reason) == ("b", "a", "steal")
    r.finished(moved)
    for i in range(3):
        assert r.route(RouteRequest(f"o{i}"), {"b": ReplicaStats(**BIG)}).replica == "b"


# b reports nothing; a and c each run a step, nothing waits: the queue rule fires on the
# router's own count for b, no replica is `steal_margin` less busy.
UNREPORTED_B = {"a": ReplicaStats(**BIG, running=1, busy_s=1.0),
                "c": ReplicaStats(**BIG, running=1, busy_s=1.0)}


def test_a_stolen_sessions_step_routes_when_its_home_stops_reporting():
    r = KvsagaRouter(["a", "b", "c"])
    _stolen_onto_b(r)
    route = r.route(RouteRequest("s", context_tokens=100), UNREPORTED_B)  # KeyError before
    assert route.replica in ("a", "b", "c")
    assert r.home("s") == route.replica and r.in_flight[route.replica] >= 1


def test_through_the_ray_router_the_decision_is_made():
    import pytest

    pytest.importorskip("ray.serve")
    from tests.cluster.ray_fakes import StatsReplica, make_router, pending

    reps = [StatsReplica(n, **BIG, running=1, busy_s=1.0) for n in "abc"]
    reps[1].stats = {}  # b: its engine stopped

    async def choose():
        router = make_router(reps)
        _stolen_onto_b(router.kv_router)
        call = {"kvsaga": 1, "session": "s", "context_tokens": 100}
        return await router.choose_replicas(reps, pending(call, "r1")), call

    chosen, call = asyncio.run(choose())  # raised KeyError before
    assert [[r.replica_id.unique_id for r in group] for group in chosen] == [
        [call["route"]["replica"]]]
