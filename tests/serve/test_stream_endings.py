"""How a request ends when something other than its own finish ends it: its session ended
by another request, or the engine stopped while it ran. A streamed answer cut off either way
ends with an error event and `[DONE]` (before, a session end closed the stream as if it had
finished: the `openai` client read a cut-off answer as complete), and a request in flight
when the engine stops gets the documented 503 `server_shutting_down`, not a 500.

As in test_session_race.py, the engine thread is held on a `threading.Event` wherever a
command must still be queued when the next event comes; nothing waits for time to pass.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Any

import httpx

from .conftest import MODEL, make_engine
from .test_session_race import _Hold, _queued, _run, _until

LONG = {"model": MODEL, "prompt": "agent ", "max_tokens": 200, "ignore_eos": True}


def _events(text: str) -> list[Any]:
    """An SSE body's `data:` payloads, JSON-decoded but for `[DONE]`."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_a_stream_cut_off_by_its_session_end_says_aborted(tiny_dir: Path):
    body = {**LONG, "session_id": "s", "stream": True}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        hold = _Hold(aengine)
        await hold.wait()
        try:
            stream = await _queued(aengine, client.post("/v1/completions", json=body),
                                   "the stream")
            end = asyncio.ensure_future(client.post("/v1/sessions/s/end"))
            await _until(lambda: app.state.server.serving().sessions.get("anon/s") is None,
                         "forgot the session")
        finally:
            hold.release.set()
        assert (await end).status_code == 200
        r = await stream
        assert r.status_code == 200
        events = _events(r.text)
        assert events[-1] == "[DONE]"
        error = events[-2]["error"]
        assert error["code"] == "aborted" and error["type"] == "invalid_request_error"
        assert not any(e["choices"][0]["finish_reason"] for e in events[:-2])

    _run(make_engine(tiny_dir), scenario)


def test_requests_in_flight_when_the_engine_stops_get_503(tiny_dir: Path):
    """One request waiting for its answer and one streaming, both running in the engine
    when it stops: the first gets 503 `server_shutting_down` (before: 500 "the engine
    failed: EngineStopped"), the stream an error event with that code, then `[DONE]`."""

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        plain = asyncio.ensure_future(client.post("/v1/completions", json=LONG))
        stream = asyncio.ensure_future(client.post("/v1/completions",
                                                   json={**LONG, "stream": True}))
        await _until(lambda: aengine.num_in_flight == 2, "sent both")
        assert await aengine.call(lambda e: len(e.requests)) == 2  # both in the engine
        hold = _Hold(aengine)  # between two steps: neither has finished its 200 tokens
        await hold.wait()
        stopping = threading.Thread(target=aengine.stop)
        stopping.start()
        await _until(lambda: aengine.stopped, "stopping")
        hold.release.set()
        r = await plain
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "server_shutting_down"
        events = _events((await stream).text)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "server_shutting_down"
        await asyncio.to_thread(stopping.join, 30)

    _run(make_engine(tiny_dir), scenario, wait_idle=False)
