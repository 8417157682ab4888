"""A steal's room test counts what the router itself knows has changed since the reports it
reads (review s48 roomdiff 1-2): the moves it sent to the thief after the thief's report
was taken, a session's growth since its home's report, and whether a waiting tenant's
work could go anywhere before that work holds the other tenants' steals back."""

from __future__ import annotations

import asyncio

import pytest

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest


def router_at(replicas, now):
    router = KvsagaRouter(replicas)
    router.clock = lambda: now[0]
    return router


def s1_s2_on_a(now):
    """The set-up most tests here share: a router over a and c on the clock `now`, S1 and
    S2 (12,000 tokens each) homed on a, a's report (loaded: a steal's source) and c's (room
    for 20,000 tokens, two steps running), both taken at 999.9. Returns the router and
    the two reports."""
    router = router_at(["a", "c"], now)
    a = ReplicaStats(total_blocks=4096, free_blocks=100, queue_depth=3, running=2,
                     session_tokens={"S1": 12000, "S2": 12000}, taken_at=999.9)
    c = ReplicaStats(total_blocks=2048, free_blocks=1250, running=2, taken_at=999.9)
    router.homes.update(S1="a", S2="a")
    return router, a, c


def ray_s1_s2_on_a(c_queue_len: int | None = 0):
    """`s1_s2_on_a` through Ray Serve: the fake replicas a and c reporting the same, c
    answering Ray's probes with `c_queue_len` (None: not set), and the Ray router over them
    with its kvsaga router's clock at 1000.0. Returns the Ray router, a, c and the clock."""
    from tests.cluster.ray_fakes import StatsReplica, make_router

    a = StatsReplica("a", queue_len=0, total_blocks=4096, free_blocks=100,
                     queue_depth=3, running=2, taken_at=999.9,
                     session_tokens={"S1": 12000, "S2": 12000})
    c = StatsReplica("c", queue_len=c_queue_len, total_blocks=2048, free_blocks=1250,
                     running=2, taken_at=999.9)
    router = make_router([a, c])
    now = [1000.0]
    router.kv_router.clock = lambda: now[0]
    router.kv_router.homes.update(S1="a", S2="a")
    return router, a, c, now


def test_two_steals_between_two_reports_do_not_count_the_same_room():
    """c reports room for 20,000 tokens; S1 and S2 (12,000 each) are stolen from the
    loaded a before c reports again. Before, both went to c (the second import refused,
    and c, with room for 8,000 still, cooled off for 30 s); now S2 stays home until a
    report of c taken after S1's move shows what is left."""
    now = [1000.0]
    router, a, c = s1_s2_on_a(now)
    first = router.route(RouteRequest(session="S1"), {"a": a, "c": c})
    assert (first.replica, first.moved_from) == ("c", "a")
    now[0] += 0.05
    second = router.route(RouteRequest(session="S2"), {"a": a, "c": c})
    assert (second.replica, second.moved_from) == ("a", None)  # before: ("c", "a")
    router.finished(second)
    # c's next report, taken after the move, lists S1: it counts S1 itself (c's other
    # step has finished since and freed its blocks): the room it shows is the room there is.
    now[0] += 0.5
    c_after = ReplicaStats(total_blocks=2048, free_blocks=1250, running=1, taken_at=now[0],
                           session_tokens={"S1": 12000})
    third = router.route(RouteRequest(session="S2"), {"a": a, "c": c_after})
    assert (third.replica, third.moved_from) == ("c", "a")


def steal_s1_then_route_s2(now, confirm=True):
    """S1 (12,000 tokens) is stolen from the loaded a for c (room for 20,000), and, when
    `confirm`, c accepts the step (Ray Serve's `on_request_routed` confirms the move)
    before S2 (12,000 too) is routed 0.05 s later on the same reports. Returns the router,
    the two routes and a's report."""
    router, a, c = s1_s2_on_a(now)
    first = router.route(RouteRequest(session="S1"), {"a": a, "c": c})
    assert (first.replica, first.moved_from) == ("c", "a")
    if confirm:
        router.confirm_move("S1", "c")
        assert "S1" not in router.moves
    now[0] += 0.05
    second = router.route(RouteRequest(session="S2"), {"a": a, "c": c})
    return router, first, second, a


