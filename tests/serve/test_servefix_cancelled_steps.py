"""Steps cut off before they reach their `Run`, and what a step cut off by its session's end
is told (review of session 46).

- A first step whose handler is cancelled (Ray Serve cancels it when its client leaves) after
  the engine thread added it and ran a step of it: the abort left the session paused in the
  engine while the server forgot it (`/end` answered 404; it stayed until the engine's idle
  sweep), and the request was never counted in `request_success`.
- A client that disconnects while its step waits to be queued (the engine thread busy in a
  long step): the session stayed reserved until the engine took the abandoned add, so the
  client's retry got 409 `session_busy`.
- A step aborted because its session was ended got only "the request was aborted".

The engine thread is held on `threading.Event`s (`_Hold`, a wrapped `engine.step`), so each
race goes the same way however loaded the machine is; nothing waits for time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import MODEL, make_engine
from .test_disconnect_release import _post_until_gone
from .test_session_race import _Hold, _idle, _queued, _run, _sessions, _until

BODY = {"model": MODEL, "prompt": "agent " * 5, "max_tokens": 40, "ignore_eos": True}


def test_first_step_cancelled_after_the_engine_ran_it_is_ended_there_and_counted(
        tiny_dir: Path):
    engine = make_engine(tiny_dir)
    stepped, go = threading.Event(), threading.Event()
    real_step = engine.step

    def step() -> Any:
        outs = real_step()
        if outs and not stepped.is_set():  # the step's first token: its session is running
            stepped.set()
            go.wait(60)
        return outs

    engine.step = step
    body = {**BODY, "session_id": "c"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        hold = _Hold(aengine)
        await hold.wait()
        try:
            first = await _queued(aengine, client.post("/v1/completions", json=body),
                                  "the first step")
            hold.release.set()
            # The event loop stays blocked (as a long in-loop task or a GC pause blocks it)
            # while the engine thread adds the step and runs it: the handler resumes only
            # once it has been cancelled.
            assert stepped.wait(30), "the step never ran"
            first.cancel()  # its client left
            with contextlib.suppress(asyncio.CancelledError):
                await first
        finally:
            hold.release.set()
            go.set()
        await _idle(aengine)
        assert _sessions(app).get("anon/c") is None
        # Before: the engine kept it paused, holding its context, and `/end` answered 404.
        assert not await aengine.call(lambda e: "anon/c" in e.manager.sessions)
        # The engine took it, so it is counted, as aborted (before: not at all).
        assert app.state.server.metrics.counts.ended["abort"] == 1
        # A new step of the id starts a new session.
        r = await client.post("/v1/completions", json={**body, "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert (await client.post("/v1/sessions/c/end")).status_code == 200

    _run(engine, scenario)


@pytest.mark.parametrize("first", [True, False], ids=["first-step", "next-step"])
def test_client_leaving_before_its_step_is_queued_frees_the_session_at_once(
        tiny_dir: Path, first: bool):
    body = {**BODY, "max_tokens": 2, "session_id": "d"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        if not first:
            assert (await client.post("/v1/completions", json=body)).status_code == 200
        hold = _Hold(aengine)  # the engine thread busy, as in a long step
        await hold.wait()
        gone = asyncio.Event()
        try:
            step = await _queued(aengine, _post_until_gone(app, "/v1/completions", body, gone),
                                 "the step")
            gone.set()  # the client leaves while its add waits for the engine thread
            # Before: the step waited until the engine took its add, its session reserved.
            await _until(step.done, "answered the step whose client left")
            ctx = _sessions(app).get("anon/d")
            assert ctx is None if first else ctx.in_flight is None
            assert aengine.num_in_flight == 0
            retry = asyncio.create_task(client.post("/v1/completions", json=body))
            await _until(lambda: retry.done() or aengine.num_in_flight == 1,
                         "answered or queued the retry")
        finally:
            hold.release.set()
        r = await retry
        assert r.status_code == 200, r.text  # before: 409 session_busy
        await step
        assert (await client.post("/v1/sessions/d/end")).status_code == 200
        assert not await aengine.call(lambda e: "anon/d" in e.manager.sessions)

    _run(make_engine(tiny_dir), scenario)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_step_aborted_by_its_session_end_is_told_the_session_ended(
        tiny_dir: Path, stream: bool):
    body = {**BODY, "max_tokens": 3, "session_id": "e", "stream": stream}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        sessions = _sessions(app)
        hold = _Hold(aengine)
        await hold.wait()
        try:
            step = await _queued(aengine, client.post("/v1/completions", json=body), "the step")
            end = asyncio.create_task(client.post("/v1/sessions/e/end"))
            await _until(lambda: sessions.get("anon/e") is None, "dropped the session")
        finally:
            hold.release.set()
        assert (await end).status_code == 200
        r = await step
        if stream:
            assert r.status_code == 200 and r.text.rstrip().endswith("data: [DONE]"), r.text
            events = [json.loads(line[len("data: "):]) for line in r.text.splitlines()
                      if line.startswith("data: {")]
            err = events[-1]["error"]
        else:
            assert r.status_code == 400, r.text
            err = r.json()["error"]
        assert err["code"] == "aborted" and err["param"] == "session_id", err  # before: None
        assert "session 'e' was ended" in err["message"] and "anon/" not in err["message"]

    _run(make_engine(tiny_dir), scenario)
