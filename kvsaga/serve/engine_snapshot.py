"""How `AsyncEngine.snapshot` is kept: the `engine.stats()` that /metrics and the status line
read, taken on the engine thread (the only one that may touch the engine).

`stats()` counts the manager's sessions, paused ones included (0.4 ms at 1,000 paused, 2.8 ms
at 5,000), so the thread never takes it per step (review s50 serve 3), but
- when it goes idle (after the last step of a busy period, before it waits),
- after a step once `snapshot_every_s` (SNAPSHOT_EVERY_S, 1 s) has passed since the last
  one, while it steps (a clock read a step),
- for a reader (`fresh_snapshot`) that finds it between steps (idle, waiting for admission,
  running commands): that reader waits for it, at most SNAPSHOT_WAIT_S; a reader that finds
  it in a step reads the last one at once and never waits for the step (a prefill step can
  take seconds on CPU; review s50 diff-serve 1), and the thread takes a new one for it
  after the step, before the next.
So a scrape of an idle server is exact when read, and one during a step sees figures at most
about `snapshot_every_s` plus that step old; a request that had finished when the thread went
idle is never shown running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kvsaga.engine.engine import EngineStats, LLMEngine

log = logging.getLogger("kvsaga.serve")

# The engine thread publishes `AsyncEngine.snapshot` (`engine.stats()`, which counts every
# session: never per step) when it goes idle, at most every SNAPSHOT_EVERY_S while it steps,
# and for a reader that finds it between steps (`AsyncEngine.fresh_snapshot`).
SNAPSHOT_EVERY_S = 1.0
# How long a reader waits for the engine thread to answer between steps (it takes
# milliseconds but behind a long command; a reader never waits for a step) before it reads
# the last snapshot; a refresh already waited out is not waited for again.
SNAPSHOT_WAIT_S = 0.5


class SnapshotKeeper:
    """`AsyncEngine`'s snapshot part (a mixin: it uses the engine's `_wake` and `stopped`)."""

    _wake: threading.Event
    stopped: bool

    def _init_snapshot(self) -> None:
        # None until the engine has loaded; `engine.stats()` copied on the engine thread.
        self.snapshot: EngineStats | None = None
        self.snapshot_every_s = SNAPSHOT_EVERY_S
        self._published_at = 0.0  # perf_counter of the last publish (engine thread)
        self._dirty = False  # a step ran since the last publish (engine thread)
        # True from just before the engine thread looks for a reader's refresh until its
        # step ends: a reader that sees it False is answered before the next step.
        self._stepping = False
        # A reader's refresh, and until when readers wait for it (monotonic); the engine
        # thread answers it between steps (`_answer_refresh`).
        self._refresh: tuple[concurrent.futures.Future[None], float] | None = None

    def _publish(self, engine: LLMEngine) -> None:
        self._published_at = time.perf_counter()
        self._dirty = False
        self.snapshot = engine.stats()

    def _publish_logged(self, engine: LLMEngine) -> None:
        """`_publish` on the engine thread's own account: a failure of `stats()` is logged
        (at most once per `snapshot_every_s` while it steps) and leaves the last one."""
        try:
            self._publish(engine)
        except Exception:
            log.exception("taking the engine's stats for /metrics failed")

    def _answer_refresh(self, engine: LLMEngine, force: bool = False) -> None:
        """On the engine thread between steps: publish for the reader's refresh (its
        failure goes to the readers, who log it), or anyway where `force`."""
        asked = self._refresh
        if asked is None:
            if force:
                self._publish_logged(engine)
            return
        self._refresh = None
        fut = asked[0]
        try:
            self._publish(engine)
        except Exception as e:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                fut.set_exception(e)
        else:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                fut.set_result(None)

    def _settle_refresh(self) -> None:
        """The engine thread will answer no refresh any more: its readers read the last."""
        asked = self._refresh
        if asked is not None:
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                asked[0].set_result(None)

    async def fresh_snapshot(self, wait_s: float = SNAPSHOT_WAIT_S) -> EngineStats | None:
        """`snapshot`, taken anew for this reader where the engine thread is between steps
        (idle, waiting for admission, running commands); at once the last one where it is
        in a step (or about to start one), never waiting for the step: that one was taken
        when the thread went idle, or within about `snapshot_every_s` plus that step ago,
        and the thread takes a new one for the reader after the step. Readers at the same
        time share one refresh and wait at most `wait_s` from the first one's ask, in all
        (a long command). The last one too where the engine has not loaded or has
        stopped."""
        if self.snapshot is None or self.stopped:
            return self.snapshot
        asked = self._refresh
        if asked is None or asked[0].done():
            fut: concurrent.futures.Future[None] = concurrent.futures.Future()
            fut.add_done_callback(_log_refresh_failure)
            asked = self._refresh = (fut, time.monotonic() + wait_s)
            self._wake.set()
        # The engine thread sets `_stepping` before it looks for a refresh: one not in a
        # step when this reads the flag sees the refresh before its next step.
        if self._stepping or self.stopped:
            return self.snapshot
        remaining = asked[1] - time.monotonic()
        if remaining > 0:
            waiter = asyncio.wrap_future(asked[0])
            waiter.add_done_callback(_retrieved)
            # A failure of `stats()` is logged (`_log_refresh_failure`); the last one is read.
            with contextlib.suppress(Exception):
                # The shield keeps a reader's cancel or timeout from cancelling the refresh
                # that the other readers wait on.
                await asyncio.wait_for(asyncio.shield(waiter), remaining)
        return self.snapshot


def _log_refresh_failure(fut: concurrent.futures.Future) -> None:
    e = None if fut.cancelled() else fut.exception()
    if e is not None:
        log.error("taking the engine's stats for /metrics failed", exc_info=e)


def _retrieved(fut: asyncio.Future) -> None:
    """Mark a shielded future's exception read (its concurrent future's done callback
    reports it)."""
    if not fut.cancelled():
        fut.exception()
