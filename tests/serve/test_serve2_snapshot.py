"""Session 50 diff review (findings/s50/diff-serve.md): the /metrics snapshot taken for each
reader made a scrape during a long step (a CPU prefill takes seconds) wait 2 s and then serve
an older snapshot, one that could show a finished request still running (finding 1). Now the
engine thread publishes when it goes idle and at most every `snapshot_every_s` while it
steps, and a reader never waits for a step. Also: the status line's `run` refreshes before
each line (finding 2), and a client that leaves after its add but before the first step
(the 6f456a85 scenario) leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvsaga.serve.stats_log import StatsLogger
from tests.serve.conftest import MODEL, asgi_post_scope, make_engine
from tests.serve.test_metrics import _value
from tests.serve.test_servefix_s50_metrics import _paused
from tests.serve.test_session_race import _Hold, _run, _until

BODY = {"model": MODEL, "prompt": "hold my step", "max_tokens": 4, "ignore_eos": True}


class _HeldSteps:
    """Wraps `engine.step`: while `hold` is set, a step sets `in_step` and waits for
    `release` before it runs (from the `nth` step on, counted from 1)."""

    def __init__(self, engine: Any, nth: int = 1) -> None:
        self.hold, self.in_step, self.release = (threading.Event(), threading.Event(),
                                                 threading.Event())
        self.nth, self.steps = nth, 0
        real = engine.step

        def step() -> Any:
            self.steps += 1
            if self.hold.is_set() and self.steps >= self.nth:
                self.in_step.set()
                assert self.release.wait(60), "never released"
            return real()

        engine.step = step

    async def entered(self) -> None:
        assert await asyncio.to_thread(self.in_step.wait, 30), "no step was held"


async def _scrape_now(aengine: Any) -> Any:
    """A reader that would wait 600 s for a refresh: it must come back while the step is
    held (the 30 s deadline is only against hanging)."""
    return await asyncio.wait_for(aengine.fresh_snapshot(600), 30)


def test_a_scrape_never_waits_for_a_step_nor_shows_a_finished_request(tiny_dir: Path):
    engine = make_engine(tiny_dir)
    held = _HeldSteps(engine)

    async def scenario(app, aengine, client) -> None:
        aengine.snapshot_every_s = float("inf")  # only the idle and the readers' ones
        loaded = aengine.snapshot
        # Request A, its first step held: a scrape comes back at once with what there was.
        held.hold.set()
        a = asyncio.create_task(client.post("/v1/completions", json=BODY))
        await held.entered()
        got = await _scrape_now(aengine)
        assert not held.release.is_set() and got is loaded
        held.hold.clear()
        held.release.set()
        assert (await a).status_code == 200
        # A finished; the thread publishes as it goes idle, with no reader: A is gone.
        await _until(lambda: aengine.snapshot.num_running == 0
                     and aengine.snapshot.cache.num_used_blocks == 0, "published on idle")
        idle = aengine.snapshot
        now = await aengine.call(lambda e: e.stats())
        assert (idle.num_running, idle.num_waiting, idle.cache) == (
            now.num_running, now.num_waiting, now.cache)
        # Request B, its first step held: a scrape (and /metrics) comes back at once with
        # the idle figures, not A's from mid-run (before: A's, after a 2 s wait).
        held.in_step.clear()
        held.release.clear()
        held.hold.set()
        b = asyncio.create_task(client.post("/v1/completions", json=BODY))
        await held.entered()
        got = await _scrape_now(aengine)
        assert got is idle and got.num_running == 0 and got.cache.num_used_blocks == 0
        text = (await asyncio.wait_for(client.get("/metrics"), 30)).text
        assert not held.release.is_set()
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert _value(fams, "kvsaga:num_requests_running") == 0
        assert _value(fams, "kvsaga:kv_blocks_used") == 0
        held.hold.clear()
        held.release.set()
        assert (await b).status_code == 200

    _run(engine, scenario)


def test_while_it_steps_the_thread_publishes_between_steps(tiny_dir: Path):
    """With `snapshot_every_s` 0 it publishes after every step: a scrape during the 3rd
    step of a request (held) reads it running, at once."""
    engine = make_engine(tiny_dir)
    held = _HeldSteps(engine, nth=3)

    async def scenario(app, aengine, client) -> None:
        aengine.snapshot_every_s = 0.0
        held.hold.set()
        task = asyncio.create_task(client.post("/v1/completions",
                                               json={**BODY, "max_tokens": 8}))
        await held.entered()
        got = await _scrape_now(aengine)
        assert not held.release.is_set()
        assert got.num_running == 1 and got.cache.num_used_blocks > 0
        held.hold.clear()
        held.release.set()
        assert (await task).status_code == 200

    _run(engine, scenario)


def test_status_line_run_refreshes_the_snapshot(tiny_dir: Path, caplog: pytest.LogCaptureFixture):
    """Sessions paused by a command, with no step after it: `run` logs them (without its
    refresh it read the idle snapshot of before, and said nothing)."""
    caplog.set_level(logging.INFO, logger="kvsaga.serve")

    async def scenario(app, aengine, client) -> None:
        logger = StatsLogger(aengine, app.state.server.metrics.counts)
        assert logger.line() is None  # idle since the load
        await aengine.call(lambda e: _paused(e, 3))
        task = asyncio.create_task(logger.run(0.01))
        try:
            await _until(lambda: any("paused sessions 3" in r.getMessage()
                                     for r in caplog.records), "logged the paused sessions",
                         timeout=10)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    _run(make_engine(tiny_dir), scenario)


def test_a_client_gone_after_its_add_before_the_first_step(tiny_dir: Path):
    """The disconnect's abort runs in the same command drain as the add, before any step:
    no block is held, the session's next step and its end answer 200, integrity holds."""
    body = {"model": MODEL, "prompt": "long answer ", "max_tokens": 50, "ignore_eos": True,
            "session_id": "impatient"}
    data = json.dumps(body).encode()

    async def scenario(app, aengine, client) -> None:
        hold = _Hold(aengine)
        await hold.wait()
        gate = threading.Event()
        disconnected = asyncio.Event()
        pending = [{"type": "http.request", "body": data, "more_body": False}]

        async def receive() -> dict:
            if pending:
                return pending.pop()
            await disconnected.wait()
            return {"type": "http.disconnect"}

        sent: list[dict] = []

        async def send(m: dict) -> None:
            sent.append(m)

        call = asyncio.create_task(app(asgi_post_scope("/v1/completions", data), receive,
                                       send))
        try:
            await _until(lambda: aengine.num_in_flight == 1, "queued the add")
            aengine.post(lambda e: gate.wait(30))  # after the add, before any step
            hold.release.set()
            await _until(lambda: aengine._commands.qsize() == 0, "ran the add")
            # The handler reads its stream (its add answered), the engine thread held.
            await _until(lambda: any(s._waiter is not None
                                     for s in list(aengine._streams.values())),
                         "the handler waits for its first output")
            disconnected.set()  # client gone: its abort is queued behind the gate
            await _until(lambda: aengine._commands.qsize() == 1, "queued the abort")
        finally:
            hold.release.set()
            gate.set()
        await asyncio.wait_for(call, 30)
        st = await aengine.call(lambda e: (e.has_unfinished(), e.manager.stats(),
                                           sorted(e.manager.sessions)))
        assert st[0] is False and st[1].num_used_blocks == 0 and st[2] == []
        e = await aengine.call(lambda e: e.scheduler)
        assert not e.waiting and not e.running
        r = await client.post("/v1/completions", json={**body, "max_tokens": 3})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 3
        r = await client.post("/v1/sessions/impatient/end")
        assert r.status_code == 200, r.text
        await aengine.call(lambda e: e.manager.check_integrity())

    _run(make_engine(tiny_dir), scenario)
