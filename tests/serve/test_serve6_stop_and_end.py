"""Two robustness paths of kvsaga-serve: ending a session whose request is cancelled, and
commands that reach the engine after its thread has stopped.

- `POST /v1/sessions/{id}/end` forgets the session in the server before it awaits the
  engine's end. If that request was cancelled while the end command was still queued, the
  command was cancelled with it: the engine kept the session (and its step in flight), so
  the next step of the id got the engine's 422. The end now runs however its awaiter ends.
- A command submitted after the engine thread had stopped (or after its model failed to
  load) was never run, so its awaiter waited forever. It now fails at once with
  `EngineStopped`, and the commands still queued when the thread stops are failed too;
  a route answers 503 `server_shutting_down`.

As in test_session_race.py, the engine thread is held on a `threading.Event` wherever a
command must still be queued when the next event comes; nothing waits for time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvsaga.serve.app import build_app
from kvsaga.serve.async_engine import AsyncEngine, EngineStopped

from .conftest import MODEL, make_engine, settings
from .test_session_race import _Hold, _queued, _run, _sessions, _until

STEP = {"model": MODEL, "prompt": "agent ", "max_tokens": 3, "ignore_eos": True}


# -- ending a session whose request is cancelled ------------------------------------------


def test_cancelled_end_still_ends_the_session_in_the_engine(tiny_dir: Path):
    """Step A of session "e" is queued, then its end, whose request is cancelled while the
    end is still queued, then step B of "e". The end must still run (aborting A), so B
    starts a new session: before, the end was dropped with its request, A ran on in the
    engine, and B got the engine's 422 ("already has a request in flight")."""
    body = {**STEP, "session_id": "e"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        sessions = _sessions(app)
        hold = _Hold(aengine)
        await hold.wait()
        try:
            step_a = await _queued(aengine, client.post("/v1/completions", json=body), "step A")
            end = asyncio.create_task(client.post("/v1/sessions/e/end"))
            # The route forgets the session, then awaits the end command (held behind A).
            await _until(lambda: sessions.get("anon/e") is None, "forgot the session")
            end.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await end
            step_b = asyncio.create_task(client.post("/v1/completions", json=body))
            await _until(lambda: aengine.num_in_flight == 2, "queued step B")
        finally:
            hold.release.set()
        rb = await step_b
        assert rb.status_code == 200, rb.text  # before: 422 naming the session
        ra = await step_a
        assert ra.status_code == 400 and ra.json()["error"]["code"] == "aborted", ra.text
        ctx = sessions.get("anon/e")
        assert ctx is not None and ctx.num_steps == 1 and ctx.in_flight is None
        # The server and the engine agree: one session "e", nothing in flight.
        assert await aengine.call(
            lambda e: not e.requests and "anon/e" in e.manager.sessions)

    _run(make_engine(tiny_dir), scenario)


def test_cancelled_end_of_a_paused_session_forgets_it_in_the_engine(tiny_dir: Path):
    """A paused session's end, cancelled while queued, still ends it in the engine: both
    the server and the engine have forgotten it, and ending it again is the 404."""
    body = {**STEP, "session_id": "p"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        sessions = _sessions(app)
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert await aengine.call(lambda e: "anon/p" in e.manager.sessions)
        hold = _Hold(aengine)
        await hold.wait()
        try:
            end = asyncio.create_task(client.post("/v1/sessions/p/end"))
            await _until(lambda: sessions.get("anon/p") is None, "forgot the session")
            end.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await end
        finally:
            hold.release.set()
        assert await aengine.call(lambda e: "anon/p" not in e.manager.sessions)
        r = await client.post("/v1/sessions/p/end")
        assert r.status_code == 404 and r.json()["error"]["code"] == "session_not_found"

    _run(make_engine(tiny_dir), scenario)


# -- commands after the engine thread stops -----------------------------------------------


def _ran(log: list[str], name: str) -> Any:
    def fn(engine: Any) -> str:
        log.append(name)
        return name
    return fn


def test_command_after_stop_fails_at_once(tiny_dir: Path):
    aengine = AsyncEngine(make_engine(tiny_dir))
    aengine.start()
    assert aengine.wait_ready(30)
    ran: list[str] = []
    assert aengine.call_sync(_ran(ran, "before")) == "before"
    aengine.stop()
    fut = aengine._submit(_ran(ran, "after"))
    assert fut.done()  # before: queued for a thread that would never run it
    assert aengine.stopped
    with pytest.raises(EngineStopped, match="the server is shutting down"):
        fut.result(0)
    with pytest.raises(EngineStopped, match="the server is shutting down"):
        aengine.call_sync(_ran(ran, "sync"))

    async def via_loop() -> None:
        with pytest.raises(EngineStopped, match="the server is shutting down"):
            await aengine.call(_ran(ran, "async"))
        with pytest.raises(EngineStopped):
            await aengine.end_session("anon/x")
        aengine.post(_ran(ran, "posted"))  # fails quietly: nothing to wait for

    asyncio.run(via_loop())
    assert ran == ["before"]


def test_commands_queued_when_the_thread_stops_are_failed(tiny_dir: Path):
    """A command queued behind the one running when stop() is called is failed by the
    stopping thread (without running), not left pending."""
    aengine = AsyncEngine(make_engine(tiny_dir))
    aengine.start()
    assert aengine.wait_ready(30)
    held, release = threading.Event(), threading.Event()

    def hold(engine: Any) -> None:
        held.set()
        release.wait(60)

    first = aengine._submit(hold)
    assert held.wait(30)
    ran: list[str] = []
    queued = aengine._submit(_ran(ran, "queued"))
    stopper = threading.Thread(target=aengine.stop, kwargs={"timeout": 60})
    stopper.start()
    # stop() sets the flag before it joins; wait for it (a condition, not a time).
    deadline = time.monotonic() + 30
    while not aengine._stop.is_set():
        assert time.monotonic() < deadline, "stop() never began"
        time.sleep(0.001)
    release.set()
    stopper.join(60)
    assert not stopper.is_alive()
    assert first.result(0) is None
    assert queued.done()
    with pytest.raises(EngineStopped, match="the server is shutting down"):
        queued.result(0)
    assert ran == []


def test_commands_fail_after_a_failed_load():
    """A factory that fails: commands queued while it loaded, and those sent after, fail
    with the load's error instead of waiting for an engine that never comes."""
    loading, fail = threading.Event(), threading.Event()

    def factory() -> Any:
        loading.set()
        fail.wait(60)
        raise OSError("no weights at /nowhere")

    aengine = AsyncEngine(factory)
    aengine.start()
    assert loading.wait(30)
    queued = aengine._submit(lambda e: "never")
    fail.set()
    assert aengine._thread is not None
    aengine._thread.join(30)
    assert not aengine._thread.is_alive() and aengine.load_error is not None
    for fut in (queued, aengine._submit(lambda e: "never")):
        assert fut.done()
        with pytest.raises(EngineStopped, match="the model failed to load: no weights"):
            fut.result(0)
    aengine.stop()


def test_route_after_stop_is_503_and_does_not_hang(tiny_dir: Path):
    """In-process use (the Ray replica's `__del__` stops the engine, not the lifespan):
    a completion or a session end that arrives afterwards gets 503 at once."""

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/completions", json={**STEP, "session_id": "s"})
        assert r.status_code == 200, r.text
        await asyncio.to_thread(aengine.stop)
        for path, body in (("/v1/completions", {**STEP, "session_id": "s"}),
                           ("/v1/sessions/s/end", None)):
            r = await client.post(path, json=body)
            assert r.status_code == 503, r.text
            err = r.json()["error"]
            assert err["code"] == "server_shutting_down", err
            assert err["message"] == "the server is shutting down", err
        r = await client.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "stopped", r.text

    _run(make_engine(tiny_dir), scenario, wait_idle=False)


def test_engine_stopped_between_the_check_and_the_submit_is_503(tiny_dir: Path, monkeypatch):
    """The engine may stop after a request read `serving()` and before it submits: the
    submit's EngineStopped is the same 503, not a 500 "internal error"."""
    app = build_app(make_engine(tiny_dir), settings())

    async def main() -> None:
        async with app.router.lifespan_context(app):
            aengine = app.state.engine
            assert await asyncio.to_thread(aengine.wait_ready, 30)
            state = app.state.server
            serving = state.serving()
            # The window: the check passed before the stop (as if read just before it).
            monkeypatch.setattr(type(state), "serving", lambda self: serving)
            await asyncio.to_thread(aengine.stop)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kvsaga",
                                         timeout=60) as client:
                r = await client.post("/v1/completions", json={**STEP, "session_id": "w"})
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "server_shutting_down"
                r = await client.post("/v1/completions", json={**STEP, "session_id": "w"})
                assert r.status_code == 503, r.text  # the refused step left "w" free

    asyncio.run(main())


def test_ray_replica_after_its_engine_stopped_fails_at_once(tiny_dir: Path):
    """The Ray replica wrapper stops its engine in `__del__` (Serve calls it when it stops
    the replica), outside the app's lifespan; a routing-stats call still in flight or
    arriving afterwards reached the stopped engine and waited forever. It now answers at
    once with no stats (the router then places nothing new there), or fails at once if
    the engine stops meanwhile."""
    pytest.importorskip("ray.serve")
    from kvsaga.integrations.ray.deployment import EngineReplica

    replica = object.__new__(EngineReplica)  # no Serve replica context needed
    replica._seen_tokens, replica._service, replica._last_live = {}, {}, {}
    replica.settings = settings()
    replica.app = build_app(make_engine(tiny_dir), replica.settings)
    aengine = replica.app.state.engine
    aengine.start()
    assert aengine.wait_ready(30)
    replica._stack = contextlib.AsyncExitStack()  # as if `_start` had entered the lifespan

    async def stats() -> dict:
        return await replica.record_routing_stats()

    assert "busy_s" in asyncio.run(stats())
    replica.__del__()
    assert asyncio.run(asyncio.wait_for(stats(), 30)) == {}
    with pytest.raises(EngineStopped, match="the server is shutting down"):
        asyncio.run(replica.app.state.engine.call(replica._routing_stats))
