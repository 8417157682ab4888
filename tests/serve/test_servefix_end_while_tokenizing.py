"""`POST /v1/sessions/{id}/end` while a step of the session is still being tokenized (a long
prompt goes to a worker thread, `serving.TOKENIZE_OFF_LOOP_CHARS`): the step is refused
before it is queued, as a step already queued is aborted by the end (400 `aborted`), so the
engine never re-creates a session the server has forgotten.

Before the fix the step was queued and ran anyway: the end answered 200, the step 200, and
the engine kept the session paused, holding KV, while a second end answered 404.

The worker thread is held on a `threading.Event` inside `SessionRegistry.encode`, so the
end always arrives while the step tokenizes, however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvsaga.serve import serving
from kvsaga.serve.sessions import SessionRegistry

from .conftest import MODEL, make_engine
from .test_session_race import _run, _sessions

BODY = {"model": MODEL, "prompt": "agent step ", "max_tokens": 3, "ignore_eos": True}


class _Gate:
    """Holds the next off-loop tokenization (`release_gil=True`) once `arm`ed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.entered, self.release = threading.Event(), threading.Event()
        original = SessionRegistry.encode
        gate = self

        def encode(self: SessionRegistry, ctx: Any, text: str, special: bool,
                   release_gil: bool = False) -> list[int]:
            if release_gil and gate.armed:
                gate.armed = False  # the next one only
                gate.entered.set()
                assert gate.release.wait(60), "the tokenizer thread was never released"
            return original(self, ctx, text, special, release_gil)

        monkeypatch.setattr(SessionRegistry, "encode", encode)
        # Every prompt goes to the worker thread, as an agent's long prompt does.
        monkeypatch.setattr(serving, "TOKENIZE_OFF_LOOP_CHARS", 0)

    async def hold(self, client: httpx.AsyncClient, body: dict) -> asyncio.Task:
        """Send `body` as a task; returns once its prompt is held in the tokenizer."""
        self.armed = True
        task = asyncio.ensure_future(client.post("/v1/completions", json=body))
        assert await asyncio.to_thread(self.entered.wait, 30), "the step never tokenized"
        return task


def _aborted(r: httpx.Response, sid: str) -> None:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "aborted" and err["param"] == "session_id", err
    assert repr(sid) in err["message"] and "anon/" not in r.text, err


async def _engine_knows(aengine: Any, engine_sid: str) -> bool:
    return await aengine.call(lambda e: engine_sid in e.manager.sessions
                              or any(r.session_id == engine_sid for r in e.requests.values()))


@pytest.mark.parametrize("first_step", [False, True], ids=["next-step", "first-step"])
def test_end_while_the_step_tokenizes_refuses_the_step(tiny_dir: Path, first_step: bool,
                                                       monkeypatch: pytest.MonkeyPatch):
    gate = _Gate(monkeypatch)
    body = {**BODY, "session_id": "t1"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        if not first_step:
            r = await client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
        try:
            step = await gate.hold(client, {**body, "prompt": "agent step, again "})
            end = await client.post("/v1/sessions/t1/end")
            assert end.status_code == 200, end.text
        finally:
            gate.release.set()
        _aborted(await step, "t1")
        # Nothing was queued: neither the server nor the engine knows the session.
        assert _sessions(app).get("anon/t1") is None
        assert (await client.post("/v1/sessions/t1/end")).status_code == 404
        assert not await _engine_knows(aengine, "anon/t1")
        assert aengine.num_in_flight == 0
        # The id is free for a new session.
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert (await client.post("/v1/sessions/t1/end")).status_code == 200

    _run(make_engine(tiny_dir), scenario)


def test_a_new_session_of_the_id_survives_the_refused_step(tiny_dir: Path,
                                                           monkeypatch: pytest.MonkeyPatch):
    """Ended while its step tokenizes, then opened again by another step of the same id that
    runs meanwhile: the held step is refused, and the new session stays, free and usable."""
    gate = _Gate(monkeypatch)
    body = {**BODY, "session_id": "t2"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        try:
            old = await gate.hold(client, body)
            assert (await client.post("/v1/sessions/t2/end")).status_code == 200
            new = await client.post("/v1/completions", json=body)  # not held: runs now
            assert new.status_code == 200, new.text
        finally:
            gate.release.set()
        _aborted(await old, "t2")
        ctx = _sessions(app).get("anon/t2")
        assert ctx is not None and ctx.in_flight is None and ctx.num_steps == 1
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text
        assert (await client.post("/v1/sessions/t2/end")).status_code == 200
        assert not await _engine_knows(aengine, "anon/t2")

    _run(make_engine(tiny_dir), scenario)
