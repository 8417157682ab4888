"""Two steps of one session routed along the same move before the new replica accepted
the first (re-review of the two-phase hand-over, session 45; repro
f4_second_pull_after_refused_first): the first's pull was refused (a step of the session
still aborting on its source: 409 with the header that sends it back), and the gateway's
`move_refused` homed the session on the source again; the second's pull then found the
source free, took the session and ran, so the session lived on the new replica while the
router sent its next step to the source (recomputed there, the new copy orphaned)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace as NS

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.integrations.ray import deployment, registry  # noqa: E402
from kvsaga.integrations.ray.gateway import GatewayCore, routing_call  # noqa: E402
from kvsaga.routing import (  # noqa: E402
    KvsagaRouter,
    ReplicaStats,
    RoundRobinRouter,
    RouteRequest,
)
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster.ray_replicas import (  # noqa: E402
    SPEC,
    Pinned,
    copy_by_bookkeeping,
    gateway_answer,
    stub_replica,
)
from tests.cluster.ray_replicas import BookkeepingEngine as Engine  # noqa: E402

SETTINGS = ServerSettings(model="x")
BODY = json.dumps({"model": "m", "prompt": "hi", "session_id": "s",
                   "cache_salt": "t1"}).encode()
FACTS = routing_call(SETTINGS, "POST", "/v1/completions", b"", [], BODY)
KEY, SALT = FACTS["session"], FACTS["salt"]  # the session's key and engine id (the same)
LOADED = ReplicaStats(total_blocks=64, free_blocks=59, queue_depth=3, running=2,
                      session_tokens={KEY: 20000})  # long: its KV moves with it
# (room for the session's 20,000 tokens: a thief must report room for the session it takes)
IDLE = ReplicaStats(total_blocks=2048, free_blocks=2048)


@pytest.fixture(autouse=True)
def bookkeeping_copies(monkeypatch):
    copy_by_bookkeeping(monkeypatch)


async def ok(scope, receive, send):  # R's server: the step runs
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def test_a_step_that_took_the_session_homes_it_after_a_sibling_was_refused(monkeypatch):
    assert FACTS["engine_sid"] == KEY
    ms, mr = KVCacheManager(SPEC, 64), KVCacheManager(SPEC, 64)
    ms.begin_step(KEY, list(range(20)), salt=SALT)  # paused on S, 20 tokens computed
    ms.allocate_slots(KEY, 20)
    ms.finish_step(KEY)
    rs = SessionRegistry(tokenizer=None)
    rs.open(KEY).num_steps = 3
    S = stub_replica("S", Engine(ms), rs)
    R = stub_replica("R", Engine(mr), SessionRegistry(tokenizer=None))
    R.app = ok
    R.app.state = NS(engine=Engine(mr),
                     server=NS(serving_if_ready=NS(sessions=SessionRegistry(tokenizer=None))))
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: Pinned(S))
    kv = KvsagaRouter(["S", "R"])
    kv.homes[KEY] = "S"
    monkeypatch.setattr(registry, "routers_here", lambda: [NS(
        kv_router=kv, session_ended=kv.session_ended, move_refused=kv.move_refused,
        move_taken=kv.move_taken)])
    loaded = {"S": LOADED, "R": IDLE}
    routes = [kv.route(RouteRequest(session=KEY), loaded) for _ in "AB"]
    assert [(r.replica, r.moved_from, r.migrate) for r in routes] == [("R", "S", True)] * 2

    class Handle:  # Ray Serve: each step to the replica its route names (R)
        def options(self, **kwargs):
            return self

        def remote(self, call):
            r = routes.pop(0)
            call["route"] = {"replica": r.replica, "moved_from": r.moved_from,
                             "migrate": r.migrate, "reason": r.reason}
            return R.handle(call)

    core = GatewayCore(Handle(), SETTINGS)

    async def go():
        rs.get(KEY).in_flight = "cmpl-cancelled"  # S: a cancelled step still aborting
        a = await core.call("POST", "/v1/completions", b"", [], BODY)
        rs.get(KEY).in_flight = None  # the abort finished on S
        b = await core.call("POST", "/v1/completions", b"", [], BODY)
        return a.first["status"], b.first["status"]

    assert asyncio.run(go()) == (409, 200)
    # B took it: it lives on R (its KV and record), S ended its copy
    assert KEY in mr.sessions and R._sessions.get(KEY) is not None
    assert KEY not in ms.sessions and rs.get(KEY) is None
    # Before the fix: "S" (A's refusal re-homed it there; B's success said nothing).
    assert kv.home(KEY) == "R"
    route = kv.route(RouteRequest(session=KEY), {"S": IDLE, "R": IDLE})
    assert (route.replica, route.moved_from) == ("R", None)


def test_a_moved_step_answered_after_its_session_ended_does_not_home_it_again():
    """The session's end (its client's) came first: the router forgets it for good."""
    kv = KvsagaRouter(["S", "R"])
    kv.homes[KEY] = "R"
    kv.move_refused(KEY, "S", "R")  # a sibling's refusal
    kv.session_ended(KEY)
    kv.move_taken(KEY, "R", "S")
    assert kv.home(KEY) is None


def sibling_moves(*replicas: str) -> tuple[KvsagaRouter, list]:
    """A router over `replicas` with the session at home on S, loaded, and two steps of it
    (A, B) both moved to R, the second routed before R accepted the first."""
    kv = KvsagaRouter(list(replicas))
    kv.clock = lambda: 1000.0
    kv.homes[KEY] = "S"
    stats = {r: IDLE for r in replicas} | {"S": LOADED}
    routes = [kv.route(RouteRequest(session=KEY), stats) for _ in "AB"]
    assert [(r.replica, r.moved_from) for r in routes] == [("R", "S")] * 2
    return kv, routes


def test_a_late_answer_of_an_older_move_does_not_undo_a_newer_one(monkeypatch):
    """Ray Serve queues a step's completion onto the router's loop from the thread that
    sees the reply, while the gateway's notice of the answer waits for its coroutine to
    read it: a step C routed in between (it moved the session on, R -> S) was undone by
    the older step's late `move_taken`, which homed the session on R again, where C's pull
    was emptying it (the next step ran there without a pull, recomputed; repro
    f1_late_move_taken). Only a refusal of the very move it made lets a 2xx re-home."""
    kv = KvsagaRouter(["S", "R", "T"])
    kv.clock = lambda: 1000.0
    kv.homes[KEY] = "S"
    a = kv.route(RouteRequest(session=KEY), {"S": LOADED, "R": IDLE, "T": IDLE})
    assert (a.replica, a.moved_from) == ("R", "S")
    kv.finished(a)  # Ray Serve's completion first
    c = kv.route(RouteRequest(session=KEY), {"S": IDLE, "R": LOADED, "T": IDLE})
    assert c.moved_from == "R" and c.replica != "R"
    gateway_answer(monkeypatch, kv, a, 200, BODY)  # A's 2xx, late
    # Before the fix: "R", and C's move forgotten.
    assert kv.home(KEY) == c.replica and kv.moves[KEY].replica == c.replica
    d = kv.route(RouteRequest(session=KEY), {"S": IDLE, "R": LOADED, "T": IDLE})
    # C in flight: D goes with it, and pulls too (a no-op there if C's pull came first)
    assert (d.replica, d.moved_from) == (c.replica, "R")


def test_a_late_answer_to_round_robin_does_not_undo_a_newer_move(monkeypatch):
    """The same under a router with no refusals of its own (`Router.move_taken`)."""
    rr = RoundRobinRouter(["S", "R", "T"])
    rr.finished(rr.route(RouteRequest(session=KEY), {}))  # homed on S
    a = rr.route(RouteRequest(session=KEY), {})
    rr.finished(a)
    c = rr.route(RouteRequest(session=KEY), {})
    assert (a.replica, a.moved_from, c.replica, c.moved_from) == ("R", "S", "T", "R")
    gateway_answer(monkeypatch, rr, a, 200, BODY)
    assert rr.home(KEY) == "T"  # before the fix: "R"


def test_a_sibling_that_took_the_session_homes_it_after_its_source_was_removed(monkeypatch):
    """A's pull refused (409, the session sent back to S), S removed before B's 2xx: the
    removal marked the session lost, and B's `move_taken` ignored it, so the next step was
    recomputed where it landed and R's copy orphaned (repro
    f5_move_taken_after_source_removed)."""
    kv, (a, b) = sibling_moves("S", "R", "T")
    gateway_answer(monkeypatch, kv, a, 409, BODY, refused="S")
    kv.finished(a)
    assert kv.home(KEY) == "S"
    assert kv.remove_replica("S") == [KEY]
    gateway_answer(monkeypatch, kv, b, 200, BODY)
    kv.finished(b)
    assert kv.home(KEY) == "R" and KEY not in kv.lost  # before: None, lost
    holds = ReplicaStats(total_blocks=64, free_blocks=59, running=1,
                         session_tokens={KEY: 20000})
    small = ReplicaStats(total_blocks=64, free_blocks=64)  # T: idle, the session too big
    route = kv.route(RouteRequest(session=KEY), {"R": holds, "T": small})
    assert (route.replica, route.moved_from) == ("R", None)


def test_an_import_refused_after_a_siblings_refusal_cools_the_replica_that_refused_it(
        monkeypatch):
    """A's pull refused (409: the session sent back to S), B's import then refused by R
    for want of room (503): the refusal was charged to the session's home, S by then (the
    source: nobody cooled), so R, full, was stolen for the loaded home's other sessions,
    each a full export on S and a 503 (repro f2_refuser_from_home). The gateway names the
    replica that answered."""
    kv, (a, b) = sibling_moves("S", "R")
    full = IDLE  # R's report, taken before it filled, still shows room
    gateway_answer(monkeypatch, kv, a, 409, BODY, refused="S")
    kv.finished(a)
    gateway_answer(monkeypatch, kv, b, 503, BODY, refused="S")
    kv.finished(b)
    assert list(kv._cooling) == ["R"]  # before: none
    kv.homes["o"] = "S"
    loaded = ReplicaStats(total_blocks=64, free_blocks=40, queue_depth=3, running=2,
                          session_tokens={KEY: 20000, "o": 20000})
    route = kv.route(RouteRequest(session="o"), {"S": loaded, "R": full})
    assert (route.replica, route.moved_from) == ("S", None)  # before: ("R", "S")


def test_a_refusal_lets_a_sibling_re_home_only_until_the_session_is_routed_again():
    """A step routed after the refusal (here moving the session on to T) is the newer
    word: the sibling's late 2xx changes nothing."""
    kv, (a, b) = sibling_moves("S", "R", "T")
    kv.move_refused(KEY, "S", "R")
    kv.finished(a)
    kv.finished(b)
    c = kv.route(RouteRequest(session=KEY), {"S": LOADED, "R": LOADED, "T": IDLE})
    assert (c.replica, c.moved_from) == ("T", "S")
    kv.move_taken(KEY, "R", "S")
    assert kv.home(KEY) == "T" and kv.moves[KEY].replica == "T"


def test_the_refusals_remembered_for_siblings_are_bounded(monkeypatch):
    kv = KvsagaRouter(["S", "R"])
    monkeypatch.setattr(KvsagaRouter, "_MAX_VOIDED", 2)
    for s in ("s1", "s2", "s3"):
        kv.homes[s] = "R"
        kv.move_refused(s, "S", "R")
    assert list(kv._voided) == ["s2", "s3"]
    kv.move_taken("s1", "R", "S")  # forgotten: left at home
    kv.move_taken("s3", "R", "S")
    assert (kv.home("s1"), kv.home("s3")) == ("S", "R")
