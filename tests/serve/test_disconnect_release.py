"""A non-streaming step whose client disconnects frees its session at once, not when the
engine step under way ends (the session's retry got 409 `session_busy` meanwhile); a finish
of the abandoned step that still comes is not recorded over the retry's context."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from .conftest import MODEL, asgi_post_scope, make_engine
from .test_session_race import _run, _sessions, _until


async def _ignore(message: dict) -> None:
    pass


async def _post_until_gone(app: Any, path: str, body: dict, gone: asyncio.Event,
                           send: Callable[[dict], Awaitable[None]] = _ignore) -> None:
    """POST through the ASGI app directly, its response messages given to `send`; the
    client disconnects once `gone` is set."""
    data = json.dumps(body).encode()
    scope = asgi_post_scope(path, data)
    pending = [{"type": "http.request", "body": data, "more_body": False}]

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await gone.wait()
        return {"type": "http.disconnect"}

    await app(scope, receive, send)


def test_disconnected_step_frees_its_session_before_the_engine_step_ends(tiny_dir: Path):
    engine = make_engine(tiny_dir)
    real_step, blocked, release = engine.step, threading.Event(), threading.Event()

    def step() -> Any:
        outs = real_step()
        if any(o.request_id.startswith("cmpl") and o.finished for o in outs) \
                and not blocked.is_set():
            blocked.set()  # the abandoned step's last step ran: its output is on its way
            release.wait(60)
        return outs

    engine.step = step
    body = {"model": MODEL, "prompt": "agent ", "max_tokens": 2, "ignore_eos": True,
            "session_id": "d"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        assert (await client.post("/v1/chat/completions", json={
            "model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
            "session_id": "d"})).status_code == 200
        ctx = _sessions(app).get("anon/d")
        gone = asyncio.Event()
        first = asyncio.create_task(_post_until_gone(app, "/v1/completions", body, gone))
        try:
            assert await asyncio.to_thread(blocked.wait, 60), "the step never finished"
            assert ctx.in_flight is not None
            gone.set()  # the client leaves while the engine is still in that step
            await _until(lambda: aengine.num_in_flight == 0, "aborted the step")
            assert ctx.in_flight is None  # before: held until the engine step ended
            retry = asyncio.create_task(client.post(
                "/v1/chat/completions", json={
                    "model": MODEL, "messages": [{"role": "user", "content": "again"}],
                    "max_tokens": 2, "session_id": "d"}))
            await _until(lambda: ctx.in_flight is not None or retry.done(), "sent the retry")
        finally:
            release.set()
        r = await retry
        assert r.status_code == 200, r.text  # before: 409 session_busy
        await first
        # The abandoned step's finish came after the retry reserved the session: only the
        # first step and the retry are the session's context.
        assert ctx.num_steps == 2 and ctx.in_flight is None
        assert ctx.tokens is not None and "again" in ctx.tokens.text

    _run(engine, scenario)
