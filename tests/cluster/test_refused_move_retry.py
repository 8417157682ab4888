"""A replica that refused a session moved to it is not chosen for that session again for a
while (review of the two-phase hand-over, session 45; repro r3_refused_import_retry_loop).

The queue steal did not check the thief's free blocks: a session stolen for a replica
with no room for its KV had its import refused (503 `session_move_failed`, Retry-After 1),
the gateway sent it home (`move_refused`), and the client's retry met the same stats and
was stolen for the same replica again, every try a 503 and a full KV export on the home
for as long as the load stayed. Since session 48 a steal also needs the thief's report to
show room for the session (`KvsagaRouter._has_room`); the cool-off still covers a report
that lags (it shows room the replica no longer has), as b's below does.
"""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.integrations.ray import deployment  # noqa: E402
from kvsaga.integrations.ray.gateway import routing_call  # noqa: E402
from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster.ray_replicas import (  # noqa: E402
    SID,
    SPEC,
    Pinned,
    copy_by_bookkeeping,
    gateway_answer,
    paused,
    stub_replica,
)
from tests.cluster.ray_replicas import BookkeepingEngine as Engine  # noqa: E402

# a: 3 steps waiting, 2 running, the session long enough to migrate (20,000 tokens as a
# reports it); b: nothing queued or running, its pool full of paused sessions (no room for
# the moved session), as it reports (FULL) or in a report taken before it filled (LAGGING,
# room for 32,000 tokens); c: one step running, room to spare.
LOADED = ReplicaStats(total_blocks=64, free_blocks=59, queue_depth=3, running=2,
                      session_tokens={SID: 20000})
FULL = ReplicaStats(total_blocks=4, free_blocks=0)
LAGGING = ReplicaStats(total_blocks=2048, free_blocks=2000)
ROOMY = ReplicaStats(total_blocks=2048, free_blocks=2000, running=1)
ROOMY_IDLE = ReplicaStats(total_blocks=2048, free_blocks=2000)


@pytest.fixture(autouse=True)
def bookkeeping_copies(monkeypatch):
    copy_by_bookkeeping(monkeypatch)


def fleet(monkeypatch):
    """Replica a holding session `SID`, b with 4 blocks (no room for it), b's pulls
    delivered to a, and a router that has it at home on a; the router's clock is
    `now[0]`."""
    ma = KVCacheManager(SPEC, 64)
    paused(ma)
    ra = SessionRegistry(tokenizer=None)
    ra.open(SID)
    a = stub_replica("a", Engine(ma), ra)
    b = stub_replica("b", Engine(KVCacheManager(SPEC, 4)), SessionRegistry(tokenizer=None))
    handle = Pinned(a)
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: handle)
    router = KvsagaRouter(["a", "b", "c"])
    now = [1000.0]
    router.clock = lambda: now[0]
    router.homes[SID] = "a"
    return router, b, handle, now


def attempt(router, b, stats) -> tuple[str, object]:
    """One try of the session's step: routed, pulled by b if moved there (the gateway's
    `move_refused` on the refusal header), finished."""
    route = router.route(RouteRequest(session=SID, context_tokens=20), stats)
    answer: object = "home"
    if route.replica == "b":
        err = asyncio.run(b._pull(SID, "t1", "a", route.migrate))
        answer = 200 if err is None else err.status
        if err is not None and deployment.PULL_REFUSED_HEADER in err.headers:
            router.move_refused(SID, err.headers[deployment.PULL_REFUSED_HEADER], "b",
                                import_refused=err.status == 503)  # as the gateway
    router.finished(route)
    return route.replica, answer


