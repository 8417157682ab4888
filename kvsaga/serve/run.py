"""The run of one queued request: its outputs read from the engine thread, collected into
one JSON response or streamed as SSE, its latencies and its end counted, its session's
context recorded (or its session freed when it is cut off).

Split from `kvsaga.serve.serving` (the modules stay under 600 lines): serving.py takes a
request from its validated body to a queued engine request, with the session reserved;
this module takes the queued request from there to the client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import StreamingResponse

from kvsaga.engine.request import RequestOutput
from kvsaga.serve.async_engine import EngineStopped, RequestAborted, RequestHandle, SessionEnded
from kvsaga.serve.errors import APIError, stopped_error
from kvsaga.serve.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletion,
    ChatCompletionChunk,
    ChatDelta,
    Completion,
    CompletionChoice,
    TextOffsets,
    chat_logprobs,
    completion_logprobs,
    make_usage,
    now_s,
)
from kvsaga.serve.sessions import SessionContext, names_engine_session

if TYPE_CHECKING:
    from kvsaga.engine.sampling import SamplingParams
    from kvsaga.serve.serving import Serving

log = logging.getLogger("kvsaga.serve")


class Run:
    """One submitted request: observes latencies, records the session, formats output."""

    def __init__(self, serving: Serving, handle: RequestHandle, ids: list[int],
                 params: SamplingParams, text: str | None, ctx: SessionContext | None,
                 engine_sid: str | None, last_step: bool, arrival: float, chat: bool,
                 rid: str, sid: str | None) -> None:
        self.s = serving
        self.handle = handle
        self.ids = ids
        self.params = params
        self.text = text
        self.ctx = ctx
        self.engine_sid = engine_sid
        self.last_step = last_step
        self.arrival = arrival
        self.chat = chat
        self.rid = rid
        self.sid = sid
        self.created = now_s()
        self.last_token_t: float | None = None
        self.final: RequestOutput | None = None
        self.echo = ""  # completions with `echo`: the prompt text, sent before the answer
        self._lp_sent = 0  # generated tokens whose logprobs have been sent
        self._lp_offsets: TextOffsets | None = None  # completions' `text_offset`, lazily
        self._counted = False  # its end is in the metrics (`_count`)

    async def _outputs(self, request: Request) -> AsyncIterator[RequestOutput]:
        watcher = asyncio.create_task(abort_on_disconnect(request, self.close))
        m = self.s.metrics
        cut = "abort"  # how it ended without a final output: aborted, or left (closed)
        try:
            async for out in self.handle.outputs():
                t = time.monotonic()
                # One observation per token: an output holds several where the reader fell
                # behind (`RequestHandle.outputs`); they share the gap since the last one.
                n = len(out.new_token_ids)
                if self.last_token_t is None:
                    m.ttft.observe(t - self.arrival)
                    m.itl.observe(0.0, max(n - 1, 0))  # (came with the first)
                else:
                    m.itl.observe((t - self.last_token_t) / max(n, 1), n)
                self.last_token_t = t
                if out.finished:
                    self.final = out
                    m.e2e.observe(t - self.arrival)
                    self._record(out)
                yield out
        except RequestAborted:
            raise
        except Exception:
            cut = "error"  # the engine failed or stopped
            raise
        finally:
            watcher.cancel()
            self.handle.abort()  # no-op when finished
            self._release()
            self._count(self.final.finish_reason if self.final is not None else cut)

    def close(self) -> None:
        """Abort if unfinished and free the session; idempotent. A request closed before it
        finished counts as aborted."""
        self.handle.abort()
        self._release()
        self._count(self.final.finish_reason if self.final is not None else "abort")

    def _count(self, reason: str) -> None:
        """Count the request's end in the metrics, once (`_outputs` and `close` both end it:
        the first to see the end says how)."""
        if not self._counted:
            self._counted = True
            self.s.metrics.request_ended(reason)

    def _record(self, out: RequestOutput) -> None:
        """Remember the finished step as its session's context, unless the session is no
        longer this step's: a step whose client left gave it back at once (`close`), and a
        finish that still came must not overwrite the context of a step sent since."""
        ctx = self.ctx
        if ctx is not None and not self.last_step and ctx.in_flight == self.rid:
            self.s.sessions.record(ctx, self.ids, self.text, self.params, out, self.chat)

    def _release(self) -> None:
        """Free the session (once: `_outputs` and `close` both call it). A last step ends
        its own session only: once that session was ended (by its client, or by this step's
        first call here) a new step of the same id may have opened a new one meanwhile."""
        ctx = self.ctx
        if ctx is None:
            return
        if ctx.in_flight == self.rid:
            ctx.in_flight = None
        if self.last_step and self.engine_sid is not None \
                and self.s.sessions.get(self.engine_sid) is ctx:
            self.s.sessions.drop(self.engine_sid)

    def _aborted(self, e: RequestAborted) -> APIError:
        """The 400 `aborted` of a request cut off: naming its session when the end of
        the session aborted it, as `Serving._check_not_ended` does for a step not yet
        queued, so the client tells an end apart from other aborts."""
        if isinstance(e, SessionEnded) and self.sid is not None:
            return APIError(400, f"the request was aborted: session {self.sid!r} was ended",
                            param="session_id", code="aborted")
        return APIError(400, "the request was aborted", code="aborted")

    def _usage(self, out: RequestOutput) -> Any:
        return make_usage(out.num_prompt_tokens, len(out.token_ids), out.num_cached_tokens)

    async def collect(self, request: Request) -> dict:
        try:
            async for _ in self._outputs(request):
                pass
        except RequestAborted as e:
            raise self._aborted(e) from None
        except EngineStopped as e:  # shut down (or its thread failed) while this ran
            raise stopped_error(e) from None
        except Exception as e:
            log.exception("request %s failed", self.rid)
            raise _engine_failure(e) from None
        out = self.final
        assert out is not None
        lp = self._new_logprobs(out)
        if self.chat:
            return ChatCompletion(
                id=self.rid, created=self.created, model=self.s.model_name,
                choices=[ChatChoice(message=AssistantMessage(content=out.text),
                                    finish_reason=out.finish_reason,
                                    stop_reason=out.stop_reason, logprobs=lp)],
                usage=self._usage(out),
            ).model_dump(exclude_none=False)
        return Completion(
            id=self.rid, created=self.created, model=self.s.model_name,
            choices=[CompletionChoice(text=self.echo + out.text, finish_reason=out.finish_reason,
                                      stop_reason=out.stop_reason, logprobs=lp)],
            usage=self._usage(out),
        ).model_dump()

    def _new_logprobs(self, out: RequestOutput) -> Any:
        """Logprobs of the tokens generated since the last call (None when not asked for)."""
        if out.logprobs is None:
            return None
        start, end = self._lp_sent, len(out.token_ids)
        self._lp_sent = end
        ids, lps = out.token_ids[start:end], out.logprobs[start:end]
        top = out.top_logprobs[start:end] if out.top_logprobs else None
        tok = self.s.sessions.tokenizer
        if self.chat:
            return chat_logprobs(tok, ids, lps, top)
        if self._lp_offsets is None:
            self._lp_offsets = TextOffsets(tok, self.ids, len(self.echo))
        return completion_logprobs(tok, ids, lps, top, self._lp_offsets)

    def _chunk(self, delta: str | None, finish: str | None, role: bool = False,
               logprobs: Any = None, stop_reason: int | str | None = None) -> str:
        if self.chat:
            obj: Any = ChatCompletionChunk(
                id=self.rid, created=self.created, model=self.s.model_name,
                choices=[ChatChunkChoice(
                    delta=ChatDelta(role="assistant" if role else None, content=delta),
                    finish_reason=finish, stop_reason=stop_reason, logprobs=logprobs)],
            )
        else:
            obj = Completion(
                id=self.rid, created=self.created, model=self.s.model_name,
                choices=[CompletionChoice(text=delta or "", finish_reason=finish,
                                          stop_reason=stop_reason, logprobs=logprobs)],
            )
        data = obj.model_dump()
        if self.chat:  # OpenAI leaves unset delta fields out
            choice = data["choices"][0]
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            if finish is None:  # (vLLM's field, which its chat chunks carry at the end only)
                del choice["stop_reason"]
        return _sse(data)

    async def sse(self, request: Request, include_usage: bool) -> AsyncIterator[str]:
        """The SSE body: chunks, then a usage chunk if asked, then `data: [DONE]`."""
        try:
            if self.chat:
                yield self._chunk("", None, role=True)
            elif self.echo:
                yield self._chunk(self.echo, None)
            async for out in self._outputs(request):
                if out.delta or out.finished:
                    yield self._chunk(out.delta if out.delta or not self.chat else None,
                                      out.finish_reason, logprobs=self._new_logprobs(out),
                                      stop_reason=out.stop_reason)
            if include_usage and self.final is not None:
                cls = ChatCompletionChunk if self.chat else Completion
                yield _sse(cls(id=self.rid, created=self.created, model=self.s.model_name,
                               choices=[], usage=self._usage(self.final)).model_dump())
        except RequestAborted as e:
            # Its session was ended (POST /v1/sessions/{id}/end) or the client left: say so,
            # so a cut-off answer never reads as complete (a gone client reads nothing).
            yield _sse(self._aborted(e).body())
        except EngineStopped as e:  # shut down (or its thread failed) while this streamed
            yield _sse(stopped_error(e).body())
        except Exception as e:
            log.exception("request %s failed mid-stream", self.rid)
            yield _sse(_engine_failure(e).body())
        yield "data: [DONE]\n\n"


class ClosingStream(StreamingResponse):
    """A StreamingResponse that runs `on_close` however it ends, even when the client left
    before the body was ever iterated (then the body generator's own cleanup never runs)."""

    def __init__(self, content: AsyncIterator[str], on_close: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


def _engine_failure(e: Exception) -> APIError:
    """The 500 for a failure of the engine. Its text is left out when it may name a session
    by its engine id (the tenant's salt digest and session id): a failed step fails every
    request in flight, so one tenant would read another's session; the log has it all."""
    text = str(e)
    if not text:
        return APIError(500, f"the engine failed: {type(e).__name__}")
    if names_engine_session(text):
        return APIError(500, f"the engine failed: {type(e).__name__} (the server's log has "
                        "the details)")
    return APIError(500, f"the engine failed: {type(e).__name__}: {text}")


def _sse(obj: dict) -> str:
    return f"data: {json.dumps(obj, separators=(',', ':'))}\n\n"


async def abort_on_disconnect(request: Request, close: Callable[[], object]) -> None:
    """Wait for the client to go away, then `close` its run: abort its request (releasing
    its blocks) and free its session at once, not when the step under way ends. The abort
    is queued before any later step's add, so the session's next step comes after it.
    (Before the request is queued, `close` cancels its submit: `Serving._queue`.)"""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            close()
            return
