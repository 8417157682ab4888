"""kvsaga-serve's shutdown (SIGTERM, Ctrl-C) with a bound: `DrainingServer`.

uvicorn's own shutdown waits for every response under way with no limit by default: a long
generation, or a stream whose client keeps reading, held the process past SIGTERM. Here the
requests in flight get `--graceful-shutdown-s` seconds to finish; then the engine stops,
which ends each stream still open with a final error event (`server_shutting_down`, then
`data: [DONE]`) and fails each non-streamed request with a 503, so the client reads why its
answer stopped rather than a cut connection; uvicorn cancels whatever still runs
`FINAL_EVENT_S` seconds later (then the connection is cut).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import Any

import uvicorn

from kvsaga.serve.async_engine import STOP_JOIN_S, AsyncEngine

log = logging.getLogger("kvsaga.serve")

# Seconds between the end of the grace (the engine stopped, the streams told) and uvicorn's
# cancel of the responses still running: room to write their final event.
FINAL_EVENT_S = 2.0


def uvicorn_config(app: Any, graceful_shutdown_s: float, **kwargs: Any) -> uvicorn.Config:
    """uvicorn's Config for a server drained after `graceful_shutdown_s`: uvicorn's own
    bound (`timeout_graceful_shutdown`) comes FINAL_EVENT_S after it."""
    return uvicorn.Config(app, timeout_graceful_shutdown=graceful_shutdown_s + FINAL_EVENT_S,
                          **kwargs)


class DrainingServer(uvicorn.Server):
    """A uvicorn Server that, once shutting down, stops `engine` after `grace_s` seconds
    if responses are still running (so their streams end with a final event), before
    uvicorn's own `timeout_graceful_shutdown` cancels them."""

    def __init__(self, config: uvicorn.Config, engine: AsyncEngine, grace_s: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        drain = asyncio.create_task(self._drain())
        try:
            await super().shutdown(sockets)
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain

    async def _drain(self) -> None:
        await asyncio.sleep(self.grace_s)
        running = len(self.server_state.tasks)
        if running and not self.engine.stopped:
            log.warning("%d request(s) still running %.3g s after the shutdown began "
                        "(--graceful-shutdown-s); ending them", running, self.grace_s)
            await asyncio.to_thread(self.engine.stop, STOP_JOIN_S)
