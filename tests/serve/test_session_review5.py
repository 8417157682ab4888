"""A session's reservation against the paths that end, sweep or replace a session while one of
its steps is in flight, and the session ids that the engine's errors carry.

As in test_session_race.py, the engine thread is held on a `threading.Event` (in a command, or
inside `add_request`) wherever a step must still be waiting when the next event comes; the
loops wait for conditions, never for time to pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from kvsaga.serve.sessions import SessionRegistry, tenant_salt

from .conftest import MODEL, asgi_post_scope, make_engine
from .test_session_race import _Hold, _queued, _run, _sessions, _until

STEP = {"model": MODEL, "prompt": "agent ", "max_tokens": 3, "ignore_eos": True}


class _HeldAdds:
    """Holds the engine thread inside `add_request`, after the add, for each of the first
    `n` steps of `engine_sid`: `added[i]` is set once the i-th is in the engine, and the
    thread waits for `release[i]`."""

    def __init__(self, engine: Any, engine_sid: str, n: int) -> None:
        self.added = [threading.Event() for _ in range(n)]
        self.release = [threading.Event() for _ in range(n)]
        self._count = 0
        add_request = engine.add_request

        def held(*args: Any, **kwargs: Any) -> Any:
            out = add_request(*args, **kwargs)
            if kwargs.get("session_id") == engine_sid and self._count < n:
                i, self._count = self._count, self._count + 1
                self.added[i].set()
                self.release[i].wait(60)
            return out

        engine.add_request = held

    async def wait(self, i: int) -> None:
        assert await asyncio.to_thread(self.added[i].wait, 30), f"add {i} never happened"

    def release_all(self) -> None:
        for e in self.release:
            e.set()


def test_ended_last_step_does_not_drop_the_sessions_next_step(tiny_dir: Path):
    """A last step's session is ended by its client while the engine adds the step; a new
    step of the same session id arrives and opens it afresh. The aborted last step's cleanup
    must not drop that new session: it did (it dropped whatever the id named), so the new
    step ran with no reservation and a third step got past the 409."""
    engine = make_engine(tiny_dir)
    adds = _HeldAdds(engine, "anon/s", 2)
    last = {**STEP, "session_id": "s", "kvsaga": {"last_step": True}}
    nxt = {**STEP, "session_id": "s"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        sessions = _sessions(app)
        try:
            a = asyncio.create_task(client.post("/v1/completions", json=last))
            await adds.wait(0)  # A is in the engine; the engine thread is held in its add
            end = asyncio.create_task(client.post("/v1/sessions/s/end"))
            await _until(lambda: sessions.get("anon/s") is None, "dropped the session")
            b = asyncio.create_task(client.post("/v1/completions", json=nxt))
            await _until(lambda: sessions.get("anon/s") is not None, "reserved by B")
            ctx_b = sessions.get("anon/s")
            adds.release[0].set()  # then the end aborts A, then B's add is held
            r = await a
            assert r.status_code == 400 and r.json()["error"]["code"] == "aborted", r.text
            assert (await end).status_code == 200
            await adds.wait(1)
            assert sessions.get("anon/s") is ctx_b, "A's cleanup dropped B's session"
            assert ctx_b is not None and ctx_b.in_flight is not None
            r = await client.post("/v1/completions", json=nxt)
            assert r.status_code == 409 and r.json()["error"]["code"] == "session_busy", r.text
        finally:
            adds.release_all()
        r = await b
        assert r.status_code == 200, r.text
        assert sessions.get("anon/s") is ctx_b and ctx_b.in_flight is None

    _run(engine, scenario)


async def _post_gated(app: Any, path: str, body: dict, final_sent: asyncio.Event,
                      gate: asyncio.Event) -> tuple[int, bytes]:
    """POST through the ASGI app directly; the response's last message (`more_body` False)
    sets `final_sent`, then waits for `gate` before the app may go on (a slow socket)."""
    data = json.dumps(body).encode()
    scope = asgi_post_scope(path, data)
    pending = [{"type": "http.request", "body": data, "more_body": False}]
    done = asyncio.Event()
    status, chunks = 0, []

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                final_sent.set()
                await gate.wait()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return status, b"".join(chunks)


def test_streamed_last_step_closing_late_does_not_drop_the_next_session(tiny_dir: Path):
    """A streamed last step drops its session when its outputs end, and again when its
    response closes; a step of the same session id that arrives in between (the client had
    the whole stream; the socket was slow to finish) opened a new session, which the second
    drop removed while that step ran."""
    last = {**STEP, "session_id": "s", "stream": True, "kvsaga": {"last_step": True}}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        sessions = _sessions(app)
        final_sent, gate = asyncio.Event(), asyncio.Event()
        a = asyncio.create_task(_post_gated(app, "/v1/completions", last, final_sent, gate))
        await _until(final_sent.is_set, "sent A's last message")
        assert sessions.get("anon/s") is None  # the last step ended it
        hold = _Hold(aengine)
        await hold.wait()
        try:
            b = asyncio.create_task(
                client.post("/v1/completions", json={**STEP, "session_id": "s"}))
            await _until(lambda: sessions.get("anon/s") is not None, "reserved by B")
            ctx_b = sessions.get("anon/s")
            gate.set()
            status, text = await a
            assert status == 200 and text.rstrip().endswith(b"data: [DONE]"), text
            assert sessions.get("anon/s") is ctx_b, "A's close dropped B's session"
            r = await client.post("/v1/completions", json={**STEP, "session_id": "s"})
            assert r.status_code == 409, r.text
        finally:
            gate.set()
            hold.release.set()
        r = await b
        assert r.status_code == 200, r.text
        assert sessions.get("anon/s") is ctx_b and ctx_b.num_steps == 1

    _run(make_engine(tiny_dir), scenario)


def test_idle_sweep_spares_a_session_whose_step_arrived_during_the_sweep(tiny_dir: Path):
    """The sweep lists the idle sessions, then ends them one by one, awaiting the engine
    for each; a step of a listed session that arrives meanwhile reserves it. The sweep
    dropped it anyway and ended it in the engine, aborting the step (a 400 'aborted' for a
    session in use).

    The other session's step is held inside `add_request` until the sweep has returned:
    a step that finished first (the sweep's task resumed late on a loaded machine) left its
    session idle at the sweep's made-up `now`, and the sweep rightly ended it."""

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        state = app.state.server
        sessions = _sessions(app)
        for sid in ("s1", "s2"):
            r = await client.post("/v1/completions", json={**STEP, "session_id": sid})
            assert r.status_code == 200, r.text
        idle_s = state.settings.session_idle_s
        later = time.monotonic() + 2 * idle_s  # both are idle then
        assert sorted(sessions.idle(idle_s, later)) == ["anon/s1", "anon/s2"]
        first = next(iter(sessions.idle(idle_s, later)))  # the order the sweep ends them in
        other = "s2" if first == "anon/s1" else "s1"
        adds = await aengine.call(lambda e: _HeldAdds(e, f"anon/{other}", 1))
        hold = _Hold(aengine)
        await hold.wait()
        try:
            sweep = asyncio.create_task(state.end_idle_sessions(idle_s, now=later))
            await _until(lambda: sessions.get(first) is None, "swept the first session")
            ctx = sessions.get(f"anon/{other}")
            assert ctx is not None
            step = asyncio.create_task(
                client.post("/v1/completions", json={**STEP, "session_id": other}))
            await _until(lambda: ctx.in_flight is not None, "reserved the other session")
        finally:
            hold.release.set()  # the first's end runs, then the other's add, held
        try:
            await adds.wait(0)
            assert await sweep == [first]
        finally:
            adds.release_all()
        r = await step
        assert r.status_code == 200, r.text
        assert sessions.get(f"anon/{other}") is ctx and ctx.num_steps == 2
        assert sessions.get(first) is None

    _run(make_engine(tiny_dir), scenario)


def test_engine_failure_names_no_engine_session(tiny_dir: Path):
    """An engine failure reaches every request in flight, of every tenant. Its message named
    a session by its engine id (the tenant's salt digest and the session id): one tenant's
    500 showed another tenant's session."""
    engine = make_engine(tiny_dir)

    def failing_step() -> Any:
        # As the scheduler's admission failure reads (kvsaga/scheduler/base.py).
        sid = sorted(r.session_id for r in engine.requests.values())[0]
        raise RuntimeError(f"admission of session {sid!r} found no room for its step")

    engine.step = failing_step
    keys = {"key-a": "private-a", "key-b": "private-b"}
    engine_ids = [SessionRegistry.engine_id(tenant_salt(k, None), s) for k, s in keys.items()]

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        hold = _Hold(aengine)
        await hold.wait()
        try:
            tasks = [asyncio.create_task(client.post(
                "/v1/completions", json={**STEP, "session_id": sid, "stream": i == 1},
                headers={"Authorization": f"Bearer {key}"}))
                for i, (key, sid) in enumerate(keys.items())]
            await _until(lambda: aengine.num_in_flight == 2, "queued both steps")
        finally:
            hold.release.set()
        for t in tasks:
            r = await t
            assert "the engine failed: RuntimeError" in r.text, r.text
            for eid in engine_ids:
                assert eid.split("/")[0] not in r.text, r.text
            # No tenant sees the other's session.
            other = [s for k, s in keys.items() if f"Bearer {k}" !=
                     r.request.headers["authorization"]][0]
            assert other not in r.text, r.text
        for eid in engine_ids:  # the failed steps gave their sessions back
            ctx = _sessions(app).get(eid)
            assert ctx is not None and ctx.in_flight is None, eid

    _run(engine, scenario, api_keys=tuple(keys))


def test_engine_refusal_names_the_clients_session_id_whatever_it_holds(tiny_dir: Path):
    """The engine names a session by the repr of its engine id; for an id that repr escapes
    (a backslash here) the 422's message kept the tenant-prefixed id: the server replaced
    only the id as written. The engine is made to refuse by a step of the session that the
    engine thread adds itself (the server's sessions know nothing of it)."""
    from kvsaga.engine.sampling import SamplingParams

    sid = "dir\\step"

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        held, release = threading.Event(), threading.Event()

        def add_then_hold(e: Any) -> None:
            e.add_request([5, 6, 7], SamplingParams(max_tokens=2), request_id="direct",
                          session_id=f"anon/{sid}")
            held.set()
            release.wait(60)

        aengine.post(add_then_hold)
        assert await asyncio.to_thread(held.wait, 30)
        try:
            body = {**STEP, "session_id": sid}
            step = await _queued(aengine, client.post("/v1/completions", json=body), "the step")
        finally:
            release.set()
        r = await step
        assert r.status_code == 422, r.text
        message = r.json()["error"]["message"]
        assert repr(sid) in message and "anon/" not in message, message
        assert _sessions(app).get(f"anon/{sid}") is None  # the refused first step left none

    _run(make_engine(tiny_dir), scenario)


def test_steps_refused_before_the_engine_leave_no_session_and_free_a_known_one(
        tiny_dir: Path):
    """429 (queue full) and 400 (a limit) come after the step reserved its session: a
    refused first step leaves no session behind, a refused later step leaves its session
    free and as it was."""

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        sessions = _sessions(app)
        r = await client.post("/v1/completions", json={**STEP, "session_id": "known"})
        assert r.status_code == 200, r.text
        known = sessions.get("anon/known")
        assert known is not None and known.num_steps == 1
        tokens = known.tokens
        r = await client.post("/v1/completions",
                              json={**STEP, "session_id": "new", "max_tokens": 9})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens", r.text
        assert sessions.get("anon/new") is None
        hold = _Hold(aengine)
        await hold.wait()
        try:
            one_shot = await _queued(aengine, client.post("/v1/completions", json=STEP),
                                     "the one-shot step")
            for sid in ("known", "new"):
                r = await client.post("/v1/completions", json={**STEP, "session_id": sid})
                assert r.status_code == 429 and r.json()["error"]["code"] == "queue_full", r.text
            assert sessions.get("anon/new") is None
            assert sessions.get("anon/known") is known and known.in_flight is None
            assert known.tokens is tokens and known.num_steps == 1
        finally:
            hold.release.set()
        assert (await one_shot).status_code == 200
        for sid in ("known", "new"):
            r = await client.post("/v1/completions", json={**STEP, "session_id": sid})
            assert r.status_code == 200, r.text
        assert known.num_steps == 2

    _run(make_engine(tiny_dir, max_num_seqs=1), scenario, max_queue=0, max_tokens_limit=8)


def test_first_step_cancelled_before_the_engine_took_it(tiny_dir: Path, caplog: Any):
    """The client leaves while its first step waits behind other commands: the add never
    runs, the abort posted for its id is a no-op in the engine (no error logged), and no
    session is left in the server or the engine."""
    body = {**STEP, "session_id": "c"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        sessions = _sessions(app)
        hold = _Hold(aengine)
        await hold.wait()
        try:
            step = await _queued(aengine, client.post("/v1/completions", json=body), "the step")
            assert sessions.get("anon/c") is not None  # the session exists from the arrival
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await step
            assert sessions.get("anon/c") is None and aengine.num_in_flight == 0
        finally:
            hold.release.set()
        assert await aengine.call(
            lambda e: not e.requests and "anon/c" not in e.manager.sessions)
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200, r.text

    with caplog.at_level("ERROR", logger="kvsaga.serve"):
        _run(make_engine(tiny_dir), scenario)
    # kvsaga's errors: caplog also takes other loggers' (asyncio's "Task exception was
    # never retrieved" for an earlier test's task that a collection finalized here)
    assert not [r for r in caplog.records
                if r.levelname == "ERROR" and r.name.startswith("kvsaga")], caplog.text