def test_a_refused_replica_is_not_stolen_for_again_and_the_retries_run_at_home(monkeypatch):
    """b's report lags: it shows room b no longer has. Its refusal cools it off."""
    router, b, handle, now = fleet(monkeypatch)
    stats = {"a": LOADED, "b": LAGGING}
    tries = [attempt(router, b, stats) for _ in range(6)]
    # Before the fix: [("b", 503)] * 6, and six full KV exports on a.
    assert tries == [("b", 503)] + [("a", "home")] * 5
    assert sum(m == "export_session" for m, _ in handle.asked) == 1
    assert router.home(SID) == "a"
    # Once the cool-off is over, b may take it again (its room may have come back).
    now[0] += router.refused_move_s + 1
    assert attempt(router, b, stats) == ("b", 503)


def test_the_refused_session_moves_to_a_replica_that_reports_room(monkeypatch):
    """After its import was refused the session moves to c, idle with room, on its retry.
    Between sessions 48's two fixes it ran at home on the loaded a for `refused_move_s`
    (30 s) although c had room (review s48 refuseddiff, r1)."""
    router, b, handle, _ = fleet(monkeypatch)
    stats = {"a": LOADED, "b": LAGGING, "c": ROOMY}
    assert attempt(router, b, stats) == ("b", 503)  # b is the least loaded
    route = router.route(RouteRequest(session=SID, context_tokens=20), stats)
    router.finished(route)
    assert (route.replica, route.moved_from) == ("c", "a")  # before: ("a", None)


def test_no_replica_without_room_in_its_report_is_a_thief():
    """Four idle replicas, each reporting no room for the session: none steals it, so no
    import is refused (before session 48 each took its retry in turn and refused it, up
    to (replicas - 1) refusals, each a full KV export on the home). f, which has not
    reported, is left out by `Router.ready` (others have reported); the room test's own
    "no report, no room" is tested by the next test."""
    router = KvsagaRouter(["a", "b", "c", "d", "e", "f"])
    router.clock = lambda: 1000.0
    router.homes[SID] = "a"
    tight = ReplicaStats(total_blocks=2048, free_blocks=1000, evictable_blocks=249)
    stats = {"a": LOADED, "b": FULL, "c": FULL, "d": FULL, "e": tight}  # f: no report
    route = router.route(RouteRequest(session=SID, context_tokens=20), stats)
    assert (route.replica, route.moved_from) == ("a", None)
    router.finished(route)
    # One evictable block more and e has room: (1000 + 250) x 16 = 20,000 tokens.
    roomy = ReplicaStats(total_blocks=2048, free_blocks=1000, evictable_blocks=250)
    route = router.route(RouteRequest(session=SID, context_tokens=20),
                         stats | {"e": roomy})
    assert (route.replica, route.moved_from) == ("e", "a")


def test_a_fleet_that_nobody_has_reported_for_yet_steals_nothing():
    """No replica has reported (a fresh fleet under Ray Serve, its models loading): every
    one is ready (`Router.ready`) and the room test alone keeps a, loaded with the steps
    this router sent it, from having them stolen for replicas whose imports could not be
    planned (review s48 roomdiff 4: treating no report as room passed every test)."""
    router = KvsagaRouter(["a", "b", "c"])
    router.clock = lambda: 1000.0
    routes = []
    for i in range(6):
        router.homes[f"S{i}"] = "a"
        route = router.route(RouteRequest(session=f"S{i}", context_tokens=20), {})
        routes.append((route.replica, route.moved_from))
    assert routes == [("a", None)] * 6  # no report read as room: ("b", "a") from the 4th


def test_a_refused_sessions_retries_are_not_stolen_by_the_next_full_replica():
    """b's report lags (it shows room), c, d and e report none: b's refusal is the only
    one. Before session 48 each retry of the refused step was stolen by the next idle
    replica and refused again, 4 refusals."""
    router = KvsagaRouter(["a", "b", "c", "d", "e"])
    now = [1000.0]
    router.clock = lambda: now[0]
    router.homes[SID] = "a"
    stats = {"a": LOADED, "b": LAGGING, **{x: FULL for x in "cde"}}
    refusals = []
    for _ in range(5):
        route = router.route(RouteRequest(session=SID, context_tokens=20), stats)
        router.finished(route, ran=route.moved_from is None)
        if route.moved_from is not None:  # every receiver refuses the import
            refusals.append(route.replica)
            router.move_refused(SID, route.moved_from, route.replica, import_refused=True)
        now[0] += 1.0
    assert refusals == ["b"]
    assert router.home(SID) == "a"