def test_a_move_confirmed_before_its_import_still_counts_in_the_thiefs_room():
    """Under Ray Serve the move is confirmed when c accepts the step, before c pulls and
    imports S1 and before c reports again (review s49 ray 1). Before, the confirmed move
    left the room test, S2 was stolen for c as well, and its import was refused (c short
    of 8,000 tokens' room)."""
    now = [1000.0]
    _, _, second, _ = steal_s1_then_route_s2(now)
    assert (second.replica, second.moved_from) == ("a", None)  # before: ("c", "a")


def test_through_ray_a_step_accepted_by_the_thief_still_counts_in_its_room():
    """The same through Ray Serve's routing loop: c accepts each step it is sent
    (`on_request_routed`, strict `max_ongoing_requests`) before the next is routed."""
    pytest.importorskip("ray.serve")
    from tests.cluster.ray_fakes import pending

    async def go():
        router, a, c, now = ray_s1_s2_on_a()
        routes = []
        for s in ("S1", "S2"):
            call = {"kvsaga": 1, "session": s, "tenant": ""}
            pr = pending(call, s)
            chosen = await router._choose_replica_for_request(pr)
            router.on_request_routed(pr, chosen.replica_id, None)
            routes.append((call["route"]["replica"], call["route"]["moved_from"]))
            now[0] += 0.05
        return routes

    assert asyncio.run(go()) == [("c", "a"), ("a", None)]  # before: [.., ("c", "a")]


def test_a_report_taken_after_the_move_counts_it_once_it_lists_it_or_the_step_ran():
    """A report of c taken after S1's move that neither lists S1 nor was taken after S1's
    step finished there may have been taken before the import: S1 still counts (before,
    any report taken after the move dropped it). One taken after that step finished
    counts S1 itself, listed or not: the room it shows is the room there is."""
    now = [1000.0]
    router, first, second, a = steal_s1_then_route_s2(now)
    router.finished(second)
    now[0] += 0.1
    c_before_import = ReplicaStats(total_blocks=2048, free_blocks=1250, running=2,
                                   taken_at=now[0])
    now[0] += 0.05
    route = router.route(RouteRequest(session="S2"), {"a": a, "c": c_before_import})
    assert (route.replica, route.moved_from) == ("a", None)  # before: ("c", "a")
    router.finished(route)
    now[0] += 0.1
    router.finished(first)  # S1's step ran on c
    now[0] += 0.5
    c_after = ReplicaStats(total_blocks=2048, free_blocks=1250, running=1, taken_at=now[0])
    route = router.route(RouteRequest(session="S2"), {"a": a, "c": c_after})
    assert (route.replica, route.moved_from) == ("c", "a")


def test_a_moves_tokens_leave_the_thiefs_room_when_it_cannot_arrive():
    """S1's tokens stop counting against c once they cannot come: the move is refused,
    S1 is routed to another replica, it ends, or c is removed (and added back). Kept,
    S2 stays home (the test above)."""
    def s2_after(undo):
        now = [1000.0]
        router, first, second, a = steal_s1_then_route_s2(now)
        assert second.replica == "a"
        router.finished(second)
        undo(router, first)
        now[0] += 0.05
        c = ReplicaStats(total_blocks=2048, free_blocks=1250, running=2, taken_at=999.9)
        route = router.route(RouteRequest(session="S2"), {"a": a, "c": c})
        return route.replica, route.moved_from

    def refused(router, first):
        router.finished(first, ran=False)
        router.move_refused("S1", "a", "c", import_refused=False)

    def routed_away(router, first):
        router.finished(first)
        router.add_replica("b")
        router.homes["S1"] = "b"  # (as if S1 had moved on to b)
        router.finished(router.route(RouteRequest(session="S1", stay=True), {}))

    def ended(router, first):
        router.finished(first)
        router.session_ended("S1")

    def removed(router, first):
        router.remove_replica("c")
        router.add_replica("c")

    assert s2_after(refused) == ("c", "a")
    assert s2_after(ended) == ("c", "a")
    assert s2_after(removed) == ("c", "a")
    assert s2_after(routed_away) == ("c", "a")


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


def c_during_import(now):
    """c's report taken at `now`, while S1's import still runs: S1 not listed, nothing of
    its room taken yet."""
    return ReplicaStats(total_blocks=2048, free_blocks=1250, running=2, taken_at=now)


