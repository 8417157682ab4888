"""kvsaga-serve's shutdown (SIGTERM, Ctrl-C) with a bound: `DrainingServer`.

uvicorn's own shutdown waits for every response under way with no limit by default: a long
generation, or a stream whose client keeps reading, held the process past SIGTERM. Here the
requests in flight get `--graceful-shutdown-s` seconds to finish; then the engine stops,
which ends each stream still open with a final error event (`server_shutting_down`, then
`data: [DONE]`) and fails each non-streamed request with a 503, so the client reads why its
answer stopped rather than a cut connection; uvicorn cancels whatever still runs
`FINAL_EVENT_S` seconds later (then the connection is cut).

A second Ctrl-C (uvicorn's `force_exit`) means "stop now": the grace ends at once, the
engine stops as above (its thread joined for STOP_JOIN_S at most), the responses get
FORCE_FINAL_EVENT_S to write their final event or 503, the connections still open are then
closed, and the app's own shutdown runs (uvicorn skips it on `force_exit`; kvsaga's is
bounded once the engine stopped). The app's shutdown waits for an engine thread still in
a step until the grace plus FINAL_EVENT_S from the shutdown's start at most, and stops
waiting on a second Ctrl-C (`EngineWait`, kvsaga/serve/app.py). Before, uvicorn left the
requests to `asyncio.run`'s cancellation at exit: a 500 "Internal Server Error", streams
cut with no final event, CancelledError tracebacks, and the engine's 10 s join in the
lifespan it cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
import time
from typing import Any

import uvicorn

from kvsaga.serve.async_engine import STOP_JOIN_S, AsyncEngine

log = logging.getLogger("kvsaga.serve")

# Seconds between the end of the grace (the engine stopped, the streams told) and uvicorn's
# cancel of the responses still running: room to write their final event.
FINAL_EVENT_S = 2.0
# After a second Ctrl-C, once the engine stopped: how long the responses still running get
# to write their final event, and then to end once their connections were closed, before
# they are cancelled.
FORCE_FINAL_EVENT_S = 1.0
FORCE_CLOSE_S = 0.5
_POLL_S = 0.05  # how often the drain looks for a second Ctrl-C (uvicorn's own: 0.1 s)


def uvicorn_config(app: Any, graceful_shutdown_s: float, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's Config for a server drained after `graceful_shutdown_s`: uvicorn's own
    bound (`timeout_graceful_shutdown`) comes FINAL_EVENT_S after it."""
    return uvicorn.Config(app, timeout_graceful_shutdown=graceful_shutdown_s + FINAL_EVENT_S,
                          **kwargs)


class DrainingServer(uvicorn.Server):
    """A uvicorn Server that, once shutting down, stops `engine` after `grace_s` seconds
    if responses are still running (so their streams end with a final event), before
    uvicorn's own `timeout_graceful_shutdown` cancels them; at once on a second Ctrl-C."""

    def __init__(self, config: uvicorn.Config, engine: AsyncEngine, grace_s: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # The app's own shutdown (kvsaga/serve/app.py) waits for an engine thread still in
        # a step no later than this bound, and not at all after a second Ctrl-C.
        wait = getattr(getattr(self.config.app, "state", None), "engine_wait", None)
        if wait is not None:
            wait.deadline = time.monotonic() + self.grace_s + FINAL_EVENT_S
            wait.cut = lambda: self.force_exit
        drain = asyncio.create_task(self._drain())
        try:
            await super().shutdown(sockets)
            if self.force_exit:  # uvicorn returned without waiting (nor the app's shutdown)
                await drain  # bounded: the engine's join, then FORCE_* seconds
                await self._shutdown_app()
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain

    async def _drain(self) -> None:
        if not await self._forced_within(self.grace_s):
            await self._stop_engine("%d request(s) still running %.3g s after the shutdown "
                                    "began (--graceful-shutdown-s); ending them", self.grace_s)
            await self._forced_within(math.inf)  # until shutdown() ends (it cancels this)
        await self._stop_engine("second Ctrl-C: ending the %d request(s) still running now",
                                always=True)
        await self._end_now()

    async def _forced_within(self, seconds: float) -> bool:
        """Whether a second Ctrl-C came (`force_exit`) within `seconds` (returns then)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not self.force_exit:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, _POLL_S))
        return True

    async def _stop_engine(self, warning: str, *args: Any, always: bool = False) -> None:
        """Stop the engine (joining its thread STOP_JOIN_S at most) if responses are still
        running, or `always`: their streams end with the final event, the others with a
        503. Nothing once it was stopped."""
        if self.engine.stopped:
            return
        running = len(self.server_state.tasks)
        if running:
            log.warning(warning, running, *args)
        if running or always:
            await asyncio.to_thread(self.engine.stop, STOP_JOIN_S)

    async def _end_now(self) -> None:
        """After a second Ctrl-C, the engine stopped: the responses still running get
        FORCE_FINAL_EVENT_S to write their final event; then the connections still open
        are closed (a client that reads nothing, a body still coming: their requests end
        as a disconnect, quietly), and what runs FORCE_CLOSE_S later is cancelled."""
        if await self._tasks_end_within(FORCE_FINAL_EVENT_S):
            return
        for conn in list(self.server_state.connections):
            transport = getattr(conn, "transport", None)
            if transport is not None:
                transport.abort()  # close() would wait for a client that reads nothing
        if await self._tasks_end_within(FORCE_CLOSE_S):
            return
        tasks = list(self.server_state.tasks)
        log.warning("second Ctrl-C: cancelling %d request(s) that did not end", len(tasks))
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks, timeout=FORCE_CLOSE_S)

    async def _tasks_end_within(self, seconds: float) -> bool:
        """Whether every response under way ended within `seconds` (returns then)."""
        deadline = asyncio.get_running_loop().time() + seconds
        while self.server_state.tasks:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, _POLL_S / 2))
        return True

    async def _shutdown_app(self) -> None:
        """The app's shutdown, which uvicorn skips on `force_exit` (`asyncio.run` then
        cancelled the lifespan at exit: a traceback, and the app's cleanup never ran).
        kvsaga's is bounded here: the engine stopped, it joins the thread STOP_JOIN_S at
        most. Nothing where it ran already (the second Ctrl-C came during it)."""
        done = getattr(self.lifespan, "shutdown_event", None)  # uvicorn's LifespanOn
        if done is not None and not done.is_set():
            await self.lifespan.shutdown()
