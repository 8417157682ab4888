"""Steps cut off in `Serving._queue`, before their `Run` (review of session 46's fix of the
cancelled steps).

- A session's last step (`kvsaga.last_step`) cut off there: the engine's abort of a last
  step ends its session (or, never added, the engine kept it), but the server kept its
  record: `/end` answered 200 ending nothing and the id's next step was taken as resumed.
  The same step cut off once in its `Run` was forgotten on both sides.
- A first step that the engine did not take, cut off all the same (its handler cancelled
  after `_submit` raised, or while the engine was refusing its add): whether its session
  was ended in the engine was told by the exception's type, so the end was posted and
  aborted a step of the id that the server does not track.
- The handler cancelled after `_submit` returned the handle, before it resumed (Ray Serve
  cancels a replica's task when its client leaves): nothing tested that the handle is
  aborted and counted there.

The handler is cancelled from a `call_soon` made as `_submit` ends, which runs before the
handler's wakeup; the engine thread is held on `threading.Event`s (`_Hold`, a wrapped
`add_request`) and never steps where a step must stay in flight, so each race goes the same
way however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvsaga.engine.sampling import SamplingParams
from kvsaga.serve.serving import Serving

from .conftest import MODEL, make_engine
from .test_session_race import _Hold, _idle, _queued, _run, _sessions

BODY = {"model": MODEL, "prompt": "agent " * 5, "max_tokens": 40, "ignore_eos": True}


class _CancelAfterSubmit:
    """Cancels the handler of the step that `send` sends once its `_submit` has returned or
    raised, before the handler resumes: the `call_soon` made as the submit task ends runs
    before that task's done callbacks (the handler's wakeup)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.armed = False
        self.handler: asyncio.Task | None = None
        real_complete, real_submit = Serving.complete, Serving._submit

        async def complete(serving: Serving, *args: Any, **kwargs: Any) -> Any:
            self.handler = asyncio.current_task()
            return await real_complete(serving, *args, **kwargs)

        async def submit(serving: Serving, *args: Any, **kwargs: Any) -> Any:
            try:
                return await real_submit(serving, *args, **kwargs)
            finally:
                if self.armed:
                    self.armed = False
                    assert self.handler is not None
                    asyncio.get_running_loop().call_soon(self.handler.cancel)

        monkeypatch.setattr(Serving, "complete", complete)
        monkeypatch.setattr(Serving, "_submit", submit)

    async def send(self, client: httpx.AsyncClient, body: dict) -> None:
        self.armed = True
        task = asyncio.ensure_future(client.post("/v1/completions", json=body))
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled() and not self.armed, "the handler was not cancelled"


async def _engine_holds(aengine: Any, engine_sid: str) -> bool:
    """Whether the engine holds the session (after every command posted so far)."""
    return await aengine.call(lambda e: engine_sid in e.manager.sessions)


