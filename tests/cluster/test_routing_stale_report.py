"""A replica's report that is older than a step the router saw finish must not count that
step: a lone session's home would look shared and lose the quiet fleet's floor.

The router's clock is a controlled one (`Router.clock`), and reports carry the time they
were taken (`ReplicaStats.taken_at`), as `EngineReplica.record_routing_stats` stamps them.
"""

from __future__ import annotations

import math

import pytest

from kvsaga.routing import ReplicaStats, Route, RouteRequest, make_router


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _stats(**kwargs) -> ReplicaStats:
    return ReplicaStats(total_blocks=1000, free_blocks=1000, **kwargs)


def _router(name: str = "kvsaga"):
    router = make_router(name, ["a", "b"])
    router.clock = clock = Clock()
    return router, clock


def _lone_session_step2(running: int, first_stats: dict | None = None) -> Route:
    """Step 1 goes to a; a reports (taken while step 1 runs: `running` steps, 5 s of work);
    step 1 finishes; step 2 is routed with that report, the latest the router has."""
    router, clock = _router()
    if first_stats is None:
        first_stats = {"a": _stats(taken_at=999.0), "b": _stats(taken_at=999.0)}
    first = router.route(RouteRequest(session="s", tenant="t"), first_stats)
    assert first.replica == "a" and first.reason == "new"
    clock.t = 1000.2
    report = {"a": _stats(running=running, busy_s=5.0, session_tokens={"s": 300},
                          taken_at=1000.2),
              "b": _stats(taken_at=1000.2)}
    router.busy("a", report)  # a decision may read it while step 1 runs
    clock.t = 1001.0
    router.finished(first)
    clock.t = 1001.1
    return router.route(RouteRequest(session="s", tenant="t", context_tokens=300), report)


def test_lone_session_stays_home_with_a_report_older_than_its_step():
    # The walkthrough: step 2 went to b by `balance`, with its KV, as the report still
    # showed step 1 running on a. It now stays, as with a report taken after step 1.
    assert _lone_session_step2(running=1) == Route("a", reason="affinity")
    assert _lone_session_step2(running=0) == Route("a", reason="affinity")
    # A fresh fleet: no replica had reported when step 1 was routed (Ray Serve hands an
    # empty report then, read as idle and unstamped).
    fresh = {"a": _stats(), "b": _stats()}
    assert _lone_session_step2(running=1, first_stats=fresh) == Route("a", reason="affinity")


def _step_finished_at(t: float):
    """A router that sent session s's step 1 to a at 999.0 and saw it finish at `t`."""
    router, clock = _router()
    first = router.route(RouteRequest(session="s"), {"a": _stats(taken_at=999.0),
                                                     "b": _stats(taken_at=999.0)})
    clock.t = t
    router.finished(first)
    return router


def test_report_read_only_after_the_step_finished_is_discounted_too():
    router = _step_finished_at(1002.0)
    stale = {"a": _stats(running=1, taken_at=1000.5), "b": _stats(taken_at=1000.5)}
    assert router.busy("a", stale) == 0


def test_other_work_in_the_report_still_counts():
    router = _step_finished_at(1001.0)
    # Reports read in the order they were taken. Taken before step 1 was sent: step 1 was
    # not in it, so its finish takes nothing off.
    assert router.busy("a", {"a": _stats(running=2, taken_at=998.0)}) == 2
    # Taken while step 1 ran: 2 running, one of them step 1.
    assert router.busy("a", {"a": _stats(running=2, taken_at=1000.5)}) == 1
    # Taken after step 1 finished: its running step is someone else's.
    assert router.busy("a", {"a": _stats(running=1, taken_at=1001.5)}) == 1
    # An unstamped report (a live view, as the simulator's) is taken as it is.
    assert router.busy("a", {"a": _stats(running=1)}) == 1


def test_unfinished_steps_still_bound_busy_from_below():
    router, clock = _router()
    stats = {"a": _stats(taken_at=999.0), "b": _stats(taken_at=999.0)}
    first = router.route(RouteRequest(session="s"), stats)
    second = router.route(RouteRequest(session="u"), {**stats, "a": _stats(running=1,
                                                                         taken_at=999.5)})
    assert {first.replica, second.replica} == {"a", "b"}
    clock.t = 1001.0
    router.finished(first)
    home = second.replica
    # The report predates both steps' sending: nothing comes off it, and the router's own
    # unfinished step counts.
    assert router.busy(home, {home: _stats(taken_at=999.0)}) == 1


def test_steps_remembered_are_bounded_and_dropped_with_the_replica():
    router, clock = _router("round-robin")
    stats = {"a": _stats(taken_at=999.0), "b": _stats(taken_at=999.0)}
    for i in range(600):  # round-robin reads no report: nothing prunes them but the bound
        clock.t = 1000.0 + i
        router.finished(router.route(RouteRequest(), stats))
    assert [len(d) for d in router._done.values()] == [router._MAX_DONE] * 2
    # A report taken after them drops those that finished before it was taken.
    assert router.busy("b", {"b": _stats(running=1, taken_at=1500.5)}) == 1
    assert len(router._done["b"]) == 50
    router.remove_replica("a")
    assert "a" not in router._done and "a" not in router._taken


@pytest.mark.parametrize("bad", [math.nan, math.inf, "1.0", True])
def test_taken_at_must_be_a_finite_number(bad):
    with pytest.raises(ValueError, match="taken_at"):
        ReplicaStats(taken_at=bad)
