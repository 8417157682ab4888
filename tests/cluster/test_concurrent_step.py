"""A second request of a session whose step is still in flight goes to the session's home
(where the single-node server answers 409 session_busy), never moved: moved, it would
recompute the session on a second replica while the first still runs it (review repro
r11_concurrent)."""

from __future__ import annotations

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest

IDLE = ReplicaStats(total_blocks=1000, free_blocks=1000)


def test_a_concurrent_step_of_a_session_is_not_stolen():
    r = KvsagaRouter(["a", "b"])
    first = r.route(RouteRequest(session="t/s1"), {"a": IDLE, "b": IDLE})
    home, other = first.replica, ("b" if first.replica == "a" else "a")
    loaded = {home: ReplicaStats(total_blocks=1000, free_blocks=1000, queue_depth=3,
                                 running=2), other: IDLE}
    again = r.route(RouteRequest(session="t/s1"), loaded)  # s1's step still runs
    assert (again.replica, again.moved_from, again.reason) == (home, None, "affinity")
    r.finished(again)
    third = r.route(RouteRequest(session="t/s1"), loaded)
    assert third.replica == home  # the first still runs
    r.finished(first)
    r.finished(third)
    assert "t/s1" not in r.session_steps
    # Nothing of it in flight: the overloaded home's step is stolen as usual.
    stolen = r.route(RouteRequest(session="t/s1"), loaded)
    assert (stolen.replica, stolen.moved_from, stolen.reason) == (other, home, "steal")


def test_steps_in_flight_on_a_removed_replica_are_forgotten():
    r = KvsagaRouter(["a", "b"])
    r.homes["t/s1"] = "a"
    r.route(RouteRequest(session="t/s1"), {"a": IDLE, "b": IDLE})
    assert r.session_steps == {"t/s1": {"a": 1}}
    r.remove_replica("a")
    assert r.session_steps == {} and r.tenant_steps == {}
