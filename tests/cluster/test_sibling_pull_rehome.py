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
from kvsaga.migration import plan_export, plan_import  # noqa: E402
from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster.ray_replicas import SPEC, Pinned, stub_replica  # noqa: E402

SETTINGS = ServerSettings(model="x")
BODY = json.dumps({"model": "m", "prompt": "hi", "session_id": "s",
                   "cache_salt": "t1"}).encode()
FACTS = routing_call(SETTINGS, "POST", "/v1/completions", b"", [], BODY)
KEY, SALT = FACTS["session"], FACTS["salt"]  # the session's key and engine id (the same)
LOADED = ReplicaStats(total_blocks=64, free_blocks=59, queue_depth=3, running=2,
                      session_tokens={KEY: 20000})  # long: its KV moves with it
IDLE = ReplicaStats(total_blocks=64, free_blocks=64)


class Engine:
    """The replica's AsyncEngine, reduced to what a hand-over uses."""

    def __init__(self, manager) -> None:
        self.manager = manager

    async def call(self, fn):
        return fn(self)

    def end_session(self, sid: str) -> list[str]:
        if sid in self.manager.sessions:
            self.manager.end_session(sid)
        return []

    def end_engine_session(self, engine, sid: str):  # (AsyncEngine's; no readers here)
        return engine.end_session(sid)


@pytest.fixture(autouse=True)
def bookkeeping_copies(monkeypatch):
    """Export and import by their bookkeeping halves (no K/V tensors, no model)."""
    monkeypatch.setattr(deployment, "export_session",
                        lambda e, sid: plan_export(e.manager, sid).export)
    monkeypatch.setattr(deployment, "import_session",
                        lambda e, ex, salt=None: plan_import(e.manager, ex, salt=salt))


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
    kv.session_ended(KEY)
    kv.move_taken(KEY, "R")
    assert kv.home(KEY) is None