@pytest.mark.parametrize("first", [True, False], ids=["first-step", "next-step"])
def test_step_cancelled_after_its_submit_returned_is_aborted_and_counted(
        tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, first: bool):
    cut = _CancelAfterSubmit(monkeypatch)
    body = {**BODY, "session_id": "b"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        if not first:
            assert (await client.post("/v1/completions", json={**body, "max_tokens": 2})
                    ).status_code == 200
        ended = app.state.server.metrics.counts.ended
        aborts = ended["abort"]
        await cut.send(client, body)
        await _idle(aengine)
        # Left unaborted (`_queue` not aborting the handle it got), the request ran on,
        # counted in flight for good and never counted as ended.
        assert aengine.num_in_flight == 0
        assert ended["abort"] == aborts + 1
        ctx = _sessions(app).get("anon/b")
        if first:
            assert ctx is None and not await _engine_holds(aengine, "anon/b")
        else:
            assert ctx is not None and ctx.in_flight is None and ctx.tokens is not None
        r = await client.post("/v1/completions", json={**body, "max_tokens": 2})
        assert r.status_code == 200, r.text

    _run(make_engine(tiny_dir), scenario)


@pytest.mark.parametrize("when", ["after-the-add", "before-the-add"])
def test_last_step_cut_off_before_its_run_ends_its_session_on_both_sides(
        tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, when: str):
    cut = _CancelAfterSubmit(monkeypatch)
    body = {**BODY, "max_tokens": 2, "session_id": "l"}
    last = {**BODY, "prompt": BODY["prompt"] + "more", "session_id": "l",
            "kvsaga": {"last_step": True}}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        if when == "after-the-add":
            await cut.send(client, last)  # the engine took it: its abort ends the session
        else:
            hold = _Hold(aengine)
            await hold.wait()
            try:
                step = await _queued(aengine, client.post("/v1/completions", json=last),
                                     "the last step")
                step.cancel()  # its client left while its add waited for the engine thread
                with contextlib.suppress(asyncio.CancelledError):
                    await step
            finally:
                hold.release.set()
        await _idle(aengine)
        # Before: the server kept the session (with its context) that the engine had ended
        # (after the add) or kept (before it), and `/end` answered 200.
        assert _sessions(app).get("anon/l") is None
        assert not await _engine_holds(aengine, "anon/l")
        assert (await client.post("/v1/sessions/l/end")).status_code == 404
        r = await client.post("/v1/completions", json=body)  # a new session of the id
        assert r.status_code == 200, r.text
        assert _sessions(app).get("anon/l").tokens is not None

    _run(make_engine(tiny_dir), scenario)



def test_last_step_refused_then_cut_off_keeps_its_session(tiny_dir: Path,
                                                          monkeypatch: pytest.MonkeyPatch):
    """A refusal leaves the session as it was, even when the handler is cancelled before it
    reads the refusal (told by the submit's end, not by the cancel it then sees)."""
    cut = _CancelAfterSubmit(monkeypatch)
    body = {**BODY, "max_tokens": 2, "session_id": "k"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        assert (await client.post("/v1/completions", json=body)).status_code == 200
        # 422: a token id outside the vocabulary.
        await cut.send(client, {**body, "prompt": [5, 99999], "kvsaga": {"last_step": True}})
        ctx = _sessions(app).get("anon/k")
        assert ctx is not None and ctx.in_flight is None and ctx.tokens is not None
        assert await _engine_holds(aengine, "anon/k")
        assert (await client.post("/v1/sessions/k/end")).status_code == 200

    _run(make_engine(tiny_dir), scenario)

@pytest.mark.parametrize("when", ["after-the-refusal", "during-the-add"])
def test_first_step_the_engine_refused_ends_nothing_there_when_cut_off(
        tiny_dir: Path, monkeypatch: pytest.MonkeyPatch, when: str):
    """The engine holds a step of the session that the server does not track: the server's
    first step of the id is refused (422), and cut off after or during the refusal."""
    cut = _CancelAfterSubmit(monkeypatch)
    engine = make_engine(tiny_dir)
    real_step, real_add = engine.step, engine.add_request
    adding, go = threading.Event(), threading.Event()

    def frozen_step() -> list:  # nothing is run: the untracked step stays in flight
        engine.last_step_idle = True
        return []

    def add_request(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("request_id") != "untracked":
            adding.set()
            go.wait(60)
        return real_add(*args, **kwargs)

    body = {**BODY, "max_tokens": 2, "session_id": "z"}

    async def scenario(app: Any, aengine: Any, client: httpx.AsyncClient) -> None:
        engine.step = frozen_step
        try:
            await aengine.call(lambda e: e.add_request(
                [5] * 8, SamplingParams(max_tokens=2, ignore_eos=True),
                request_id="untracked", session_id="anon/z"))
            if when == "after-the-refusal":
                await cut.send(client, body)
            else:
                engine.add_request = add_request
                step = asyncio.ensure_future(client.post("/v1/completions", json=body))
                assert await asyncio.to_thread(adding.wait, 30), "the add never ran"
                step.cancel()  # its client left while the engine was adding it
                with contextlib.suppress(asyncio.CancelledError):
                    await step
                go.set()  # the add goes on: refused, as the engine holds a step of the id
            # Before: the cut-off step's end, posted as it was not an APIError, aborted it.
            assert await aengine.call(lambda e: "untracked" in e.requests)
            assert _sessions(app).get("anon/z") is None
            assert aengine.num_in_flight == 0
        finally:
            go.set()
            engine.step, engine.add_request = real_step, real_add
            await aengine.call(lambda e: e.abort("untracked"))

    _run(engine, scenario)
