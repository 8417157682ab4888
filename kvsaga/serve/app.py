"""build_app: the FastAPI application of kvsaga-serve.

Endpoints (kvsaga/serve/routes/): POST /v1/chat/completions, POST /v1/completions,
GET /v1/models, GET /v1/models/{id}, GET /health, GET /metrics, POST /v1/sessions/{id}/end.
Every error leaves as OpenAI's error JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kvsaga.engine.engine import LLMEngine
from kvsaga.serve.async_engine import STOP_JOIN_S, AsyncEngine, EngineFactory
from kvsaga.serve.errors import APIError
from kvsaga.serve.guard import ContainErrors, Guard
from kvsaga.serve.routes import completions, sessions, system
from kvsaga.serve.settings import ServerSettings
from kvsaga.serve.state import ServerState, model_name_for
from kvsaga.serve.stats_log import StatsLogger

__all__ = ["build_app", "model_name_for"]

log = logging.getLogger("kvsaga.serve")


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


_SCALAR_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _is_branch_tag(item: object) -> bool:
    """Whether a pydantic error location item names a branch of a union type ("str",
    "list[int]", "ContentPart") rather than a request field, index or key."""
    return isinstance(item, str) and (item in _SCALAR_TAGS or "[" in item
                                      or item[:1].isupper())


def _branch_name(tag: str) -> str:
    """A union branch as the client reads it: validator wrappers dropped
    ("list[function-before[check(), int]]" is "list[int]")."""
    return re.sub(r"function-\w+\[[^\]]*?, (\w+)\]", r"\1", tag)


def _validation_message(exc: RequestValidationError,
                        content_type: str | None = None) -> tuple[str, str | None]:
    """(message, param) of a request that failed validation: param is the request field
    (union branch tags left out of it); a value that matched no branch of a union names
    the branches it could have been. Malformed JSON says why and where (the decoder's
    reason, and its character offset in the body); a body left unparsed because its
    `content_type` is not JSON (curl's `-d` sends a form's) says to send a JSON one."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    e = errors[0]
    if e.get("type") == "json_invalid":
        reason = (e.get("ctx") or {}).get("error") or e.get("msg")
        pos = [x for x in e.get("loc", ()) if isinstance(x, int)]
        where = f" at character {pos[0]} (counting from 0)" if pos else ""
        return f"malformed JSON: {reason}{where}", None
    if isinstance(e.get("input"), bytes) and tuple(e.get("loc", ())) == ("body",):
        sent = ("it has no Content-Type" if content_type is None
                else f"its Content-Type is {content_type!r}")
        return (f"the body was not read as JSON: {sent}; send it with Content-Type: "
                "application/json"), None
    loc = [x for x in e.get("loc", ()) if x != "body"]
    param = ".".join(str(x) for x in loc if not _is_branch_tag(x)) or None
    message = e.get("msg")
    at = next((i for i, x in enumerate(loc) if _is_branch_tag(x)), None)
    if at is not None:
        branches = []
        for other in errors:
            oloc = [x for x in other.get("loc", ()) if x != "body"]
            if oloc[:at] == loc[:at] and len(oloc) > at and _is_branch_tag(oloc[at]):
                branches.append(_branch_name(oloc[at]))
        branches = list(dict.fromkeys(branches))
        if len(branches) > 1:
            param = ".".join(str(x) for x in loc[:at]) or None
            message = f"expected {', '.join(branches[:-1])} or {branches[-1]}"
    return f"{param or 'body'}: {message} (got {e.get('input')!r:.200})", param


def _unparsed_body(cause: BaseException, detail: str) -> str:
    """What was wrong with a body FastAPI could not parse (its own message, "There was an
    error parsing the body", says nothing of it): `cause` is what parsing raised."""
    if isinstance(cause, UnicodeDecodeError):
        return (f"the body is not valid {cause.encoding.upper()} (byte 0x"
                f"{cause.object[cause.start]:02x} at position {cause.start}: {cause.reason})")
    if isinstance(cause, RecursionError):
        return "the body's JSON is nested too deeply to parse"
    return f"{detail}: {type(cause).__name__}: {str(cause)[:200]}"


# The longest the app's shutdown waits for the engine thread to leave the step it is in once
# stopped, where the server running the app sets no sooner bound (`EngineWait`).
ENGINE_WAIT_S = 10.0
_WAIT_SLICE_S = 0.05


