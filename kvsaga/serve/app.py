"""build_app: the FastAPI application of kvsaga-serve.

Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
GET /metrics, POST /v1/sessions/{id}/end. Every error leaves as OpenAI's error JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from kvsaga.engine.chat_template import ChatTemplateError
from kvsaga.engine.engine import LLMEngine
from kvsaga.serve.async_engine import AsyncEngine, EngineFactory
from kvsaga.serve.errors import APIError
from kvsaga.serve.metrics import ServerMetrics
from kvsaga.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ModelCard,
    ModelList,
    now_s,
)
from kvsaga.serve.serving import Prompt, Serving
from kvsaga.serve.sessions import SessionRegistry, tenant_salt
from kvsaga.serve.settings import ServerSettings

log = logging.getLogger("kvsaga.serve")
_OPEN_PATHS = ("/health",)


def model_name_for(settings: ServerSettings, engine: LLMEngine | None = None) -> str:
    """The name clients use: --served-model-name, else the model's folder or file stem."""
    if settings.served_model_name:
        return settings.served_model_name
    if settings.model:
        p = Path(settings.model)
        return p.stem if p.suffix == ".gguf" else p.name
    if engine is not None:
        p = Path(engine.model_path)
        return p.stem if p.suffix == ".gguf" else p.name
    return "SmolLM2-135M-Instruct"


class _Guard:
    """ASGI middleware: bearer authentication and the body-size limit, before any parsing.

    The body is read here (at most `max_body_bytes`) and replayed to the app, so a client
    cannot make the server buffer more than the limit, chunked encoding or not.
    """

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.app = app
        self.keys = settings.api_keys
        self.limit = settings.max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.keys and scope["path"] not in _OPEN_PATHS:
            key = _bearer(headers.get(b"authorization", b"").decode("latin-1"))
            # Constant-time comparison against every key: no timing hint about a near miss.
            match = [k for k in self.keys if key is not None and hmac.compare_digest(k, key)]
            if not match:
                msg = "missing API key" if key is None else "invalid API key"
                err = APIError(401, f"{msg}: send 'Authorization: Bearer <key>'",
                               code="invalid_api_key")
                return await _send_error(send, err)
            scope.setdefault("state", {})["api_key"] = match[0]
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, _too_large(int(declared), self.limit))
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                return await _send_error(send, _too_large(total, self.limit))
            chunks.append(chunk)
            if not message.get("more_body"):
                break
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # later calls wait for the disconnect

        return await self.app(scope, replay, send)


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _too_large(size: int, limit: int) -> APIError:
    return APIError(413, f"request body of {size}+ bytes exceeds the limit of {limit} bytes",
                    code="request_too_large")


