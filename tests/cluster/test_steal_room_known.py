"""A steal's room test counts what the router itself knows has changed since the reports it
reads (review s48 roomdiff 1-2): the moves it sent to the thief after the thief's report
was taken, a session's growth since its home's report, and whether a waiting tenant's
work could go anywhere before that work holds the other tenants' steals back."""

from __future__ import annotations

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest


def router_at(replicas, now):
    router = KvsagaRouter(replicas)
    router.clock = lambda: now[0]
    return router


def test_two_steals_between_two_reports_do_not_count_the_same_room():
    """c reports room for 20,000 tokens; S1 and S2 (12,000 each) are stolen from the
    loaded a before c reports again. Before, both went to c (the second import refused,
    and c, with room for 8,000 still, cooled off for 30 s); now S2 stays home until a
    report of c taken after S1's move shows what is left."""
    now = [1000.0]
    router = router_at(["a", "c"], now)
    a = ReplicaStats(total_blocks=4096, free_blocks=100, queue_depth=3, running=2,
                     session_tokens={"S1": 12000, "S2": 12000}, taken_at=999.9)
    c = ReplicaStats(total_blocks=2048, free_blocks=1250, running=2, taken_at=999.9)
    router.homes.update(S1="a", S2="a")
    first = router.route(RouteRequest(session="S1"), {"a": a, "c": c})
    assert (first.replica, first.moved_from) == ("c", "a")
    now[0] += 0.05
    second = router.route(RouteRequest(session="S2"), {"a": a, "c": c})
    assert (second.replica, second.moved_from) == ("a", None)  # before: ("c", "a")
    router.finished(second)
    # c's next report, taken after the move, counts S1 itself (whether or not it lists
    # it yet): the room it shows is the room there is.
    now[0] += 0.5
    c_after = ReplicaStats(total_blocks=2048, free_blocks=1250, running=1, taken_at=now[0])
    third = router.route(RouteRequest(session="S2"), {"a": a, "c": c_after})
    assert (third.replica, third.moved_from) == ("c", "a")


def test_steals_sent_before_a_refusal_comes_back_are_not_sent_past_the_room():
    """c's lagging report shows room for 32,000 tokens and two steps running (finished
    since): three 20,000-token sessions were stolen for it within 0.1 s, each refused,
    three refusals in one cool-off. Now only the first goes; the others' room is taken."""
    now = [1000.0]
    router = router_at(["a", "c"], now)
    sessions = ["S1", "S2", "S3"]
    a = ReplicaStats(total_blocks=4096, free_blocks=100, queue_depth=3, running=2,
                     session_tokens={s: 20000 for s in sessions}, taken_at=999.9)
    c = ReplicaStats(total_blocks=2048, free_blocks=2000, running=2, taken_at=999.9)
    moved = []
    for s in sessions:
        router.homes[s] = "a"
        route = router.route(RouteRequest(session=s), {"a": a, "c": c})
        moved.append(route.moved_from is not None)
        now[0] += 0.05
    assert moved == [True, False, False]  # before: [True, True, True]


def test_a_session_grown_since_its_homes_report_is_sized_by_its_request():
    """a's report (taken at 1000.0) has S at 800 tokens; S's step finished at 1000.2, and
    its next step carries 1,200 tokens of context. c has room for 960. Before, the steal
    read 800 and sent S to c, whose import of 1,200 was refused; now it stays home. A
    report of a taken after the step is believed as it is."""
    now = [1000.0]
    router = router_at(["a", "c"], now)
    quiet = ReplicaStats(total_blocks=400, free_blocks=300)
    c = ReplicaStats(total_blocks=100, free_blocks=60, running=1, taken_at=1000.0)
    step = router.route(RouteRequest(session="S", context_tokens=400), {"a": quiet, "c": c})
    assert step.replica == "a"
    now[0] = 1000.2
    router.finished(step)
    now[0] = 1000.3
    loaded = dict(total_blocks=400, free_blocks=300, queue_depth=3, running=2)
    old = ReplicaStats(**loaded, session_tokens={"S": 800}, taken_at=1000.0)
    route = router.route(RouteRequest(session="S", context_tokens=1200), {"a": old, "c": c})
    assert (route.replica, route.moved_from) == ("a", None)  # before: ("c", "a")
    router.finished(route)
    now[0] = 1000.5  # (a report taken after the last step finished)
    fresh = ReplicaStats(**loaded, session_tokens={"S": 900}, taken_at=1000.4)
    route = router.route(RouteRequest(session="S", context_tokens=1200), {"a": fresh, "c": c})
    assert (route.replica, route.moved_from) == ("c", "a")


def test_a_waiting_session_no_thief_has_room_for_does_not_hold_back_the_others_steals():
    """Tenant A (served least) has S waiting on the loaded a (routed there while c was
    busy); tenant B (above its share) B1 and B2 (2,000 tokens) there too; c, idle now,
    has room for 10,000. An S of 40,000 tokens no replica can take, yet its step held
    every steal for B back and c took nothing for as long as S waited (review s48
    roomdiff 1): B's steps go to c now. An S of 8,000, which c could take, still holds
    them back (fair share: c's capacity goes to A's next step first)."""
    def run(s_tokens):
        now = [1000.0]
        router = router_at(["a", "c"], now)
        a = ReplicaStats(total_blocks=4096, free_blocks=100, queue_depth=3, running=2,
                         tenant_service={"A": 10.0, "B": 90.0},
                         session_tokens={"S": s_tokens, "B1": 2000, "B2": 2000})
        c = ReplicaStats(total_blocks=2048, free_blocks=625, running=1)
        router.homes.update(S="a", B1="a", B2="a")
        busy_c = ReplicaStats(total_blocks=2048, free_blocks=625, running=1, queue_depth=1)
        held = router.route(RouteRequest(session="S", tenant="A"), {"a": a, "c": busy_c})
        routes = [(held.replica, held.moved_from)]  # (in flight from here on)
        for b in ("B1", "B2"):
            now[0] += 1.0
            route = router.route(RouteRequest(session=b, tenant="B"), {"a": a, "c": c})
            router.finished(route)
            routes.append((route.replica, route.moved_from))
        return routes

    # before: [("a", None), ("a", None), ("a", None)]
    assert run(40000) == [("a", None), ("c", "a"), ("c", "a")]
    assert run(8000) == [("a", None), ("a", None), ("a", None)]