def test_the_homes_other_sessions_are_not_stolen_by_the_next_full_replica_either():
    """Home a holds S1..S4; b's report lags (room), c, d and e report none. Between
    session 48's two fixes the refused session stayed home, but each other session of a
    was stolen by the next full replica in turn and refused: 4 refusals, each a full KV
    export on a (review s48 refuseddiff, r2). Only b's lagging report lets one through."""
    sessions = ["S1", "S2", "S3", "S4"]
    loaded = ReplicaStats(total_blocks=64, free_blocks=0, queue_depth=3, running=2,
                          session_tokens={s: 20000 for s in sessions})
    router = KvsagaRouter(["a", "b", "c", "d", "e"])
    now = [1000.0]
    router.clock = lambda: now[0]
    for s in sessions:
        router.homes[s] = "a"
    stats = {"a": loaded, "b": LAGGING, **{x: FULL for x in "cde"}}
    refused = []
    for _ in range(2):
        for s in sessions:
            route = router.route(RouteRequest(session=s), stats)
            router.finished(route, ran=route.moved_from is None)
            if route.moved_from is not None:  # every receiver refuses the import
                refused.append((s, route.replica))
                router.move_refused(s, route.moved_from, route.replica, import_refused=True)
            now[0] += 1.0
    assert refused == [("S1", "b")]  # before: S1 b, S2 c, S3 d, S4 e


def test_a_refused_session_below_its_share_moves_and_the_others_steals_go_on():
    """Tenant A (served least) has S on the loaded a, tenant B (above its share) B1 and B2
    there too. After S's import to b was refused, S was kept at a for 30 s: its waiting
    step held back every steal for B (`_held_back`), and c, idle with room, took nothing
    from a (review s48 refuseddiff, r8). S's retry moves to c now, and B's steps follow."""
    service = {"A": 10.0, "B": 90.0}
    loaded = ReplicaStats(total_blocks=64, free_blocks=59, queue_depth=3, running=2,
                          tenant_service=service,
                          session_tokens={"S": 20000, "B1": 20000, "B2": 20000})
    router = KvsagaRouter(["a", "b", "c"])
    now = [1000.0]
    router.clock = lambda: now[0]
    router.homes.update(S="a", B1="a", B2="a")
    first = router.route(RouteRequest(session="S", tenant="A"),
                         {"a": loaded, "b": LAGGING, "c": ROOMY})
    assert (first.replica, first.moved_from) == ("b", "a")
    router.finished(first, ran=False)
    router.move_refused("S", "a", "b", import_refused=True)
    stats = {"a": loaded, "b": FULL, "c": ROOMY}  # (c's one running step: S's)
    now[0] += 1.0
    retry = router.route(RouteRequest(session="S", tenant="A"), stats)  # in flight
    assert (retry.replica, retry.moved_from) == ("c", "a")  # before: ("a", None)
    for b in ("B1", "B2"):
        now[0] += 1.0
        route = router.route(RouteRequest(session=b, tenant="B"), stats)
        router.finished(route)
        assert (route.replica, route.moved_from) == ("c", "a")  # before: ("a", None)


def test_the_refusals_remembered_are_bounded(monkeypatch):
    router = KvsagaRouter(["a", "b"])
    now = [0.0]
    router.clock = lambda: now[0]
    monkeypatch.setattr(KvsagaRouter, "_MAX_REFUSED", 3)
    for i in range(5):
        router.homes[f"s{i}"] = "b"
        router.move_refused(f"s{i}", "a", "b")
    assert list(router._refused) == [("s2", "b"), ("s3", "b"), ("s4", "b")]
    now[0] = router.refused_move_s + 1  # all over: the next refusal sweeps them out
    router.homes["s5"] = "b"
    router.move_refused("s5", "a", "b")
    assert list(router._refused) == [("s5", "b")]


