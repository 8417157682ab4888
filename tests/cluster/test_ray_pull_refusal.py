"""A moved session's pull meets trouble on its previous replica (review repros
inflight_refusal, export_cancelled): a step of it still in flight there (a cancelled
request the replica is still aborting) gets the 409 `session_busy` the home would give,
not a second copy opened on the thief; an export cancelled midway leaves the session free
on its replica, and a stale record does not stop a pull. A receiver that dies before it
answers a moved step sends the session back to its source (review s47, repro
r2_lost_goes_elsewhere): before, the session was lost and recomputed elsewhere while its
source kept the whole KV."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from types import SimpleNamespace as NS

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.integrations.ray import deployment, handover, registry  # noqa: E402
from kvsaga.integrations.ray.deployment import EngineReplica  # noqa: E402
from kvsaga.integrations.ray.gateway import GatewayCore, routing_call  # noqa: E402
from kvsaga.migration import plan_export  # noqa: E402
from kvsaga.routing import ReplicaStats, Route, RouteRequest, make_router  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster.ray_replicas import SID, SPEC, Pinned, paused, stub_replica  # noqa: E402
from tests.cluster.ray_replicas import threaded_engine as Engine  # noqa: E402


def replica(rid: str, manager, sessions: SessionRegistry, app=None) -> EngineReplica:
    return stub_replica(rid, Engine(manager), sessions, app)


def moving_handle(first_message):
    """A deployment handle whose every call is a step the router moved from a to b, and
    whose response stream's first message is `await first_message()`."""

    class Stream:
        async def __anext__(self):
            return await first_message()

    class Handle:
        def options(self, **kwargs):
            return self

        def remote(self, call):
            call["route"] = {"replica": "b", "moved_from": "a", "migrate": True,
                             "reason": "steal"}
            return Stream()

    return Handle()


def test_a_step_in_flight_on_the_source_answers_409_and_opens_nothing(monkeypatch):
    ma, mb = KVCacheManager(SPEC, 64), KVCacheManager(SPEC, 64)
    paused(ma)
    ra, rb = SessionRegistry(tokenizer=None), SessionRegistry(tokenizer=None)
    ra.open(SID).in_flight = "cmpl-cancelled"  # still being aborted on a
    ran = []

    async def app(scope, receive, send):  # b's server: it would run the step
        ran.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    a = replica("a", ma, ra)
    b = replica("b", mb, rb, app=app)
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: Pinned(a))
    call = {"kvsaga": 1, "method": "POST", "path": "/v1/completions", "headers": [],
            "body": b"{}", "engine_sid": SID, "salt": "t1",
            "route": {"replica": "b", "moved_from": "a", "migrate": True, "reason": "steal"}}

    async def go():
        return [m async for m in b.handle(call)]

    msgs = asyncio.run(go())
    assert ran == []  # before the fix: b ran the step as a new session
    assert msgs[0]["status"] == 409
    assert (b"x-kvsaga-pull-refused", b"a") in msgs[0]["headers"]
    err = json.loads(b"".join(m.get("body", b"") for m in msgs[1:]))["error"]
    assert err["code"] == "session_busy" and "'s'" in err["message"]
    assert SID in ma.sessions and ra.get(SID) is not None  # a keeps it
    assert SID not in mb.sessions and rb.get(SID) is None  # b opened nothing


@pytest.mark.parametrize("status", [409, 503])
def test_the_gateway_has_the_router_take_a_refused_move_back(monkeypatch, status):
    """And tells it whether the import was refused (503), which cools the refusing
    replica off as a thief for every session (`KvsagaRouter.move_refused`)."""
    body = json.dumps({"model": "m", "prompt": "hi", "session_id": "s",
                       "cache_salt": "t1"}).encode()
    # The router knows the session by the key the gateway routes it by (a refusal for a
    # session it does not know, ended or forgotten, changes nothing).
    key = routing_call(ServerSettings(model="x"), "POST", "/v1/completions", b"", [],
                       body)["session"]
    kv = make_router("kvsaga", ["a", "b"])
    kv.homes[key] = "b"
    kv.moves[key] = Route("b", moved_from="a")
    calls = []
    router = NS(kv_router=kv, session_ended=lambda s: None,
                move_refused=lambda s, src, replica, import_refused: (
                    calls.append((s, src, replica, import_refused)),
                    kv.move_refused(s, src, replica, import_refused)))
    monkeypatch.setattr(registry, "routers_here", lambda: [router])

    async def first_message():
        return {"type": "http.response.start", "status": status,
                "headers": [(b"x-kvsaga-pull-refused", b"a")]}

    core = GatewayCore(moving_handle(first_message), ServerSettings(model="x"))
    asyncio.run(core.call("POST", "/v1/completions", b"", [], body))
    assert calls and calls[0] == (key, "a", "b", status == 503)
    assert kv.home(key) == "a" and key not in kv.moves