def test_a_step_answered_409_during_the_pull_does_not_count_the_move_as_arrived():
    """A step of S1 that reaches c while the moving step's pull runs is answered 409
    `session_busy` at once, before the import: routed home once c accepted the moving step
    (the move confirmed), or, sent before that, pulling along the move too (c's pull
    reservation answers it). Before, its finish marked S1 arrived, c's next report (taken
    during the import) dropped S1, and S2 was stolen for the same room (review s49
    routingdiff 1). Only the moving step's own finish marks it (the existing tests)."""
    def s2_after_sibling(confirm):
        now = [1000.0]
        router, a, _ = s1_s2_on_a(now)
        first = router.route(RouteRequest(session="S1"), {"a": a, "c": c_during_import(999.9)})
        assert (first.replica, first.moved_from) == ("c", "a")
        if confirm:
            router.confirm_move("S1", "c")
        now[0] += 0.01
        sibling = router.route(RouteRequest(session="S1"), {"a": a, "c": c_during_import(999.9)})
        assert (sibling.replica, sibling.moved_from) == ("c", None if confirm else "a")
        now[0] += 0.01
        router.finished(sibling)  # answered 409: the pull holds S1's record on c
        now[0] += 0.2
        c = c_during_import(now[0])
        now[0] += 0.01
        route = router.route(RouteRequest(session="S2"), {"a": a, "c": c})
        return route.replica, route.moved_from

    assert s2_after_sibling(confirm=True) == ("a", None)  # before: ("c", "a")
    assert s2_after_sibling(confirm=False) == ("a", None)  # before: ("c", "a")


def test_through_ray_a_step_answered_409_during_the_pull_does_not_count_the_move():
    """The same through Ray Serve's routing loop: the concurrent step is accepted by c and
    completes (409) before c reports again."""
    pytest.importorskip("ray.serve")
    from tests.cluster.ray_fakes import pending

    async def go():
        router, a, c, now = ray_s1_s2_on_a()

        async def send(s, rid):
            call = {"kvsaga": 1, "session": s, "tenant": ""}
            pr = pending(call, rid)
            chosen = await router._choose_replica_for_request(pr)
            router.on_request_routed(pr, chosen.replica_id, None)
            return call["route"], chosen.replica_id

        await send("S1", "move")
        now[0] += 0.01
        _, cid = await send("S1", "sibling")
        now[0] += 0.01
        router.on_request_completed(cid, "sibling")  # c answered it 409
        now[0] += 0.2
        c.stats = dict(c.stats, taken_at=now[0])  # taken during the import
        now[0] += 0.01
        route, _ = await send("S2", "next")
        return route["replica"], route["moved_from"]

    assert asyncio.run(go()) == ("a", None)  # before: ("c", "a")


def test_a_moving_step_that_never_reached_the_thief_leaves_its_room_until_one_is_sent():
    """S1's moving step is given up before c took it (`finished(ran=False)`): S1's tokens
    leave c's room at once; before, they stayed there until S1 was forgotten (30 min), c
    taking no session its room was counted for (review s49 routingdiff 2). S1's next step,
    sent along the still unconfirmed move, pulls it to c and counts it there again."""
    def s2_after_give_up(retry):
        now = [1000.0]
        router, first, second, a = steal_s1_then_route_s2(now, confirm=False)
        assert second.replica == "a"
        router.finished(second)
        now[0] += 0.05
        router.finished(first, ran=False)
        c = ReplicaStats(total_blocks=2048, free_blocks=1250, running=0, taken_at=999.9)
        if retry:
            now[0] += 0.05
            again = router.route(RouteRequest(session="S1"), {"a": a, "c": c})
            assert (again.replica, again.moved_from, again.tokens) == ("c", "a", 12000)
        now[0] += 0.05
        route = router.route(RouteRequest(session="S2"), {"a": a, "c": c})
        return route.replica, route.moved_from

    assert s2_after_give_up(retry=False) == ("c", "a")  # before: ("a", None)
    assert s2_after_give_up(retry=True) == ("a", None)


def s1_moved_twice():
    """S1's moving step M and a sibling S, both sent along S1's unconfirmed move a -> c.
    Returns the router, M, S, a's report, the clock and c's report."""
    now = [1000.0]
    router, a, c = s1_s2_on_a(now)
    moving = router.route(RouteRequest(session="S1"), {"a": a, "c": c})
    now[0] += 0.01
    sibling = router.route(RouteRequest(session="S1"), {"a": a, "c": c})
    assert (moving.moved_from, sibling.moved_from) == ("a", "a")
    return router, moving, sibling, a, now, c


