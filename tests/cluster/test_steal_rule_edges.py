"""Edges of the kvsaga router's steal rules that a mutant of them passed the suite with
(routing3): the queue steal's margin at its boundary, and a session whose home was adopted
from a report (it was ended while a step of it was still in flight) kept home while that
step runs."""

from __future__ import annotations

import pytest

from kvsaga.routing import ReplicaStats, RouteRequest, RoutingConfig, make_router
from tests.cluster.routing_stats import IDLE, held


@pytest.mark.parametrize("thief_running,stolen", [(5, True), (6, True), (7, False)])
def test_the_queue_steal_takes_a_thief_busy_by_at_most_home_less_the_margin(
        thief_running, stolen):
    """Home a has 9 steps (5 queued, 4 running); with `steal_margin` 3 a replica with no
    step waiting steals when it runs at most 9 - 3 = 6 (a thief one step busier is not
    less busy by the margin: before this test, a rule off by one there passed the suite)."""
    r = make_router("kvsaga", ["a", "b"], config=RoutingConfig(steal_margin=3))
    r.homes["s"] = "a"
    thief = ReplicaStats(total_blocks=1000, free_blocks=1000, running=thief_running)
    got = r.route(RouteRequest("s", context_tokens=100),
                  {"a": ReplicaStats(total_blocks=100, free_blocks=10, queue_depth=5,
                                     running=4), "b": thief})
    if stolen:
        assert (got.replica, got.moved_from, got.reason) == ("b", "a", "steal")
    else:
        assert (got.replica, got.moved_from, got.reason) == ("a", None, "affinity")


def test_a_home_adopted_from_a_report_keeps_a_session_with_a_step_in_flight():
    """The session is ended (forgotten) while a step of it still runs on a; its next step
    finds no home but a's report, which lists it: a is adopted as its home, and the step
    stays there though a is loaded and b idle, while the first step is in flight (moved,
    b would pull the session from a replica still running it). Once that step finishes,
    the steal rules apply as to any home."""
    r = make_router("kvsaga", ["a", "b"])
    first = r.route(RouteRequest("s", tenant="t"), {"a": IDLE})
    assert first.replica == "a"
    r.session_ended("s")  # (its step still in flight)
    assert r.home("s") is None and "s" in r.session_steps
    loaded = {"a": held(queue=9, running=4, s=100), "b": IDLE}
    second = r.route(RouteRequest("s", tenant="t", context_tokens=100), loaded)
    assert (second.replica, second.moved_from, second.reason) == ("a", None, "affinity")
    r.finished(first)
    r.finished(second)
    third = r.route(RouteRequest("s", tenant="t", context_tokens=100), loaded)
    assert (third.replica, third.moved_from, third.reason) == ("b", "a", "steal")