def test_a_cancelled_export_leaves_the_session_free_here_and_a_stale_record_is_pulled(
        monkeypatch):
    """(Session 45: exports no longer end the session, its importer commits that; a
    cancelled one, which nobody will commit, frees the session it held.)"""
    manager = KVCacheManager(SPEC, 64)
    paused(manager)
    reg = SessionRegistry(tokenizer=None)
    reg.open(SID).num_steps = 3
    a = replica("a", manager, reg)
    taking = threading.Event()

    def slow_export(engine, sid):  # gathering a long session's KV to host memory
        taking.set()
        time.sleep(0.3)
        return plan_export(engine.manager, sid).export

    monkeypatch.setattr(handover, "export_session", slow_export)

    async def go():
        task = asyncio.create_task(
            a.export_session({"pin": "a", "engine_sid": SID, "migrate": True}))
        await asyncio.to_thread(taking.wait, 10)
        task.cancel()  # the importer gave up
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.to_thread(a.app.state.engine.pool.submit(lambda: None).result, 10)

    asyncio.run(go())
    assert SID in manager.sessions  # whole and free: its next step runs here
    assert reg.get(SID).in_flight is None and a._handovers == {}
    # A stale record (one of a session the engine lost) does not stop a pull: the session
    # is asked for, and the record dropped when its source knows none.
    manager.end_session(SID)
    pinned = Pinned()
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: pinned)
    assert asyncio.run(a._pull(SID, "t1", "b", True)) is None
    assert len(pinned.asked) == 1 and reg.get(SID) is None


def test_a_record_with_a_queued_step_is_kept_and_not_pulled_again(monkeypatch):
    """A moved session's second step reaches the thief while its first is still queued
    there (the engine does not hold the session yet): `_holds` took that in-flight record
    for stale, dropped it and pulled again, so the second step ran beside the first instead
    of the server's 409 `session_busy`."""
    mb = KVCacheManager(SPEC, 64)
    rb = SessionRegistry(tokenizer=None)
    rb.open(SID).in_flight = "cmpl-step1"
    ran = []

    async def app(scope, receive, send):  # b's server: it answers by the record
        ran.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    b = replica("b", mb, rb, app=app)
    pinned = Pinned()
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: pinned)
    call = {"kvsaga": 1, "method": "POST", "path": "/v1/completions", "headers": [],
            "body": b"{}", "engine_sid": SID, "salt": "t1",
            "route": {"replica": "b", "moved_from": "a", "migrate": False, "reason": "steal"}}

    async def go():
        return [m async for m in b.handle(call)]

    asyncio.run(go())
    assert pinned.asked == []  # before the fix: the record dropped, a asked again
    assert rb.get(SID) is not None and rb.get(SID).in_flight == "cmpl-step1"
    assert ran == ["/v1/completions"]


BODY = json.dumps({"model": "m", "prompt": "hi", "session_id": "s", "cache_salt": "t1"}).encode()


def dies_before_answering(monkeypatch, kv, error: Exception) -> list:
    """The gateway relays a step that `kv` moved from a to b, and b raises `error` before
    its first message; returns the `move_refused` calls it made."""
    calls = []
    monkeypatch.setattr(registry, "routers_here", lambda: [NS(
        kv_router=kv, session_ended=kv.session_ended, move_taken=kv.move_taken,
        move_unanswered=kv.move_unanswered,
        move_refused=lambda *args: (calls.append(args), kv.move_refused(*args)))])

    async def first_message():
        raise error

    core = GatewayCore(moving_handle(first_message), ServerSettings(model="x"))
    answer = asyncio.run(core.call("POST", "/v1/completions", b"", [], BODY))
    assert answer.status_code == 503
    return calls


@pytest.mark.parametrize("removed_first", [True, False])
def test_a_receiver_that_dies_before_answering_sends_the_session_back(monkeypatch,
                                                                      removed_first):
    """Ray Serve reports the step complete (the move is confirmed) and removes b after
    or before the gateway reads the error: either way the session goes home to a."""
    from ray.exceptions import ActorDiedError

    key = routing_call(ServerSettings(model="x"), "POST", "/v1/completions", b"", [],
                       BODY)["session"]
    kv = make_router("kvsaga", ["a", "b", "c"])
    kv.homes[key] = "b"
    kv.moves[key] = Route("b", moved_from="a", migrate=True, reason="steal")
    kv.confirm_move(key, "b")  # on_request_routed: b accepted the step
    if removed_first:
        assert kv.remove_replica("b") == [key]  # lost, before the fix for good
    calls = dies_before_answering(monkeypatch, kv, ActorDiedError())
    if not removed_first:
        assert kv.remove_replica("b") == []
    assert calls == [(key, "a", "b")]
    assert kv.home(key) == "a" and key not in kv.lost
    idle = {r: ReplicaStats(total_blocks=64, free_blocks=64) for r in ("a", "c")}
    route = kv.route(RouteRequest(session=key), idle)
    assert (route.replica, route.moved_from) == ("a", None)  # before: c, moved from b


