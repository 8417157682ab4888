"""A replica pulling a moved session reserves the session's record for the whole pull
(review of the two-phase hand-over, session 45; repros r1_step_slips_in_during_pull,
r2_concurrent_pulls_rehome_to_source), and the hand-over's guards hold.

r1: once the new home accepted the step that moved the session, the router sends the
session's next step there without `moved_from`; it opened a record and an engine request
while the pull still waited on the source, and the pull's import then ended that request
without waking its reader: the step's stream hung, the replica's in-flight count stayed up.
r2: a second step routed with `moved_from` before the first was accepted pulled too, met
the first's hold on the source, and its 409 carried the header that has the gateway send
the session back to the source, while the first moved it away: the session's next step
recomputed there, its copy on the new home orphaned.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

pytest.importorskip("ray.serve")
pytest.importorskip("transformers")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.engine.sampling import SamplingParams  # noqa: E402
from kvsaga.integrations.ray import deployment, handover, registry  # noqa: E402
from kvsaga.integrations.ray.gateway import GatewayCore  # noqa: E402
from kvsaga.migration import plan_import  # noqa: E402
from kvsaga.routing import Route, RouteRequest, make_router  # noqa: E402
from kvsaga.serve.async_engine import RequestAborted  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster.ray_replicas import (  # noqa: E402
    SID,
    SPEC,
    Pinned,
    close_replica,
    copy_by_bookkeeping,
    paused,
    served_replica,
    stub_replica,
)
from tests.cluster.ray_replicas import threaded_engine as Engine  # noqa: E402
from tests.helpers_models import build_tiny_model  # noqa: E402

PROMPT = "hello world, " * 8
ANON = "anon/s"  # the engine id of session "s" without a cache_salt
MOVE = {"replica": "R", "moved_from": "S", "migrate": True, "reason": "steal"}
HOME = {"replica": "R", "moved_from": None, "migrate": False, "reason": "affinity"}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model("llama_gqa4_untied", tmp_path_factory.mktemp("pull-tiny"))


class Gated(Pinned):
    """Pinned calls to `target`; the first export's answer waits for `gate`, and
    `exporting` is set once that export has run (the session is held on `target` then)."""

    def __init__(self, target) -> None:
        super().__init__(target)
        self.gate, self.exporting = asyncio.Event(), asyncio.Event()

    def options(self, method_name: str):
        call = super().options(method_name)
        remote = call.remote

        async def gated(ask):
            got = await remote(ask)
            if method_name == "export_session" and not self.exporting.is_set():
                self.exporting.set()
                await self.gate.wait()
            return got

        call.remote = gated
        return call


def body(prompt: str, **kw) -> bytes:
    return json.dumps({"model": "tiny", "prompt": prompt, "session_id": "s", "max_tokens": 8,
                       "temperature": 0, "ignore_eos": True, **kw}).encode()


def step(prompt: str, route: dict, **kw) -> dict:
    """The call a replica gets for a step of session "s" (no cache_salt) routed `route`."""
    data = body(prompt, **kw)
    return {"kvsaga": 1, "method": "POST", "path": "/v1/completions",
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(data)).encode())],
            "body": data, "engine_sid": ANON, "salt": None, "route": route}


async def answer(messages) -> tuple[int, dict, bytes]:
    """Status, headers and body of a replica's ASGI messages (`messages`: an async
    iterator; its first message is the response start)."""
    msgs = [m async for m in messages]
    hdrs = {bytes(k).decode(): bytes(v).decode() for k, v in msgs[0].get("headers", [])}
    return msgs[0]["status"], hdrs, b"".join(m.get("body", b"") for m in msgs[1:])


async def look(replica, sid: str = ANON) -> dict:
    """What a served replica holds of session `sid`, its blocks checked."""
    engine = replica.app.state.engine

    def read(e) -> dict:
        e.manager.check_integrity()
        return {"session": sid in e.manager.sessions, "requests": len(e.requests)}

    out = await engine.call(read)
    ctx = replica._sessions.get(sid)
    out["record"] = None if ctx is None else (ctx.in_flight, ctx.num_steps)
    out["in_flight"] = engine.num_in_flight
    return out


def test_a_step_that_arrives_during_the_pull_gets_409_and_the_pull_completes(
        monkeypatch, tiny_dir):
    async def go():
        S, R = served_replica("S", tiny_dir), served_replica("R", tiny_dir)
        try:
            pinned = Gated(S)
            monkeypatch.setattr(deployment.serve, "get_deployment_handle",
                                lambda *a: pinned)
            assert (await answer(S.handle(step(PROMPT, {}))))[0] == 200
            a = asyncio.create_task(answer(R.handle(step(PROMPT + "A", MOVE))))
            await pinned.exporting.wait()  # A's pull waits on S's export
            # B: routed home (the router confirmed A's move), so no pull of its own.
            b = R.handle(step(PROMPT + "B", HOME, max_tokens=140, stream=True))
            first = await b.__anext__()
            # Before the fix: 200, B queued on R; A's import then ended its request without
            # waking its reader, and B's stream never ended.
            assert first["status"] == 409
            status, hdrs, err = await answer(_chain(first, b))
            assert json.loads(err)["error"]["code"] == "session_busy"
            assert deployment.PULL_REFUSED_HEADER not in hdrs  # the session stays moved
            pinned.gate.set()
            assert (await a)[0] == 200
            assert await look(R) == {"session": True, "requests": 0, "record": (None, 2),
                                     "in_flight": 0}
            assert await look(S) == {"session": False, "requests": 0, "record": None,
                                     "in_flight": 0}
        finally:
            pinned.gate.set()
            await close_replica(S)
            await close_replica(R)

    asyncio.run(go())


async def _chain(first: dict, rest):
    yield first
    async for m in rest:
        yield m


def test_a_second_pull_under_way_gets_the_plain_409_and_the_session_stays_moved(
        monkeypatch, tiny_dir):
    kv = make_router("kvsaga", ["S", "R"])
    refused = []
    router = NS(kv_router=kv, session_ended=lambda s: None,
                move_taken=kv.move_taken,
                move_refused=lambda s, src, *a, **kw: (refused.append(src),
                                                       kv.move_refused(s, src, *a, **kw)))
    monkeypatch.setattr(registry, "routers_here", lambda: [router])

    async def go():
        S, R = served_replica("S", tiny_dir), served_replica("R", tiny_dir)

        class Handle:  # the router moved "s" to R, A and B both before R accepted A
            def options(self, **kwargs):
                return self

            def remote(self, call):
                call["route"] = MOVE
                return R.handle(call)

        async def relay(prompt: str) -> tuple[int, dict, bytes]:
            resp = await core.call("POST", "/v1/completions", b"",
                                   [(b"content-type", b"application/json")], body(prompt))
            return await answer(_chain(resp.first, resp.rest))

        core = GatewayCore(Handle(), ServerSettings(served_model_name="tiny"))
        try:
            pinned = Gated(S)
            monkeypatch.setattr(deployment.serve, "get_deployment_handle",
                                lambda *a: pinned)
            assert (await answer(S.handle(step(PROMPT, {}))))[0] == 200
            kv.homes[ANON] = "R"
            kv.moves[ANON] = Route("R", moved_from="S", migrate=True, reason="steal")
            a = asyncio.create_task(relay(PROMPT + "A"))
            await pinned.exporting.wait()  # A's pull waits on S's export, S holds "s"
            status, hdrs, err = await relay(PROMPT + "B")
            # Before the fix: B pulled too, S answered busy, and the 409 carried the header.
            assert status == 409 and json.loads(err)["error"]["code"] == "session_busy"
            assert deployment.PULL_REFUSED_HEADER not in hdrs
            pinned.gate.set()
            assert (await a)[0] == 200
            assert [m for m, _ in pinned.asked] == ["export_session", "finish_handover"]
            assert refused == []  # the gateway did not send "s" back to S
            kv.confirm_move(ANON, "R")  # (Ray Serve's on_request_routed for A)
            assert kv.route(RouteRequest(session=ANON), {}).replica == "R"
            assert (await look(R))["session"] and (await look(R))["record"] == (None, 2)
            assert (await look(S))["record"] is None and not (await look(S))["session"]
        finally:
            pinned.gate.set()
            await close_replica(S)
            await close_replica(R)

    asyncio.run(go())


def test_ending_a_session_here_wakes_the_reader_of_its_step(tiny_dir):
    """`_forget` (an import's end of the local copy, an undone import) aborts any step of
    the session here: its reader is woken, as by the end route (before the fix it waited
    for good, the step counted in flight)."""

    async def go():
        R = served_replica("R", tiny_dir)
        try:
            await R._start()
            engine = R.app.state.engine
            ids = [5, 6, 7, 8, 9, 10, 11, 12]
            params = SamplingParams(max_tokens=64, temperature=0.0, ignore_eos=True)
            # The end runs in the command that adds the step: it is surely in flight.
            handle = await engine.submit(ids, params, request_id="cmpl-b", session_id=ANON,
                                         on_added=lambda e: R._forget(e, ANON))
            assert "cmpl-b" not in engine._streams  # its reader was told
            with pytest.raises(RequestAborted):
                async for _ in handle.outputs():
                    pass
            assert engine.num_in_flight == 0
        finally:
            await close_replica(R)

    asyncio.run(go())


# -- the reservation on every way out, and the hand-over's guards (stand-in engines) -------


@pytest.fixture(autouse=True)
def bookkeeping_copies(monkeypatch):
    copy_by_bookkeeping(monkeypatch)


def pair(monkeypatch, pinned=Pinned, b_blocks: int = 64):
    """Replica a holding paused session `SID` (3 steps), replica b with nothing and
    `b_blocks` blocks, b's pinned calls delivered to a."""
    ma, mb = KVCacheManager(SPEC, 64), KVCacheManager(SPEC, b_blocks)
    paused(ma)
    ra, rb = SessionRegistry(tokenizer=None), SessionRegistry(tokenizer=None)
    ra.open(SID).num_steps = 3
    a, b = stub_replica("a", Engine(ma), ra), stub_replica("b", Engine(mb), rb)
    handle = pinned(a)
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: handle)
    return a, b, handle


