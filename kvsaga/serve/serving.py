"""Serving: one chat or text completion from validated request to response or SSE stream.

The pipeline: resolve tenant and session -> tokenize (reusing the session's exact ids) ->
check limits -> submit to the engine thread -> collect or stream the outputs -> remember the
session's new context. A client that goes away at any point has its request aborted.

This module runs the pipeline up to the queued request (the session reserved until then);
`kvsaga.serve.run` collects or streams what the engine returns (split off to keep each
module under 600 lines).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest
from kvsaga.serve.async_engine import AsyncEngine, EngineStopped, RequestHandle
from kvsaga.serve.errors import APIError, stopped_error
from kvsaga.serve.metrics import ServerMetrics
from kvsaga.serve.protocol import ChatCompletionRequest, CompletionRequest, _Common, new_id
from kvsaga.serve.run import ClosingStream, Run, abort_on_disconnect
from kvsaga.serve.sessions import SessionContext, SessionRegistry, resolve_session_id, tenant_salt
from kvsaga.serve.settings import ServerSettings
from kvsaga.session import MAX_NAME_CHARS

log = logging.getLogger("kvsaga.serve")
MAX_SESSION_ID = MAX_NAME_CHARS  # characters, as the body's session_id field allows
# Prompts at least this long are tokenized on a worker thread through `tokenizers`'
# `encode_batch`, which releases the GIL (its `encode` does not), so the event loop goes on
# writing other requests' streams meanwhile: `python bench/tokenize_off_loop.py` prints the
# encode times and the longest pause of a 1 ms loop ticker each way.
TOKENIZE_OFF_LOOP_CHARS = 16_000
# /v1/completions' max_tokens when the request sets none (vLLM's and OpenAI's legacy default).
_COMPLETIONS_MAX_TOKENS = 16

# What `Serving._submit` hands on: the queued request, its prompt ids, its parameters.
_Submitted = tuple[RequestHandle, list[int], SamplingParams]
_WARNED_TOOL_CHOICES: set[str] = set()  # tool_choice values already logged as not enforced


@dataclass
class Prompt:
    """A prompt ready to submit: its ids, and the text they came from (None for ids)."""

    text: str | None
    ids: list[int] | None = None
    add_special_tokens: bool = True
    param: str = "prompt"


class Serving:
    """Runs completions against one AsyncEngine.

    Args:
        engine: the engine thread's front.
        sessions: the server's sessions.
        metrics: histograms to observe.
        settings: limits.
        max_model_len: the engine's context limit.
        model_name: echoed in responses.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        sessions: SessionRegistry,
        metrics: ServerMetrics,
        settings: ServerSettings,
        max_model_len: int,
        model_name: str,
    ) -> None:
        self.engine = engine
        self.sessions = sessions
        self.metrics = metrics
        self.settings = settings
        self.max_model_len = max_model_len
        self.model_name = model_name
        assert engine.engine is not None  # Serving is built once the engine has loaded
        self.max_in_flight = engine.engine.max_num_seqs + settings.max_queue
        # The model's generation_config.json sampling values (max_tokens is set per request).
        defaults = engine.engine.config.generation.as_dict()
        # The model's max_new_tokens: chat's default when the request sets none, as vLLM's.
        self.generation_max_tokens: int | None = defaults.pop("max_tokens", None)
        self.generation_defaults = defaults

    # -- preparing ------------------------------------------------------------------------
    def _params(self, body: _Common, num_prompt: int, requested: int | None) -> SamplingParams:
        s = self.settings
        # The field the client used (chat takes either; max_completion_tokens wins). The
        # request's class decides, never attribute presence: the models keep unknown fields
        # as attributes (extra="allow"), so a completions body with a stray
        # `max_completion_tokens` would otherwise name a field the server ignores.
        chat = isinstance(body, ChatCompletionRequest)
        asked = ("max_completion_tokens"
                 if chat and body.max_completion_tokens is not None else "max_tokens")
        room = self.max_model_len - num_prompt
        if room < 1:
            raise APIError(
                400,
                f"the prompt has {num_prompt} tokens; this model's context is "
                f"{self.max_model_len} tokens, which leaves no room to generate",
                param="messages" if chat else "prompt",
                code="context_length_exceeded",
            )
        cap = s.max_tokens_limit
        if requested is not None:
            if cap is not None and requested > cap:
                raise APIError(400, f"{asked}={requested} exceeds this server's limit of "
                               f"{cap}", param=asked)
            if requested > self.max_model_len:
                raise APIError(
                    400,
                    f"{asked}={requested} exceeds this model's context of "
                    f"{self.max_model_len} tokens",
                    param=asked,
                    code="context_length_exceeded",
                )
            # As vLLM: more than the room left is cut to fit; the answer then ends at the
            # context with finish_reason "length".
            max_tokens = min(requested, room)
        else:
            # vLLM's defaults: 16 for completions (OpenAI's legacy default); for chat the
            # model's max_new_tokens, else the room left. --default-max-tokens overrides both.
            default = s.default_max_tokens
            if default is None:
                default = (self.generation_max_tokens if chat else _COMPLETIONS_MAX_TOKENS)
            max_tokens = min(default or room, room, cap or room)
        try:
            return SamplingParams.with_defaults(
                self.generation_defaults,
                max_tokens=max_tokens,
                temperature=body.temperature,
                top_p=body.top_p,
                top_k=body.top_k,
                seed=body.seed,
                stop=body.stop,
                stop_token_ids=body.stop_token_ids,
                ignore_eos=body.ignore_eos,
                include_stop_str_in_output=body.include_stop_str_in_output,
                logprobs=body.num_top_logprobs(),
            )
        except InvalidRequest as e:  # named as the request field (max_tokens: as sent)
            field = getattr(e, "field", None)
            raise APIError(400, str(e).removeprefix("SamplingParams."),
                           param=asked if field == "max_tokens" else field) from None

    @staticmethod
    def _check_fields(body: _Common) -> None:
        """400 for fields set to values the engine cannot honour, before anything happens."""
        if body.n != 1:
            raise APIError(400, f"n={body.n}: only n=1 is supported", param="n")
        # By class, not attribute (see `_params`): on chat `echo` is an unknown field,
        # accepted and ignored, and `unenforced_tool_choice` a client's value, not a method.
        echo = isinstance(body, CompletionRequest) and body.echo
        if echo and body.num_top_logprobs() is not None:
            raise APIError(400, "echo with logprobs is not supported (prompt logprobs are not "
                           "computed)", param="echo")
        refused = body.refused_field()
        if refused is not None:
            raise APIError(400, refused[1], param=refused[0])
        choice = (body.unenforced_tool_choice()
                  if isinstance(body, ChatCompletionRequest) else None)
        if choice is not None and choice not in _WARNED_TOOL_CHOICES \
                and len(_WARNED_TOOL_CHOICES) < 32:  # bounded: clients choose the values
            _WARNED_TOOL_CHOICES.add(choice)
            log.warning("tool_choice %s is accepted but not enforced: the model may answer "
                        "without calling a tool (tool calls are not parsed from the answer)",
                        choice)

    def _check_capacity(self) -> None:
        if self.engine.num_in_flight >= self.max_in_flight:
            raise APIError(
                429,
                f"the server's queue is full ({self.engine.num_in_flight} requests in "
                "flight); retry later",
                code="queue_full",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )

    # -- running --------------------------------------------------------------------------
    async def complete(
        self, request: Request, body: _Common, prompt: Prompt, chat: bool, requested: int | None
    ) -> JSONResponse | StreamingResponse:
        """Run one completion; returns the JSON response or the SSE stream.

        Raises:
            APIError: a limit or a field was violated; nothing is left queued.
        """
        arrival = time.monotonic()
        self._check_fields(body)
        api_key: str | None = request.scope.get("state", {}).get("api_key")
        salt = tenant_salt(api_key, body.cache_salt)
        header_sid = request.headers.get("x-session-id")
        if body.session_id is None and header_sid is not None \
                and len(header_sid) > MAX_SESSION_ID:  # (the body's id wins over the header)
            raise APIError(400, f"X-Session-ID header of {len(header_sid)} characters; at most "
                           f"{MAX_SESSION_ID}", param="X-Session-ID")
        sid = resolve_session_id(body.session_id, header_sid)
        if sid is None and body.kvsaga is not None \
                and body.kvsaga.model_dump(exclude_defaults=True):  # `{}` carries nothing
            raise APIError(400, "kvsaga hints describe a session's pause: send them with "
                           "session_id (or the X-Session-ID header)", param="kvsaga")
        engine_sid = self.sessions.engine_id(salt, sid) if sid else None
        ctx = known = self.sessions.get(engine_sid) if engine_sid else None
        if ctx is not None and ctx.in_flight is not None:
            raise APIError(409, f"session {sid!r} already has a request in flight",
                           param="session_id", code="session_busy")
        rid = new_id("chatcmpl" if chat else "cmpl")
        if engine_sid is not None:
            # Reserve the session now, in the same turn of the event loop as the check above:
            # a second step of the session arriving while this one awaits the engine gets the
            # 409 above, not the engine's refusal. Until `Run` owns the reservation, every
            # way out below gives it back (`_unreserve`).
            ctx = self.sessions.open(engine_sid)
            ctx.in_flight = rid
        hint = body.kvsaga
        last_step = bool(hint and hint.last_step)
        added: list[bool] = []  # [True] once the engine took it (set on the engine thread)
        submit = self._submit(body, prompt, ctx, known is not None, engine_sid, salt, sid, rid,
                              requested, added)
        handle, ids, params = await self._queue(request, submit, added, ctx, known,
                                                engine_sid, rid, last_step)
        run = Run(self, handle, ids, params, prompt.text, ctx, engine_sid, last_step, arrival,
                  chat, rid, sid)
        if isinstance(body, CompletionRequest) and body.echo:
            run.echo = prompt.text if prompt.text is not None else (
                self.sessions.tokenizer.decode(ids, skip_special_tokens=False))
        headers = {"X-Session-ID": sid} if sid else None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return ClosingStream(run.sse(request, include_usage), on_close=run.close,
                                 headers=headers, media_type="text/event-stream")
        return JSONResponse(await run.collect(request), headers=headers)

    async def _queue(self, request: Request,
                     submitting: Coroutine[Any, Any, _Submitted],
                     added: list[bool], ctx: SessionContext | None,
                     known: SessionContext | None, engine_sid: str | None, rid: str,
                     last_step: bool) -> _Submitted:
        """Run `submitting` (`_submit`'s coroutine) as a task that a disconnect of the client
        cancels, and give the session back on every way out but the request's (`_unreserve`).
        Without the watcher, a client that left while its prompt was tokenized or its add
        waited behind a long step kept the session reserved until the add ran (and `Run`'s
        watcher saw it gone): its retry got 409 `session_busy` meanwhile.

        Raises:
            APIError: what `_submit` raised, or 400 `aborted` when the client left.
        """
        submit = asyncio.ensure_future(submitting)
        watcher = asyncio.ensure_future(abort_on_disconnect(request, submit.cancel))
        try:
            return await submit
        except BaseException as e:
            left = watcher.done() and not watcher.cancelled()
            if submit.done() and not submit.cancelled() and submit.exception() is None:
                # This task was cancelled after the submit had queued the request, before it
                # resumed here: nothing else will read or abort it.
                submit.result()[0].abort()
                self.metrics.request_ended("abort")
            # Refused (or failed) by `_submit` itself, as against cut off by a cancel: told
            # by the submit's own end, not by `e` (a cancel may come after a refusal).
            refused = submit.done() and not submit.cancelled() and submit.exception() is not None
            self._unreserve(ctx, known, engine_sid, rid, last_step, added, refused)
            if left and isinstance(e, asyncio.CancelledError):
                raise APIError(400, "the request was aborted: its client disconnected",
                               code="aborted") from None
            raise
        finally:
            watcher.cancel()

    async def _submit(self, body: _Common, prompt: Prompt, ctx: SessionContext | None,
                      resumed: bool, engine_sid: str | None, salt: str | None,
                      sid: str | None, rid: str, requested: int | None, added: list[bool]
                      ) -> _Submitted:
        """Tokenize, check the limits and queue the request (`complete`'s part that may
        refuse it or wait); returns its handle, prompt ids and sampling parameters. `added`
        gets True on the engine thread once the engine took the request.

        Raises:
            APIError: a limit or a field was violated, or the engine refused the request
                (422, naming the client's session id, never the engine's tenant-prefixed
                one); nothing is left queued.
        """
        if prompt.ids is not None:
            ids = prompt.ids
        else:
            assert prompt.text is not None
            ids = await self._encode(ctx, prompt)
        if not ids:
            raise APIError(400, "the prompt is empty", param=prompt.param)
        params = self._params(body, len(ids), requested)
        self._check_capacity()
        self._check_not_ended(ctx, engine_sid, sid)
        hint = body.kvsaga

        def on_added(engine: LLMEngine) -> None:
            added.append(True)
            if resumed:
                # The session's next step: once the engine has accepted it (a refused
                # request, here or there, must not start a reload), tell it in the same
                # command, before any step, so that the session's offloaded blocks load back
                # while the step waits for admission.
                assert engine_sid is not None
                engine.resume_hint(engine_sid)

        kwargs: dict[str, Any] = {"request_id": rid, "salt": salt, "on_added": on_added}
        if engine_sid is not None:
            kwargs["session_id"] = engine_sid
            if hint is not None:
                kwargs.update(tool=hint.tool, expected_s=hint.expected_s, last_step=hint.last_step)
                if hint.workflow:
                    kwargs["workflow"] = hint.workflow
        # No await from `_check_not_ended` to here: `engine.submit` queues the add before
        # it first suspends, so an end that comes later queues its end after the add, and
        # aborts the step there (`end_session`).
        try:
            return await self.engine.submit(ids, params, **kwargs), ids, params
        except InvalidRequest as e:
            # Well-formed, but the engine cannot take it (e.g. token ids outside the vocab).
            msg = str(e)
            if engine_sid is not None and sid is not None:
                # The tenant prefix is the server's own; the engine names a session by the
                # repr of its id, which differs from the id where repr escapes a character.
                msg = msg.replace(repr(engine_sid), repr(sid)).replace(engine_sid, sid)
            raise APIError(422, msg, param=prompt.param) from None
        except EngineStopped as e:  # stopped since `serving()` was read: nothing was queued
            raise stopped_error(e) from None
        except BaseException:
            self._abandon(rid, added)
            raise

    def _abandon(self, rid: str, added: list[bool]) -> None:
        """Abort a request whose submit was cancelled (its client left) while the engine
        thread may already be adding it: the abort runs after the add, as commands run in
        order (a no-op when the add never ran). One the engine took is counted as aborted:
        every request the engine took is counted once, and no `Run` will count this one."""
        loop = asyncio.get_running_loop()

        def abort(engine: LLMEngine) -> None:
            try:
                self.engine.abort_request(engine, rid)
            finally:
                if added:  # (final here: the add, if it ran, ran before this command)
                    loop.call_soon_threadsafe(self.metrics.request_ended, "abort")

        self.engine.post(abort)

    def _check_not_ended(self, ctx: SessionContext | None, engine_sid: str | None,
                         sid: str | None) -> None:
        """400 `aborted` if the session was ended (`POST /v1/sessions/{id}/end`) since this
        step reserved it, e.g. while its prompt was tokenized on a worker thread: queued
        anyway, the step would re-create in the engine a session the server no longer knows.
        A step already queued is aborted by the end, with the same error code."""
        if engine_sid is None or self.sessions.get(engine_sid) is ctx:
            return
        raise APIError(400, f"the request was aborted: session {sid!r} was ended before "
                       "this step was queued", param="session_id", code="aborted")

    async def _encode(self, ctx: SessionContext | None, prompt: Prompt) -> list[int]:
        """The prompt's ids (`SessionRegistry.encode`); a long prompt (`TOKENIZE_OFF_LOOP_CHARS`)
        on a worker thread, with the session's known ids read here first (a session is
        reserved by its request, so nothing else changes them meanwhile)."""
        text, special = prompt.text, prompt.add_special_tokens
        assert text is not None
        if len(text) < TOKENIZE_OFF_LOOP_CHARS:
            return self.sessions.encode(ctx, text, special)
        known = None if ctx is None else SessionContext(tokens=ctx.tokens)
        return await asyncio.to_thread(self.sessions.encode, known, text, special, True)

    def _unreserve(self, ctx: SessionContext | None, known: SessionContext | None,
                   engine_sid: str | None, rid: str, last_step: bool, added: list[bool],
                   refused: bool) -> None:
        """Give back a session reserved by a request that was not queued: free it, and
        forget it when this request opened it (a first step not queued leaves no session)
        or when it was the session's last step, cut off rather than refused (as
        `Run._release` forgets it once queued: the client said the session is over).

        A session forgotten here is ended in the engine too, after the step's abort
        (`_abandon`, or `_queue`'s own), else the server and the engine would disagree on
        it. A first step that the engine took may have begun a step before its abort ran,
        which leaves the session paused there (`/end` answered 404 for it). A last step's
        session is held there from its earlier steps (its abort ends it only when it was
        added): kept here, `/end` answered 200 ending nothing and the id's next step was
        taken as resumed. Whether the engine took the step is read on the engine thread
        after the add, so a step that it refused or never saw ends nothing there (a
        session of the id the server does not track is left alone). Any later step of the
        id is added after this end."""
        if ctx is None or ctx.in_flight != rid:
            return
        ctx.in_flight = None
        first = known is None and ctx.tokens is None
        if engine_sid is None or not (first or (last_step and not refused)) \
                or self.sessions.get(engine_sid) is not ctx:
            return
        self.sessions.drop(engine_sid)
        if not refused:  # (a step `_submit` refused was never added)
            held = not first
            self.engine.post(lambda e: self.engine.end_engine_session(e, engine_sid)
                             if held or added else None)
