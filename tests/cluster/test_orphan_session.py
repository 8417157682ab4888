"""A session the router holds no home for (a restarted gateway's router, or one that
forgot it) is adopted by the replica whose report lists it, and the steal rules then
apply as to any home (review repro r10_orphan: it was placed anew elsewhere and
recomputed)."""

from __future__ import annotations

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest

IDLE = ReplicaStats(total_blocks=1000, free_blocks=1000)


def test_a_session_without_a_home_goes_to_the_replica_that_reports_it():
    r = KvsagaRouter(["a", "b"])
    stats = {"a": IDLE, "b": ReplicaStats(total_blocks=1000, free_blocks=500, running=1,
                                          paused=1, session_tokens={"anon/s1": 8000})}
    got = r.route(RouteRequest(session="anon/s1", tenant="anon"), stats)
    assert (got.replica, got.moved_from, got.reason) == ("b", None, "affinity")
    assert r.home("anon/s1") == "b"


def test_an_adopted_home_that_is_overloaded_is_stolen_from_as_usual():
    r = KvsagaRouter(["a", "b"])
    stats = {"a": IDLE, "b": ReplicaStats(total_blocks=1000, free_blocks=500, queue_depth=5,
                                          running=3, session_tokens={"anon/s1": 8000})}
    got = r.route(RouteRequest(session="anon/s1", tenant="anon"), stats)
    assert (got.replica, got.moved_from, got.reason, got.migrate) == ("a", "b", "steal", True)


def test_of_two_reports_listing_it_the_fuller_copy_is_the_home():
    r = KvsagaRouter(["a", "b", "c"])
    stats = {"a": ReplicaStats(total_blocks=1000, free_blocks=1000,
                               session_tokens={"t/s": 100}),
             "b": ReplicaStats(total_blocks=1000, free_blocks=1000,
                               session_tokens={"t/s": 900}),
             "c": IDLE}
    assert r.route(RouteRequest(session="t/s"), stats).replica == "b"


def test_a_session_nobody_reports_is_placed_as_new():
    r = KvsagaRouter(["a", "b"])
    got = r.route(RouteRequest(session="t/new"), {"a": IDLE, "b": IDLE})
    assert got.reason == "new"