async def settle() -> None:
    """Wait for every other task (a shielded hand-over left running by a cancelled
    step)."""
    await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))


def test_a_pull_cancelled_during_the_import_still_finishes_the_hand_over(monkeypatch):
    """The import and the commit run shielded from the step's cancellation: the source
    hears the commit (it would hold the session for `_HANDOVER_HOLD_S`, its steps 409),
    and the pull's reservation here is given back."""
    a, b, handle = pair(monkeypatch)
    importing, release = threading.Event(), threading.Event()

    def slow_import(e, ex, salt=None):
        importing.set()
        assert release.wait(10)
        return plan_import(e.manager, ex, salt=salt)

    monkeypatch.setattr(handover, "import_session", slow_import)

    async def go():
        task = asyncio.create_task(b._pull(SID, "t1", "a", True))
        assert await asyncio.to_thread(importing.wait, 10)
        task.cancel()  # the step's client left
        with pytest.raises(asyncio.CancelledError):
            await task
        release.set()
        await settle()

    asyncio.run(go())
    assert [m for m, _ in handle.asked] == ["export_session", "finish_handover"]
    ctx = a._sessions.get(SID)
    assert ctx is None or ctx.in_flight is None  # a: ended (committed) or free
    assert a._handovers == {}
    ctx = b._sessions.get(SID)
    assert ctx is None or ctx.in_flight is None  # b: the reservation is gone


