"""A request's outputs on their way from the engine thread to the event loop: `OutputStream`,
which holds at most one output its reader has not taken (split from
`kvsaga.serve.async_engine`, which keeps it under 600 lines)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading

from kvsaga.engine.request import RequestOutput


class OutputStream:
    """One request's outputs, crossing from the engine thread to the event loop.

    It ends once, with a finished output or an exception; what comes after is dropped:
    `stop()` ends the streams of an engine thread stuck in a step, which may still deliver
    to them when the step returns.

    It holds at most one output its reader has not taken: the outputs put since the reader
    last took one are read as one, the newest, its `delta` and `new_token_ids` those of all
    of them joined (its cumulative fields, text, token ids and logprobs, cover them all
    already). A reader that stops reading (a client that reads its stream slowly or not at
    all holds up `Run.sse`) queued one output per step, each with the whole text so far:
    memory quadratic in the answer's length (review s50 serve 1). Each put costs O(1):
    the parts are joined once, when the reader takes them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._held: RequestOutput | None = None  # the newest output not taken
        # With several outputs not taken: each one's delta and new token ids, oldest first.
        self._parts: tuple[list[str], list[int]] | None = None
        self._error: BaseException | None = None  # not taken; comes after `_held`
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None  # the reader's (loop thread only)

    def put(self, item: RequestOutput | BaseException) -> None:
        """From any thread: add an output or the exception that ends the stream."""
        with self._lock:
            if self._ended:
                return
            self._ended = isinstance(item, BaseException) or item.finished
            wake = self._held is None and self._error is None
            if isinstance(item, BaseException):
                self._error = item
            elif self._held is None:
                self._held = item
            else:
                parts = self._parts
                if parts is None:
                    held = self._held
                    parts = self._parts = ([held.delta], list(held.new_token_ids))
                parts[0].append(item.delta)
                parts[1].extend(item.new_token_ids)
                self._held = item
        if wake:  # else its reader was woken for what it holds already
            # RuntimeError: the loop is closed, so nobody is listening any more.
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def num_pending(self) -> int:
        """Items not yet taken: at most an output and an exception."""
        with self._lock:
            return (self._held is not None) + (self._error is not None)

    def _take(self) -> RequestOutput | BaseException | None:
        with self._lock:
            out, parts = self._held, self._parts
            if out is None:
                error, self._error = self._error, None
                return error
            self._held = self._parts = None
        if parts is not None:
            out = dataclasses.replace(out, delta="".join(parts[0]), new_token_ids=parts[1])
        return out

    async def get(self) -> RequestOutput | BaseException:
        """The next item (on the loop thread; one reader): the outputs put since the last
        call as one, or the exception that ended the stream."""
        while True:
            item = self._take()
            if item is not None:
                return item
            # Set before any await: a wake-up scheduled by `put` runs after this.
            self._waiter = self.loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
