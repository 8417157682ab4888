"""A replica that joins a fleet that has worked counts its busy time from the fleet's
mean (`KvsagaRouter.busy_time`): a replacement at 60 s beside a replica at 3,600 s no
longer makes the old one 'ahead' for good, which froze every steal into it (review
repro r4_lead: the idle old replica never took the overloaded newcomer's steps). The
repro's router is fresh (it never saw the fleet before the replacement): that case, a
gateway restarted after a replacement, is left as it was (the first fleet a router sees
is read as it reports)."""

from __future__ import annotations

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest


def stats(busy_a: float, busy_b: float) -> dict:
    return {"a": ReplicaStats(total_blocks=1000, free_blocks=1000, busy_s=busy_a),
            "b": ReplicaStats(total_blocks=1000, free_blocks=900, queue_depth=5, running=3,
                              busy_s=busy_b, session_tokens={"t/s": 1000})}


def test_a_replacement_replica_does_not_freeze_stealing():
    r = KvsagaRouter(["a", "old"])
    # The fleet has worked an hour; then "old" dies and "b" replaces it.
    r.finished(r.route(RouteRequest(session="t/x"), {
        "a": ReplicaStats(total_blocks=1000, free_blocks=1000, busy_s=3540.0),
        "old": ReplicaStats(total_blocks=1000, free_blocks=1000, busy_s=3540.0)}))
    r.sync(["a", "b"])
    r.homes["t/s"] = "b"
    # b joined at the fleet's mean (3540 s) less the 0 s it had then reported...
    r.finished(r.route(RouteRequest(session="t/y"), stats(3540.0, 0.0)))
    assert r.busy_offset["b"] == 3540.0
    # ... so 60 s later its lead is 60 s of work, not 3,540 s behind: a steals.
    got = r.route(RouteRequest(session="t/s", tenant="t"), stats(3600.0, 60.0))
    assert (got.replica, got.moved_from, got.reason) == ("a", "b", "steal")


def test_the_fleet_at_the_first_decision_is_read_as_it_reports():
    r = KvsagaRouter(["a", "b"])
    r.route(RouteRequest(session="t/z"), stats(100.0, 0.0))
    assert r.busy_offset == {"a": 0.0, "b": 0.0}


def test_a_replica_removed_and_added_again_joins_afresh():
    r = KvsagaRouter(["a", "b"])
    r.finished(r.route(RouteRequest(session="t/z"), stats(100.0, 100.0)))
    r.remove_replica("b")
    assert "b" not in r.busy_offset
    r.add_replica("b")
    r.finished(r.route(RouteRequest(session="t/w"), stats(200.0, 0.0)))
    assert r.busy_offset["b"] == 200.0