def test_a_refusal_runs_out_at_its_own_end_when_the_clock_steps_back():
    """The router's clock is the wall clock: after a step back, a refusal recorded later
    runs out before an older one still remembered. Before, the thief check tested
    membership only and the sweep stopped at the older one, so the later refusal kept
    the replica from the session past its end."""
    router = KvsagaRouter(["a", "b"])
    now = [10_000.0]
    router.clock = lambda: now[0]
    router.homes["s1"] = "b"
    router.move_refused("s1", "a", "b")  # until 10 030
    now[0] = 9_400.0  # the wall clock steps back 600 s
    router.homes["s2"] = "b"
    router.move_refused("s2", "a", "b")  # until 9 430
    stats = {"a": LOADED, "b": ROOMY_IDLE}
    now[0] = 9_420.0
    route = router.route(RouteRequest(session="s2"), stats)
    router.finished(route)
    assert route.replica == "a"  # still refused
    now[0] = 9_500.0
    route = router.route(RouteRequest(session="s2"), stats)
    assert (route.replica, route.moved_from) == ("b", "a")



def test_a_cool_off_does_not_outlast_a_step_back_of_the_clock(monkeypatch):
    """A cool-off was kept until its end on the wall clock: after the clock stepped back an
    hour, the replica that refused an import took no session for an hour and 30 s (repro
    f3_cooling_clock_step). It runs for `refused_move_s` from the refusal, and a clock
    now before the refusal ends it."""
    body = json.dumps({"model": "m", "prompt": "hi", "session_id": "s",
                       "cache_salt": "t1"}).encode()
    key = routing_call(ServerSettings(model="x"), "POST", "/v1/completions", b"", [],
                       body)["session"]
    router = KvsagaRouter(["a", "b"])
    now = [10_000.0]
    router.clock = lambda: now[0]
    router.homes.update({key: "a", "o": "a"})
    loaded = ReplicaStats(total_blocks=64, free_blocks=40, queue_depth=3, running=2,
                          session_tokens={key: 20000, "o": 20000})
    stats = {"a": loaded, "b": ROOMY_IDLE}
    move = router.route(RouteRequest(session=key), stats)
    assert (move.replica, move.moved_from) == ("b", "a")
    gateway_answer(monkeypatch, router, move, 503, body, refused="a")  # b: no room
    router.finished(move)

    def steal_o() -> tuple[str, str | None]:
        route = router.route(RouteRequest(session="o"), stats)
        router.finished(route)
        router.homes["o"] = "a"
        router.moves.clear()
        return route.replica, route.moved_from

    now[0] = 10_010.0
    assert steal_o() == ("a", None)  # cooling off
    now[0] = 10_000.0 - 3600 + 31  # the clock stepped back an hour; 41 s went by
    assert steal_o() == ("b", "a")  # before: ("a", None) for an hour more


@pytest.mark.parametrize("c_room", [True, False])
def test_the_gateways_503_sends_the_retry_where_a_report_shows_room(monkeypatch, c_room):
    """The live path: the gateway relays the receiver's 503 with the pull-refused header
    (`import_refused`): b cools off, and the retry of the step moves to c when c's report
    shows room for it, else it runs at home (never to a c as full as b). Between
    session 48's two fixes it ran at home either way."""
    body = json.dumps({"model": "m", "prompt": "hi", "session_id": "s",
                       "cache_salt": "t1"}).encode()
    key = routing_call(ServerSettings(model="x"), "POST", "/v1/completions", b"", [],
                       body)["session"]
    router = KvsagaRouter(["a", "b", "c"])
    router.clock = lambda: 1000.0
    router.homes[key] = "a"
    loaded = ReplicaStats(total_blocks=64, free_blocks=40, queue_depth=3, running=2,
                          session_tokens={key: 20000})
    stats = {"a": loaded, "b": LAGGING, "c": ROOMY_IDLE if c_room else FULL}
    move = router.route(RouteRequest(session=key), stats)
    assert (move.replica, move.moved_from) == ("b", "a")
    gateway_answer(monkeypatch, router, move, 503, body, refused="a")  # b: no room
    router.finished(move, ran=False)
    retry = router.route(RouteRequest(session=key), stats)
    assert (retry.replica, retry.moved_from) == (("c", "a") if c_room else ("a", None))