def test_a_commit_against_a_record_reopened_under_the_same_id_is_refused(monkeypatch):
    """The session's client ended it on its sender while it was held, and a new session
    of the same id opened there: the late commit must not end that one."""
    a, _, _ = pair(monkeypatch)
    ma, ra = a.app.state.engine.manager, a._sessions

    async def go():
        got = await a.export_session({"pin": "a", "engine_sid": SID, "migrate": True})
        ra.drop(SID)  # the end route
        ma.end_session(SID)
        ma.begin_step(SID, list(range(100, 108)), salt="t1")  # the new session of the id
        ma.allocate_slots(SID, 8)
        ma.finish_step(SID)
        ra.open(SID).num_steps = 1
        return await a.finish_handover({"pin": "a", "engine_sid": SID, "id": got.id,
                                        "commit": True})

    assert asyncio.run(go()) is False
    assert SID in ma.sessions and ra.get(SID).num_steps == 1 and ra.get(SID).in_flight is None
    ma.check_integrity()


class Answers(Pinned):
    """Pinned calls to `target`, but the export answers `export` (not asked of target)."""

    def __init__(self, target, export) -> None:
        super().__init__(target)
        self.export = export

    def options(self, method_name: str):
        call = super().options(method_name)
        if method_name == "export_session":
            async def answer(ask):
                self.asked.append((method_name, ask))
                return self.export
            call.remote = answer
        return call


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("export", ["unknown", "busy", "misrouted", "cancelled"])
def test_a_pull_that_takes_nothing_gives_its_reservation_back(monkeypatch, export, local):
    """A local record (`local`) is freed as it was, one the pull opened is dropped."""
    pinned = Answers(None, export)
    a, b, _ = pair(monkeypatch, pinned=lambda target: pinned)
    mb, rb = b.app.state.engine.manager, b._sessions
    if local:
        paused(mb)
        rb.open(SID).num_steps = 7

    async def go():
        if export != "cancelled":
            return await b._pull(SID, "t1", "a", True)
        asked = asyncio.Event()

        async def never(ask):  # the step's client leaves while the export runs
            asked.set()
            await asyncio.Event().wait()

        pinned.options = lambda method_name: NS(remote=never)
        task = asyncio.create_task(b._pull(SID, "t1", "a", True))
        await asked.wait()
        assert rb.get(SID).in_flight.startswith("pull-")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    ctx = rb.get(SID)
    if local:
        assert ctx is not None and ctx.in_flight is None and ctx.num_steps == 7
    else:
        assert ctx is None


