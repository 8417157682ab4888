"""A move whose step never reached the new home (a replica refused it, and Ray Serve
routes it again) is not lost: the next decision for the session re-attaches the pull
(`moved_from`, `migrate`) until a step is known to have arrived, and the session is not
moved again meanwhile (a second move would pull from a replica that never got it)."""

from __future__ import annotations

import asyncio

import pytest

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest


def idle(**kwargs) -> ReplicaStats:
    return ReplicaStats(total_blocks=1000, free_blocks=1000, **kwargs)


def overloaded(**kwargs) -> ReplicaStats:
    return ReplicaStats(total_blocks=1000, free_blocks=900, queue_depth=5, running=3, **kwargs)


def stolen_to_b():
    """s1 lives on a, which is overloaded: its step is stolen by the idle b."""
    r = KvsagaRouter(["a", "b"])
    r.homes["t/s1"] = "a"
    stats = {"a": overloaded(session_tokens={"t/s1": 2000}), "b": idle()}
    first = r.route(RouteRequest(session="t/s1", tenant="t"), stats)
    assert (first.replica, first.moved_from, first.migrate) == ("b", "a", True)
    return r, first, stats


def test_the_retry_of_a_refused_move_still_pulls_the_session():
    r, first, stats = stolen_to_b()
    r.finished(first, ran=False)  # b refused it
    retry = r.route(RouteRequest(session="t/s1", tenant="t"), stats)
    assert (retry.replica, retry.moved_from, retry.migrate) == ("b", "a", True)


def test_an_unconfirmed_move_is_not_moved_again():
    r, first, stats = stolen_to_b()
    r.finished(first, ran=False)
    # Now b is the overloaded one and a idle: a steal would pull from b, which never got
    # the session. It stays on b, still pulling from a.
    stats = {"a": idle(), "b": overloaded()}
    retry = r.route(RouteRequest(session="t/s1", tenant="t"), stats)
    assert (retry.replica, retry.moved_from) == ("b", "a")


@pytest.mark.parametrize("how", ["finished", "report"])
def test_a_move_that_arrived_is_not_pulled_again(how):
    r, first, stats = stolen_to_b()
    if how == "finished":
        r.finished(first)  # the step ran on b
    else:
        r.finished(first, ran=False)
        stats = {"a": idle(), "b": idle(session_tokens={"t/s1": 2100})}  # b's report lists it
    nxt = r.route(RouteRequest(session="t/s1", tenant="t"), stats)
    assert (nxt.replica, nxt.moved_from, nxt.reason) == ("b", None, "affinity")
    assert "t/s1" not in r.moves


def test_a_report_taken_before_the_move_confirms_nothing():
    r, first, stats = stolen_to_b()
    r.finished(first, ran=False)
    stale = idle(session_tokens={"t/s1": 2000}, taken_at=first.sent_at - 1.0)
    retry = r.route(RouteRequest(session="t/s1", tenant="t"), {"a": idle(), "b": stale})
    assert retry.moved_from == "a"


def test_through_ray_a_rejected_steal_is_retried_with_its_pull():
    """Ray's own routing loop: the stolen step is sent to b, b rejects it, its completion
    arrives before the retry is routed, and the retry is routed afresh: it still pulls the
    session from a. Before the fix the retry went to b as plain `affinity` (moved_from
    None): b recomputed the session and a kept its copy. Once b accepts a try
    (`on_request_routed`), the next step no longer pulls."""
    pytest.importorskip("ray.serve")
    from tests.cluster.ray_fakes import StatsReplica, make_router, pending

    async def go():
        a = StatsReplica("a", queue_len=0, total_blocks=1000, free_blocks=900, queue_depth=5,
                         running=3, session_tokens={"t/s1": 2000})
        b = StatsReplica("b", queue_len=0, total_blocks=1000, free_blocks=1000)
        router = make_router([a, b])
        router.kv_router.homes["t/s1"] = "a"
        b_id = next(i for i in router.curr_replicas if i.unique_id == "b")
        call = {"kvsaga": 1, "session": "t/s1", "tenant": "t"}
        pr = pending(call, "r1")
        assert await router._choose_replica_for_request(pr) is b
        first = dict(call["route"])
        assert (first["moved_from"], first["migrate"]) == ("a", True)
        router.on_request_completed(b_id, "r1")  # b rejected it (Ray cancels the try)
        await asyncio.sleep(0)
        await router._choose_replica_for_request(pr, is_retry=True)
        retry = dict(call["route"])
        router.on_request_routed(pr, b_id, None)  # b accepted the retry
        router.on_request_completed(b_id, "r1")
        nxt = {"kvsaga": 1, "session": "t/s1", "tenant": "t"}
        await router._choose_replica_for_request(pending(nxt, "r2"))
        return retry, nxt["route"]

    retry, nxt = asyncio.run(go())
    assert retry == {"replica": "b", "moved_from": "a", "migrate": True, "reason": "affinity"}
    assert nxt["replica"] == "b" and nxt["moved_from"] is None