def home_fleet(monkeypatch, n: int):
    """Replica a holding `n` paused sessions of tenant t1, b with 4 blocks (no room for
    any, but its report lags: it shows room), b's pulls delivered to a, and a router that
    has them all at home on a."""
    ma, ra = KVCacheManager(SPEC, 256), SessionRegistry(tokenizer=None)
    sids = [f"t1/s{i}" for i in range(n)]
    for i, s in enumerate(sids):
        ma.begin_step(s, [1000 * (i + 1) + j for j in range(20)], salt="t1")
        ma.allocate_slots(s, 20)
        ma.finish_step(s)
        ra.open(s)
    a = stub_replica("a", Engine(ma), ra)
    b = stub_replica("b", Engine(KVCacheManager(SPEC, 4)), SessionRegistry(tokenizer=None))
    handle = Pinned(a)
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: handle)
    router = KvsagaRouter(["a", "b"])
    router.clock = lambda: 1000.0
    for s in sids:
        router.homes[s] = "a"
    stats = {"a": ReplicaStats(total_blocks=256, free_blocks=216, queue_depth=3, running=2,
                               session_tokens={s: 20000 for s in sids}),
             "b": LAGGING}
    return router, b, handle, sids, stats


def test_a_replica_that_refused_an_import_is_no_thief_for_the_homes_other_sessions(
        monkeypatch):
    """Its import refused (no room), b would refuse the loaded home's other sessions as
    well: it takes none of them for the cool-off. Before, the refusal was remembered for
    the one session only, and each other session was stolen for b in turn, each a full KV
    export on a and a 503 to its client."""
    router, b, handle, sids, stats = home_fleet(monkeypatch, 8)
    answers = []
    for s in sids:
        route = router.route(RouteRequest(session=s, context_tokens=20), stats)
        answer: object = "home"
        if route.replica == "b":
            err = asyncio.run(b._pull(s, "t1", "a", route.migrate))
            answer = 200 if err is None else err.status
            router.move_refused(s, err.headers[deployment.PULL_REFUSED_HEADER], "b",
                                import_refused=err.status == 503)
        router.finished(route)
        answers.append(answer)
    assert answers == [503] + ["home"] * 7
    assert sum(m == "export_session" for m, _ in handle.asked) == 1


def test_a_busy_refusal_keeps_the_replica_from_that_session_only():
    """A 409 (the session had a step in flight on its home) says nothing of the
    refusing replica's room: it is kept from that session only."""
    router = KvsagaRouter(["a", "b"])
    router.clock = lambda: 1000.0
    router.homes.update({"s1": "b", "s2": "a"})
    router.move_refused("s1", "a", "b")  # a 409: import_refused False
    stats = {"a": LOADED, "b": ROOMY_IDLE}
    assert router.route(RouteRequest(session="s1"), stats).replica == "a"
    route = router.route(RouteRequest(session="s2"), stats)
    assert (route.replica, route.moved_from) == ("b", "a")


def test_a_cooled_off_replica_that_leaves_is_forgotten():
    """The cool-off memory holds one entry per replica, dropped with the replica."""
    router = KvsagaRouter(["a", "b"])
    router.homes["s1"] = "b"
    router.move_refused("s1", "a", "b", import_refused=True)
    assert list(router._cooling) == ["b"] and not router._refused
    router.remove_replica("b")
    assert router._cooling == {}