def test_an_end_during_the_pull_ends_the_session_on_both_replicas(monkeypatch):
    """The session's client ends it on its new home while the step that moved it is
    pulling it (an end goes home): the end route drops the pull's reservation; the pull
    then imports nothing, commits (the source ends its copy: the client ended the session)
    and answers as for a step the end aborted. Before, the import opened the session
    again on the new home after its end."""
    a, b, handle = pair(monkeypatch, pinned=Gated)
    mb, rb = b.app.state.engine.manager, b._sessions

    async def go():
        task = asyncio.create_task(b._pull(SID, "t1", "a", True))
        await handle.exporting.wait()
        assert rb.drop(SID) is not None  # the end route (then the engine's end: nothing)
        handle.gate.set()
        return await task

    err = asyncio.run(go())
    assert err.status == 400 and err.code == "aborted"
    assert [(m, c.get("commit")) for m, c in handle.asked] == [
        ("export_session", None), ("finish_handover", True)]
    assert SID not in a.app.state.engine.manager.sessions and a._sessions.get(SID) is None
    assert SID not in mb.sessions and rb.get(SID) is None


class GatedAnswers(Answers):
    """`Answers`, the export's answer given once `gate` is set (`exporting` set first);
    an exception as `export` is raised, as a failed or timed-out call raises."""

    def __init__(self, target, export) -> None:
        super().__init__(target, export)
        self.gate, self.exporting = asyncio.Event(), asyncio.Event()

    def options(self, method_name: str):
        call = super().options(method_name)
        if method_name == "export_session":
            async def answer(ask):
                self.asked.append((method_name, ask))
                self.exporting.set()
                await self.gate.wait()
                if isinstance(self.export, BaseException):
                    raise self.export
                return self.export
            call.remote = answer
        return call


@pytest.mark.parametrize("local", [False, True])
@pytest.mark.parametrize("export", ["unknown", "busy", "misrouted", TimeoutError()],
                         ids=["unknown", "busy", "misrouted", "failed"])
def test_an_end_during_a_pull_that_takes_nothing_aborts_the_step(monkeypatch, export, local):
    """The sender hands nothing over (busy, no such session, gone or stuck) and the
    session's client ended it on the receiver while the pull waited: the end's `200` stood,
    so the step is answered `400` `aborted`, without the header that re-homes the session
    on the sender. Before, the pull gave its reservation back unchecked: the step ran on
    the receiver as a new session of the ended id, or (busy) its 409 sent the ended
    session back to the sender."""
    pinned = GatedAnswers(None, export)
    a, b, _ = pair(monkeypatch, pinned=lambda target: pinned)
    mb, rb = b.app.state.engine.manager, b._sessions
    if local:
        paused(mb)
        rb.open(SID).num_steps = 7

    async def go():
        task = asyncio.create_task(b._pull(SID, "t1", "a", True))
        await pinned.exporting.wait()
        assert rb.drop(SID) is not None  # the end route, then the engine's end
        await b.app.state.engine.call(lambda e: e.end_session(SID))
        pinned.gate.set()
        return await task

    err = asyncio.run(go())
    assert err is not None and (err.status, err.code) == (400, "aborted")
    assert deployment.PULL_REFUSED_HEADER not in err.headers
    assert rb.get(SID) is None and SID not in mb.sessions
    assert [m for m, _ in pinned.asked] == ["export_session"]