def moved_to_b(*replicas: str):
    """A `kvsaga` router over `replicas` that moved the session of `BODY` from a to b, a
    move b accepted (confirmed); returns it and the session's key."""
    key = routing_call(ServerSettings(model="x"), "POST", "/v1/completions", b"", [],
                       BODY)["session"]
    kv = make_router("kvsaga", list(replicas))
    kv.homes[key] = "b"
    kv.moves[key] = Route("b", moved_from="a", migrate=True, reason="steal")
    kv.confirm_move(key, "b")
    return kv, key


# a busier than c: a session lost with b goes to c
BUSY_A = {"a": ReplicaStats(total_blocks=64, free_blocks=8, running=8, queue_depth=6),
          "c": ReplicaStats(total_blocks=64, free_blocks=64)}


def test_an_unavailable_receiver_sends_the_session_back_once_it_is_removed(monkeypatch):
    """`ActorUnavailableError` may pass (the replica may still run the step): the move
    stands while b is listed; once Serve removes b (its death is then certain) the session
    goes home to a (review s47 raydiff, repro p4b_busy_source: before, it was lost with
    b and recomputed on c while a kept its KV)."""
    from ray.exceptions import ActorUnavailableError

    kv, key = moved_to_b("a", "b", "c")
    assert dies_before_answering(monkeypatch, kv, ActorUnavailableError("gone?", None)) == []
    assert kv.home(key) == "b"  # it may pass
    assert kv.remove_replica("b") == [] and key not in kv.lost  # before: [key]
    route = kv.route(RouteRequest(session=key), BUSY_A)
    # Its KV comes from a (here stolen for c, idle), as after `ActorDiedError`; before:
    # lost, moved from b (gone), recomputed on c.
    assert route.moved_from == "a" and route.reason != "lost"


def test_an_unavailable_receiver_already_removed_sends_the_session_back_at_once(monkeypatch):
    from ray.exceptions import ActorUnavailableError

    kv, key = moved_to_b("a", "b", "c")
    assert kv.remove_replica("b") == [key]
    dies_before_answering(monkeypatch, kv, ActorUnavailableError("gone?", None))
    assert kv.home(key) == "a" and key not in kv.lost


def test_an_unavailable_receiver_removed_after_the_session_moved_on_changes_nothing(
        monkeypatch):
    """Routed elsewhere since (b was only unreachable, or a later step moved it on), or
    ended: b's removal leaves the session where it is."""
    from ray.exceptions import ActorUnavailableError

    kv, key = moved_to_b("a", "b", "c")
    dies_before_answering(monkeypatch, kv, ActorUnavailableError("gone?", None))
    kv.homes[key] = "c"  # moved on to c
    kv.remove_replica("b")
    assert kv.home(key) == "c" and kv._unanswered == {}
    kv2, key2 = moved_to_b("a", "b", "c")
    dies_before_answering(monkeypatch, kv2, ActorUnavailableError("gone?", None))
    kv2.session_ended(key2)
    assert kv2._unanswered == {} and kv2.remove_replica("b") == [] and kv2.home(key2) is None


def test_unanswered_moves_are_remembered_up_to_a_bound(monkeypatch):
    kv = make_router("kvsaga", ["a", "b"])
    monkeypatch.setattr(kv, "_MAX_VOIDED", 2)
    for s in ("s1", "s2", "s3"):
        kv.homes[s] = "b"
        kv.move_unanswered(s, "a", "b")
    assert list(kv._unanswered) == ["s2", "s3"]  # the oldest went first
    assert kv.remove_replica("b") == ["s1"]
    assert kv.home("s2") == kv.home("s3") == "a"


def test_the_request_router_hands_an_unanswered_move_to_its_router():
    """(`KvsagaRequestRouter.move_unanswered`, which the gateway calls, on the router's
    loop.)"""
    from tests.cluster.ray_fakes import StatsReplica, pending
    from tests.cluster.ray_fakes import make_router as request_router

    async def go():
        router = request_router([StatsReplica(r, total_blocks=100, free_blocks=100)
                                 for r in ("a", "b")])
        call = {"kvsaga": 1, "session": "t/s1", "tenant": "t"}
        await router.choose_replicas(list(router.curr_replicas.values()), pending(call, "r1"))
        router.move_unanswered("t/s1", "a", "b")
        return dict(router.kv_router._unanswered)

    assert asyncio.run(go()) == {"t/s1": ("a", "b")}
