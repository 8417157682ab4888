"""Concurrent steps of one session, driven through the ASGI app in one event loop.

A step reserves its session before its first await, so a second step of the session that
arrives while the first waits for the engine gets the documented 409 `session_busy` (it got
the engine's refusal as a 422 naming the tenant-prefixed session id), and the reservation is
given back however the step ends: refused, cancelled by its client, or finished.

The engine thread is held on a `threading.Event` while the steps arrive, so the first step
is still waiting for the engine when the second comes, however loaded the machine is; the
loops below wait for conditions (with a deadline against hanging), never for time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from kvsaga.serve.app import build_app
from kvsaga.serve.sessions import SessionRegistry

from .conftest import MODEL, make_engine, settings

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "next step"}],
        "max_tokens": 3, "ignore_eos": True}


async def _until(cond: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Yield to the event loop until `cond()` holds (AssertionError after `timeout`)."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"never {what}"
        await asyncio.sleep(0.001)


class _Hold:
    """Holds the engine thread in a command until `release` is set."""

    def __init__(self, aengine: Any) -> None:
        self.held, self.release = threading.Event(), threading.Event()
        aengine.post(self._hold)

    def _hold(self, engine: Any) -> None:
        self.held.set()
        self.release.wait(60)

    async def wait(self) -> None:
        assert await asyncio.to_thread(self.held.wait, 30), "the engine thread was not held"


async def _queued(aengine: Any, request: Awaitable[httpx.Response], what: str) -> asyncio.Task:
    """Send `request` as a task and wait until its step is the one command queued behind a
    held engine thread (as `_Hold` holds it); returns the task."""
    task = asyncio.ensure_future(request)
    await _until(lambda: aengine.num_in_flight == 1, f"queued {what}")
    return task


def _sessions(app: Any) -> SessionRegistry:
    """The server's session registry."""
    return app.state.server.serving().sessions


def _run(engine: Any,
         scenario: Callable[[Any, Any, httpx.AsyncClient], Awaitable[None]],
         *, wait_idle: bool = True, **settings_kwargs: Any) -> None:
    """Run `scenario(app, aengine, client)` against the app over ASGI, then (unless
    `wait_idle` is off: a scenario that stops the engine) wait until the engine is idle and
    check its pool."""
    app = build_app(engine, settings(**settings_kwargs))

    async def main() -> None:
        async with app.router.lifespan_context(app):
            aengine = app.state.engine
            assert await asyncio.to_thread(aengine.wait_ready, 30)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://kvsaga",
                                         timeout=60) as client:
                await scenario(app, aengine, client)
                if wait_idle:
                    await _idle(aengine)

    asyncio.run(main())


async def _idle(aengine: Any) -> None:
    """Until the engine runs nothing and holds no block; then check the pool."""
    def look(e: Any) -> bool:
        return not e.has_unfinished() and e.manager.stats().num_used_blocks == 0

    deadline = time.monotonic() + 30
    while not await aengine.call(look):
        assert time.monotonic() < deadline, "the engine never went idle"
        await asyncio.sleep(0.01)
    await aengine.call(lambda e: e.manager.check_integrity())


def _busy(r: httpx.Response) -> None:
    assert r.status_code == 409, r.text
    err = r.json()["error"]
    assert err["code"] == "session_busy" and err["param"] == "session_id", err
    assert "'r2'" in err["message"] and "anon/" not in r.text, err