class EngineWait:
    """How long the app's shutdown waits for an engine thread still inside a step (a long
    or hung forward pass) after stopping it: ENGINE_WAIT_S at most, and no later than
    `deadline` (`time.monotonic()`), nor once `cut()` says so. kvsaga-serve's server
    (kvsaga/serve/shutdown.py `DrainingServer`) sets both as its shutdown begins: the
    deadline from its grace, and `cut` on a second Ctrl-C."""

    def __init__(self) -> None:
        self.deadline = math.inf
        self.cut: Callable[[], bool] = lambda: False


def _quiet_leak_report() -> None:
    """An engine thread left inside its step holds the engine's C++ objects (the core's
    pool, queues, prefix index) in its frames until the process ends; nanobind then listed
    each as "leaked" at exit, some thirty lines ending in a hint at a reference-counting bug
    in the bindings. They are held, not leaked: its report is turned off for the process
    from here on. Nothing where the C++ core is not built (or predates the switch)."""
    try:
        from kvsaga import _kvcore
    except ImportError:
        return
    off = getattr(_kvcore, "set_leak_warnings", None)
    if off is not None:
        off(False)


async def _stop_engine(aengine: AsyncEngine, wait: EngineWait) -> None:
    """The app's shutdown: stop the engine (once: not where the drain stopped it already),
    joining its thread STOP_JOIN_S at most (its requests and commands are failed then),
    then wait for the thread in short slices within `wait`'s bound (STOP_JOIN_S where the
    drain stopped it: its requests were told, and it was inside a step then). One uninterruptible
    10 s join held the exit past the grace's bound, and past a second Ctrl-C."""
    deadline = min(time.monotonic() + ENGINE_WAIT_S, wait.deadline)
    if not aengine.stopped:
        await asyncio.to_thread(aengine.stop, STOP_JOIN_S)
    else:  # by the drain, which found the thread in a step past the grace: a short wait
        deadline = min(deadline, time.monotonic() + STOP_JOIN_S)
    while aengine.thread_alive:
        left = deadline - time.monotonic()
        if left <= 0 or wait.cut():
            log.warning("the engine thread is still inside a step; shutting down without "
                        "waiting for it")
            _quiet_leak_report()
            return
        await asyncio.sleep(min(left, _WAIT_SLICE_S))


def build_app(engine_or_factory: LLMEngine | EngineFactory, settings: ServerSettings) -> FastAPI:
    """Build the server around an engine, or a function that loads one.

    Args:
        engine_or_factory: a ready LLMEngine, or a factory that the engine thread calls at
            start-up (the server answers 503 until it returns).
        settings: limits, auth, metrics and logging options.
    Returns:
        The ASGI app; `app.state.engine` is its AsyncEngine, `app.state.server` the
        ServerState its routes share, `app.state.engine_wait` the EngineWait that bounds
        its shutdown's wait for the engine thread.
    """
    aengine = AsyncEngine(engine_or_factory)
    ready_engine = engine_or_factory if isinstance(engine_or_factory, LLMEngine) else None
    state = ServerState(aengine, settings, model_name_for(settings, ready_engine))
    engine_wait = EngineWait()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        aengine.start()
        tasks = [asyncio.create_task(state.sweep_idle_sessions())]
        if settings.log_stats_interval_s > 0:
            logger = StatsLogger(aengine, state.metrics.counts)
            tasks.append(asyncio.create_task(logger.run(settings.log_stats_interval_s)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await _stop_engine(aengine, engine_wait)

    app = FastAPI(title="kvsaga-serve", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = aengine
    app.state.server = state
    app.state.engine_wait = engine_wait
    app.add_middleware(Guard, settings=settings)
    app.add_middleware(ContainErrors)  # outermost of ours: sees whatever the others raise
    _add_error_handlers(app)
    for module in (system, completions, sessions):
        app.include_router(module.router)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    """Every failure leaves as OpenAI's error JSON."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc, request.headers.get("content-type"))
        return _error_response(APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # Its headers (a 405's `Allow`) go out with it.
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        allow = {k.lower(): v for k, v in headers.items()}.get("allow")
        if exc.status_code == 405 and allow:
            message = f"{request.method} is not allowed on {request.url.path}; allowed: {allow}"
        elif exc.status_code == 400 and exc.__cause__ is not None:
            message = _unparsed_body(exc.__cause__, message)
        return _error_response(APIError(exc.status_code, message, headers=headers))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}"))