def test_a_moving_step_given_up_while_a_sibling_pulls_keeps_the_move_counted():
    """Two steps of S1 sent along its unconfirmed move: the first given up before c took
    it, the second still pulling. S1 is still coming: its tokens stay in c's room."""
    router, first, sibling, a, now, c = s1_moved_twice()
    assert (sibling.replica, sibling.moved_from) == ("c", "a")
    router.finished(first, ran=False)
    now[0] += 0.01
    route = router.route(RouteRequest(session="S2"), {"a": a, "c": c})
    assert (route.replica, route.moved_from) == ("a", None)


def test_a_move_taken_by_a_sibling_after_a_refusal_counts_in_the_thiefs_room_again():
    """Two steps of S1 pull along one move (sent before c accepted the first): the first
    is refused (`move_refused` takes S1's tokens off c's room), the second takes S1
    (`move_taken` homes it on c again). Before, S1 then lived on c uncounted until c's next
    report, and S2 was stolen for the same room (review s49 routingdiff 3)."""
    router, first, second, a, now, c = s1_moved_twice()
    now[0] += 0.01
    router.finished(first)
    router.move_refused("S1", "a", "c")
    router.move_taken("S1", "c", "a")
    assert router.homes["S1"] == "c"
    now[0] += 0.05
    router.finished(second)
    now[0] += 0.01
    route = router.route(RouteRequest(session="S2"), {"a": a, "c": c})
    assert (route.replica, route.moved_from) == ("a", None)  # before: ("c", "a")
    # A move_taken that no refusal of this move precedes restores nothing.
    router.session_ended("S1")
    router.move_taken("S1", "c", "a")
    assert "S1" not in router._arrival_of


def s2_on(router, a, now, taken_at):
    """Where S2 goes once c's report taken at `taken_at` (S1 not listed) is the latest."""
    now[0] += 0.01
    c = c_during_import(taken_at)
    route = router.route(RouteRequest(session="S2"), {"a": a, "c": c})
    return route.replica, route.moved_from


def test_the_step_accepted_first_owns_the_move_not_the_moving_step_answered_409():
    """c accepts the sibling S first (the moving step M waited for a slot): S pulls S1,
    and M, accepted later, is answered 409 by S's pull reservation. Before, M, the move's
    owner, marked S1 arrived at its finish, c's report taken during S's import dropped S1
    and S2 was stolen for the same room (review s49 routing3 1). The step accepted first
    (`confirm_move` with its route) owns the move now, with the move's tokens."""
    router, moving, sibling, a, now, _ = s1_moved_twice()
    router.confirm_move("S1", "c", sibling)
    now[0] += 0.05
    router.finished(moving)
    now[0] += 0.1
    assert s2_on(router, a, now, taken_at=now[0]) == ("a", None)  # before: ("c", "a")
    now[0] += 0.3
    router.finished(sibling)  # S ran: a report of c taken after then counts S1 itself
    now[0] += 0.1
    assert router._arriving("c", c_during_import(now[0])) == 0


def test_the_owner_accepted_first_keeps_the_moves_tokens_and_stays_when_it_ran():
    """A step accepted without tokens of its own (an end request along the move) takes the
    move's tokens; a step accepted once the move is confirmed changes nothing."""
    router, moving, sibling, a, now, _ = s1_moved_twice()
    end = router.route(RouteRequest(session="S1", stay=True), {"a": a})
    assert (end.replica, end.tokens) == ("c", 0)
    router.confirm_move("S1", "c", end)
    assert router._arrivals["c"]["S1"][0].tokens == 12000
    router.confirm_move("S1", "c", sibling)  # confirmed already: the owner stays
    assert router._arrivals["c"]["S1"][0] is not sibling


def test_a_step_given_up_after_a_sibling_took_the_session_keeps_it_counted():
    """M waits for a slot on c; its sibling S is accepted, pulls S1, runs and finishes;
    then M is given up (`finished(ran=False)`). Before, that dropped S1's count on c
    though S1 lives there, and a report of c taken during the import let S2 be stolen
    for the same room (review s49 routing3 2). Now only a move still unconfirmed drops."""
    router, moving, sibling, a, now, _ = s1_moved_twice()
    now[0] += 0.2
    during = now[0]
    now[0] += 0.3
    router.finished(sibling)
    now[0] += 0.05
    router.finished(moving, ran=False)
    assert router._arrival_of.get("S1") == "c"
    assert s2_on(router, a, now, taken_at=during) == ("a", None)  # before: ("c", "a")