def test_second_step_while_first_awaits_engine_is_409(tiny_dir: Path):
    """The walkthrough's race: the first step is queued for the engine thread but not yet
    added; the second step of the same session must get 409, not the engine's 422."""
    body = {**CHAT, "session_id": "r2"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        hold = _Hold(aengine)
        await hold.wait()
        try:
            first = await _queued(aengine, client.post("/v1/chat/completions", json=body),
                                  "the first step")
            second = asyncio.create_task(client.post("/v1/chat/completions", json=body))
            # Fixed: the second is answered at once. Before: it waited for the engine too.
            await _until(lambda: second.done() or aengine.num_in_flight == 2,
                         "answered or queued the second step")
        finally:
            hold.release.set()
        _busy(await second)
        r1 = await first
        assert r1.status_code == 200, r1.text
        assert r1.headers["x-session-id"] == "r2"
        # The finished step gave the session back: its next step runs.
        r3 = await client.post("/v1/chat/completions", json=body)
        assert r3.status_code == 200, r3.text

    _run(make_engine(tiny_dir), scenario)


def test_streaming_step_holds_session_until_its_stream_ends(tiny_dir: Path):
    body = {**CHAT, "session_id": "r2", "stream": True}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        hold = _Hold(aengine)
        await hold.wait()
        try:
            first = await _queued(aengine, client.post("/v1/chat/completions", json=body),
                                  "the first step")
            second = asyncio.create_task(
                client.post("/v1/chat/completions", json={**body, "stream": False}))
            await _until(lambda: second.done() or aengine.num_in_flight == 2,
                         "answered or queued the second step")
        finally:
            hold.release.set()
        _busy(await second)
        r1 = await first
        assert r1.status_code == 200 and r1.text.rstrip().endswith("data: [DONE]"), r1.text
        r3 = await client.post("/v1/chat/completions", json=body)
        assert r3.status_code == 200 and "[DONE]" in r3.text, r3.text

    _run(make_engine(tiny_dir), scenario)


def test_refused_step_gives_the_session_back(tiny_dir: Path):
    """A step the engine refuses (422) frees its session, leaves none behind when it was
    the first, and its message names the client's session id only."""
    bad = {"model": MODEL, "prompt": [5, 99999], "max_tokens": 2}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/completions", json={**bad, "session_id": "new-one"})
        assert r.status_code == 422 and "99999" in r.text, r.text
        assert "anon/" not in r.text
        # The refused first step opened no session.
        assert (await client.post("/v1/sessions/new-one/end")).status_code == 404
        ok = {"model": MODEL, "prompt": "agent ", "max_tokens": 2, "session_id": "old-one"}
        assert (await client.post("/v1/completions", json=ok)).status_code == 200
        r = await client.post("/v1/completions", json={**bad, "session_id": "old-one"})
        assert r.status_code == 422, r.text
        # The session is still there and free: its next step runs, then it ends.
        assert (await client.post("/v1/completions", json=ok)).status_code == 200
        assert (await client.post("/v1/sessions/old-one/end")).status_code == 200

    _run(make_engine(tiny_dir), scenario)


def test_step_cancelled_while_engine_adds_it_frees_session_and_request(tiny_dir: Path):
    """The client goes away while the engine thread is adding its step: the step is aborted
    in the engine and the session freed, so the next step runs (it got the engine's 422:
    the abandoned step still ran there)."""
    engine = make_engine(tiny_dir)
    adding, release = threading.Event(), threading.Event()
    add_request = engine.add_request

    def held_add_request(*args: Any, **kwargs: Any) -> Any:
        out = add_request(*args, **kwargs)
        if kwargs.get("session_id") == "anon/r2" and not adding.is_set():
            adding.set()
            release.wait(60)
        return out

    engine.add_request = held_add_request
    body = {"model": MODEL, "prompt": "agent ", "max_tokens": 40, "ignore_eos": True,
            "session_id": "r2"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        try:
            first = asyncio.create_task(client.post("/v1/completions", json=body))
            assert await asyncio.to_thread(adding.wait, 30), "the first step was never added"
            first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await first
            second = asyncio.create_task(client.post("/v1/completions", json=body))
            await _until(lambda: second.done() or aengine.num_in_flight == 1,
                         "answered or queued the second step")
        finally:
            release.set()
        r = await second
        assert r.status_code == 200, r.text

    _run(engine, scenario)


def test_session_ended_while_its_first_step_waits_for_the_engine(tiny_dir: Path):
    """A session exists from its first step's arrival: ending it while that step waits for
    the engine ends it there after the step was added (commands run in order), so the step
    is aborted and the session is gone from the server and the engine alike."""
    body = {"model": MODEL, "prompt": "agent ", "max_tokens": 3, "session_id": "r2"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        sessions = _sessions(app)
        hold = _Hold(aengine)
        await hold.wait()
        try:
            first = await _queued(aengine, client.post("/v1/completions", json=body),
                                  "the first step")
            end = asyncio.create_task(client.post("/v1/sessions/r2/end"))
            await _until(lambda: sessions.get("anon/r2") is None, "dropped the session")
        finally:
            hold.release.set()
        assert (await end).status_code == 200
        r = await first
        assert r.status_code == 400 and r.json()["error"]["code"] == "aborted", r.text
        assert sessions.get("anon/r2") is None
        assert (await client.post("/v1/sessions/r2/end")).status_code == 404
        assert not await aengine.call(lambda e: "anon/r2" in e.manager.sessions)

    _run(make_engine(tiny_dir), scenario)
