"""The periodic status line of kvsaga-serve, in the spirit of vLLM's: throughput, batch and
queue, KV usage, prefix-cache hit rate and paused sessions over the last interval.

It reads the same snapshot (refreshed for each line as for a scrape:
`AsyncEngine.fresh_snapshot`) and counters as /metrics, and stays
silent while the server is idle (nothing ran, nothing waits, no token moved), so an idle
server's log does not grow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from kvsaga.serve.async_engine import AsyncEngine
from kvsaga.serve.metrics import TokenCounts

log = logging.getLogger("kvsaga.serve")


class StatsLogger:
    """Formats one line per interval from the change since the previous one.

    Args:
        engine: whose snapshot is read (`run` takes a fresh one for each line).
        counts: the handlers' token counts.
        clock: monotonic seconds (a test hook).
    """

    def __init__(self, engine: AsyncEngine, counts: TokenCounts,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.counts = counts
        self.clock = clock
        self._last = (clock(), 0, 0, 0)  # time, prompt tokens, hits, generated tokens

    def line(self) -> str | None:
        """The status since the last call, or None when the server was and is idle."""
        snap = self.engine.snapshot
        if snap is None:
            return None
        st = snap.cache
        now = self.clock()
        t0, queried0, hits0, gen0 = self._last
        self._last = (now, st.queried_tokens, st.hit_tokens, self.counts.generation_tokens)
        queried = st.queried_tokens - queried0
        generated = self.counts.generation_tokens - gen0
        if not (queried or generated or snap.num_running or snap.num_waiting):
            return None
        dt = max(now - t0, 1e-9)
        hit_rate = f"{100 * (st.hit_tokens - hits0) / queried:.1f}%" if queried else "n/a"
        return (
            f"prompt throughput {queried / dt:.1f} tokens/s, generation throughput "
            f"{generated / dt:.1f} tokens/s, running {snap.num_running} reqs, waiting "
            f"{snap.num_waiting} reqs, KV cache usage {100 * st.usage:.1f}%, prefix cache "
            f"hit rate {hit_rate}, paused sessions {st.num_paused_sessions}"
        )

    async def run(self, interval_s: float) -> None:
        """Log a line every `interval_s` seconds (until cancelled)."""
        while True:
            await asyncio.sleep(interval_s)
            await self.engine.fresh_snapshot()
            text = self.line()
            if text is not None:
                log.info("%s", text)
