"""The ASGI guards of kvsaga-serve: API keys and the request-body limit, before FastAPI
parses anything; and a last resort that turns an unhandled error into a 500."""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from kvsaga.serve.errors import APIError
from kvsaga.serve.settings import ServerSettings


class Guard:
    """ASGI middleware: bearer authentication and the body-size limit, before any parsing.

    Every path needs the key (when keys are set) except /health and, unless
    `settings.metrics_auth`, /metrics: scrapers and vLLM's convention expect it open.

    The body is read here (at most `max_body_bytes`) and replayed to the app, so a client
    cannot make the server buffer more than the limit, chunked encoding or not.
    """

    def __init__(self, app: Any, settings: ServerSettings) -> None:
        self.app = app
        self.keys = settings.api_keys
        self.limit = settings.max_body_bytes
        # /health for load balancers; /metrics for Prometheus unless --metrics-auth.
        self.open_paths = ("/health",) if settings.metrics_auth else ("/health", "/metrics")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.keys and scope["path"] not in self.open_paths:
            try:
                key = check_key(self.keys, headers.get(b"authorization", b""))
            except APIError as err:
                return await _send_error(send, err)
            scope.setdefault("state", {})["api_key"] = key
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _send_error(send, too_large(int(declared), self.limit))
        chunks, total = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.limit:
                return await _send_error(send, too_large(total, self.limit))
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


class ContainErrors:
    """ASGI middleware: an unhandled error becomes OpenAI's 500 JSON here.

    Starlette's outermost ServerErrorMiddleware would answer it too, but then re-raises it:
    uvicorn logs the traceback a second time and closes the connection, so a keep-alive
    client's next request on it fails with a reset.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as e:
            if started:  # part of a response left: nothing to answer with
                raise
            logging.getLogger("kvsaga.serve").exception("unhandled error on %s", scope["path"])
            await _send_error(send, APIError(500, f"internal error: {type(e).__name__}"))


def check_key(keys: tuple[str, ...], authorization: bytes) -> str:
    """The API key of `keys` that an Authorization header's value (given twice: the last,
    as `Guard` reads headers) carries as a bearer token (the Ray gateway checks its
    /metrics with it too).

    Raises:
        APIError: 401 `invalid_api_key`, the key missing or not one of `keys`.
    """
    key = _bearer(authorization.decode("latin-1"))
    # Constant-time comparison against every key: no timing hint about a near miss.
    # As bytes: a header may carry any byte (latin-1 here), which str comparison of
    # non-ASCII text refuses with a TypeError.
    raw = None if key is None else key.encode("latin-1")
    match = [k for k in keys if raw is not None and hmac.compare_digest(k.encode(), raw)]
    if not match:
        msg = "missing API key" if key is None else "invalid API key"
        raise APIError(401, f"{msg}: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key")
    return match[0]


def _bearer(value: str) -> str | None:
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def too_large(size: int, limit: int) -> APIError:
    """The 413 for a body over `limit` (the Ray gateway answers it too)."""
    return APIError(413, f"request body of {size}+ bytes exceeds the limit of {limit} bytes",
                    code="request_too_large")


async def _send_error(send: Any, err: APIError) -> None:
    body = json.dumps(err.body()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