def test_a_step_given_up_after_a_refused_move_was_taken_keeps_it_counted():
    """M is refused, its sibling T takes S1 (`move_taken`), a third sibling U is given up:
    before, U's finish dropped the count `move_taken` restored (review s49 routing3 2)."""
    router, moving, taker, a, now, _ = s1_moved_twice()
    late = router.route(RouteRequest(session="S1"), {"a": a})
    assert (late.replica, late.moved_from) == ("c", "a")
    router.move_refused("S1", "a", "c")
    router.finished(moving)
    now[0] += 0.1
    during = now[0]
    now[0] += 0.2
    router.move_taken("S1", "c", "a")
    now[0] += 0.3
    router.finished(taker)
    router.finished(late, ran=False)
    assert s2_on(router, a, now, taken_at=during) == ("a", None)  # before: ("c", "a")


def test_a_step_not_known_to_have_run_keeps_the_move_counted():
    """`finished(ran=None)`: the caller cannot tell whether the step ran (Ray Serve with
    replicas that never reject). Before, ran=False was the only word for it and dropped
    the move's count at the moving step's finish (review s49 routing3 3); it stays until
    a report of c shows S1, and the move stays unconfirmed."""
    router, moving, sibling, a, now, _ = s1_moved_twice()
    router.finished(sibling, ran=None)
    router.finished(moving, ran=None)
    assert router._arrival_of.get("S1") == "c"
    assert router.moves["S1"].replica == "c"
    assert s2_on(router, a, now, taken_at=now[0]) == ("a", None)


def test_through_ray_the_step_accepted_first_owns_the_move():
    """review s49 routing3 1 through Ray Serve's routing loop: M waits for a slot on c,
    the sibling S is accepted first and pulls S1, M is accepted then (answered 409) and
    completes before c reports again."""
    pytest.importorskip("ray.serve")
    from tests.cluster.ray_fakes import pending

    async def go():
        router, a, c, now = ray_s1_s2_on_a(c_queue_len=None)
        cands = list(router._replicas.values())
        cid = next(i for i in router.curr_replicas if i.unique_id == "c")
        moving = pending({"kvsaga": 1, "session": "S1", "tenant": ""}, "M")
        waiting = asyncio.ensure_future(router._choose_replica_for_request(moving))
        for _ in range(50):
            await asyncio.sleep(0)
            if "M" in router._routes:
                break
        now[0] += 0.01
        sibling = pending({"kvsaga": 1, "session": "S1", "tenant": ""}, "S")
        await router.choose_replicas(cands, sibling)
        router.on_request_routed(sibling, cid, None)  # S accepted first: pulls S1
        c.set_queue_len_response(0)
        await asyncio.wait_for(waiting, 5)
        router.on_request_routed(moving, cid, None)  # answered 409 at once
        now[0] += 0.05
        router.on_request_completed(cid, "M")
        await asyncio.sleep(0)
        now[0] += 0.1
        c.stats = dict(c.stats, taken_at=now[0])  # S's import still running
        now[0] += 0.01
        call = {"kvsaga": 1, "session": "S2", "tenant": ""}
        await router.choose_replicas(cands, pending(call, "S2"))
        return call["route"]["replica"], call["route"]["moved_from"]

    assert asyncio.run(go()) == ("a", None)  # before: ("c", "a")


def test_through_ray_replicas_that_never_reject_keep_the_move_counted():
    """Replicas that never reject: no `on_request_routed`, so the adapter cannot tell
    whether a step ran and releases it with ran=None. Before, it said ran=False, and the
    moving step's completion dropped S1's count on c while c imported it: S2 was stolen
    for the same room (review s49 routing3 3)."""
    pytest.importorskip("ray.serve")
    from tests.cluster.ray_fakes import pending

    async def go():
        router, a, c, now = ray_s1_s2_on_a()
        cid = next(i for i in router.curr_replicas if i.unique_id == "c")
        call = {"kvsaga": 1, "session": "S1", "tenant": ""}
        await router._choose_replica_for_request(pending(call, "M"))
        assert (call["route"]["replica"], call["route"]["moved_from"]) == ("c", "a")
        now[0] += 0.2
        during = dict(c.stats, taken_at=now[0])
        now[0] += 0.3
        router.on_request_completed(cid, "M")  # it ran on c: nothing said so
        await asyncio.sleep(0)
        c.stats = during
        now[0] += 0.01
        call = {"kvsaga": 1, "session": "S2", "tenant": ""}
        await router._choose_replica_for_request(pending(call, "S2"))
        return call["route"]["replica"], call["route"]["moved_from"]

    assert asyncio.run(go()) == ("a", None)  # before: ("c", "a")
