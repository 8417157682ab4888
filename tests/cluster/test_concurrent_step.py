"""A second request of a session whose step is still in flight goes to the session's home
(where the single-node server answers 409 session_busy), never moved: moved, it would
recompute the session on a second replica while the first still runs it (review repro
r11_concurrent)."""

from __future__ import annotations

import pytest

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest, make_router

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


def test_round_robin_keeps_a_concurrent_step_home():
    """Round-robin sent a second step sent while the first ran to the next replica, which
    pulled the session from the first's (whose own pull may not have opened it yet: the
    pull found nothing and ran the step on a fresh copy, review repro r6_rr_concurrent)."""
    r = make_router("round-robin", ["a", "b", "c"])
    r.homes["t/s1"] = "c"
    first = r.route(RouteRequest(session="t/s1"), {})
    again = r.route(RouteRequest(session="t/s1"), {})  # first still in flight
    # Home, pulling from where the first did (its move is unconfirmed: a no-op if done).
    assert (again.replica, again.moved_from) == (first.replica, first.moved_from) != (
        first.replica, None)
    r.finished(first)
    r.finished(again)
    after = r.route(RouteRequest(session="t/s1"), {})  # nothing in flight: its turn again
    assert after.replica != first.replica and after.moved_from == first.replica


@pytest.mark.parametrize("finish_first", [False, True])
def test_affinity_keeps_a_concurrent_step_home_when_the_ring_changes(finish_first):
    """A replica joining the ring re-homes some sessions; a step sent while another of the
    session runs stays where that one runs, and the next step after it moves."""
    r = make_router("affinity", ["a", "b"])
    sessions = [f"t/s{i}" for i in range(40)]
    first = {s: r.route(RouteRequest(session=s), {}) for s in sessions}
    r.add_replica("c")
    ring = make_router("affinity", ["a", "b", "c"])  # the same ring: where each hashes now
    rehomed = [s for s in sessions if ring.route(RouteRequest(session=s), {}).replica == "c"]
    assert rehomed
    s = rehomed[0]
    if finish_first:
        r.finished(first[s])
    got = r.route(RouteRequest(session=s), {})
    if finish_first:
        assert (got.replica, got.moved_from) == ("c", first[s].replica)
    else:
        assert (got.replica, got.moved_from) == (first[s].replica, None)


def test_round_robin_spreads_requests_sharing_only_a_prompt_cache_key():
    """A `prompt_cache_key` hint (`affinity_only`) holds no session on any replica, so the
    in-flight rule does not pin it: round-robin, the no-affinity baseline, still spreads
    overlapping requests that share one hint (the rule pinned all 30 to one replica)."""
    from collections import Counter

    r = make_router("round-robin", ["a", "b", "c"])
    where, inflight = Counter(), []
    for _ in range(30):  # each request overlaps the previous two
        route = r.route(RouteRequest(session="pck:sys", affinity_only=True), {})
        where[route.replica] += 1
        inflight.append(route)
        if len(inflight) > 2:
            r.finished(inflight.pop(0))
    assert where == {"a": 10, "b": 10, "c": 10}