async def _send_error(send: Any, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    loc = [str(x) for x in e.get("loc", ()) if x != "body"]
    if e.get("type") == "json_invalid":
        return f"malformed JSON: {e.get('msg')}", None
    param = ".".join(loc) or None
    return f"{param or 'body'}: {e.get('msg')} (got {e.get('input')!r:.200})", param


def build_app(engine_or_factory: LLMEngine | EngineFactory, settings: ServerSettings) -> FastAPI:
    """Build the server around an engine, or a function that loads one.

    Args:
        engine_or_factory: a ready LLMEngine, or a factory that the engine thread calls at
            start-up (the server answers 503 until it returns).
        settings: limits, auth, metrics options.
    Returns:
        The ASGI app; `app.state.engine` is its AsyncEngine.
    """
    aengine = AsyncEngine(engine_or_factory)
    ready_engine = engine_or_factory if isinstance(engine_or_factory, LLMEngine) else None
    model_name = model_name_for(settings, ready_engine)
    metrics = ServerMetrics(aengine, model_name, settings.metrics_compat)
    holder: dict[str, Serving] = {}

    def serving() -> Serving:
        """The Serving once the model is loaded; 503 before."""
        srv = holder.get("serving")
        if srv is not None:
            return srv
        if aengine.load_error is not None:
            raise APIError(503, f"the model failed to load: {aengine.load_error}",
                           code="model_load_failed")
        if not aengine.ready or aengine.engine is None:
            raise APIError(503, "the model is still loading", code="model_loading",
                           headers={"Retry-After": "5"})
        eng = aengine.engine
        srv = Serving(aengine, SessionRegistry(eng.tokenizer), metrics, settings,
                      eng.max_model_len, model_name)
        holder["serving"] = srv
        return srv

    async def sweep_idle_sessions() -> None:
        """End sessions idle past `session_idle_s`: the policy ranks retained blocks, but a
        session nobody returns to must not hold its record forever."""
        period = min(60.0, settings.session_idle_s / 2)
        while True:
            await asyncio.sleep(period)
            srv = holder.get("serving")
            if srv is None:
                continue
            for sid in srv.sessions.idle(settings.session_idle_s):
                srv.sessions.drop(sid)
                with contextlib.suppress(Exception):
                    await aengine.end_session(sid)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        aengine.start()
        sweeper = asyncio.create_task(sweep_idle_sessions())
        try:
            yield
        finally:
            sweeper.cancel()
            await asyncio.to_thread(aengine.stop)

    app = FastAPI(title="kvsaga-serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = aengine
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.serving = lambda: holder.get("serving")
    app.add_middleware(_Guard, settings=settings)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return _error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error_response(APIError(exc.status_code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}"))

    def check_model(name: str) -> None:
        if name not in (model_name, settings.model):
            raise APIError(404, f"model {name!r} does not exist; this server serves "
                           f"{model_name!r}", param="model", code="model_not_found")

    @app.get("/health")
    async def health() -> Response:
        if aengine.ready:
            return JSONResponse({"status": "ok"})
        if aengine.load_error is not None:
            return JSONResponse({"status": "error", "error": str(aengine.load_error)}, 503)
        return JSONResponse({"status": "loading"}, 503)

    @app.get("/v1/models")
    async def models() -> dict:
        srv = serving()
        card = ModelCard(id=model_name, created=now_s(), max_model_len=srv.max_model_len)
        return ModelList(data=[card]).model_dump()

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatCompletionRequest) -> Response:
        srv = serving()
        check_model(body.model)
        messages = [_message_dict(m) for m in body.messages]
        kwargs = {"tools": body.tools} if body.tools else {}
        try:
            text = srv.sessions.tokenizer.apply_chat_template(messages, True, **kwargs)
        except ChatTemplateError as e:
            raise APIError(422, f"the chat template rejected the messages: {e}",
                           param="messages") from None
        prompt = Prompt(text, add_special_tokens=False, param="messages")
        return await srv.complete(request, body, prompt, True,
                                  body.max_completion_tokens or body.max_tokens)

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        srv = serving()
        check_model(body.model)
        p = body.prompt
        if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
            p = p[0]  # a batch of one
        if isinstance(p, str):
            prompt = Prompt(p)
        elif isinstance(p, list) and all(isinstance(t, int) for t in p):
            prompt = Prompt(None, ids=list(p))
        else:
            raise APIError(400, "only one prompt per request is supported", param="prompt")
        return await srv.complete(request, body, prompt, False, body.max_tokens)

    @app.post("/v1/sessions/{session_id}/end")
    async def end_session(request: Request, session_id: str) -> dict:
        srv = serving()
        cache_salt = None
        raw = await request.body()
        if raw.strip():
            try:
                cache_salt = json.loads(raw).get("cache_salt")
            except (ValueError, AttributeError):
                raise APIError(400, "body must be a JSON object") from None
        api_key = request.scope.get("state", {}).get("api_key")
        engine_sid = srv.sessions.engine_id(tenant_salt(api_key, cache_salt), session_id)
        ctx = srv.sessions.drop(engine_sid)
        if ctx is None:
            raise APIError(404, f"session {session_id!r} does not exist (or has ended)",
                           param="session_id", code="session_not_found")
        await aengine.end_session(engine_sid)
        return {"id": session_id, "object": "session", "ended": True}

    return app


def _message_dict(message: Any) -> dict:
    """A message as the chat template expects: text parts of a content list joined."""
    d = message.model_dump(exclude_none=True)
    content = d.get("content")
    if isinstance(content, list):
        texts = [part.get("text") or "" for part in content if part.get("type") == "text"]
        if len(texts) != len(content):
            raise APIError(400, "only text content parts are supported",
                           param="messages.content")
        d["content"] = "".join(texts)
    return d
