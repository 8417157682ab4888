"""APIError: a failure that the server reports as OpenAI's error JSON with an HTTP status."""

from __future__ import annotations

from kvsaga._validate import check_unicode
from kvsaga.serve.protocol import ErrorBody, ErrorResponse

# OpenAI's `type` for each status we send.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


class APIError(Exception):
    """Args:
    status: HTTP status.
    message: what was wrong, naming the offending value.
    param: the request field at fault, if one is.
    code: a machine-readable code (e.g. "context_length_exceeded").
    headers: extra response headers (e.g. Retry-After).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        err = ErrorBody(
            message=self.message,
            type=_TYPES.get(self.status, "invalid_request_error"),
            param=self.param,
            code=self.code,
        )
        return ErrorResponse(error=err).model_dump()


def refuse_lone_surrogate(text: str, param: str) -> None:
    """APIError 400 naming `param` when `text` holds a lone UTF-16 surrogate (JSON's
    "\\ud800" escape, which the stdlib parser lets through): it is no Unicode text, and
    encoding it (the tokenizer, the tenant's hash) failed as a 500."""
    check_unicode(param, text, lambda message: APIError(400, message, param=param))


def stopped_error(e: Exception) -> APIError:
    """The 503 for a request that reached the engine after its thread stopped
    (`async_engine.EngineStopped`: what in-flight requests get at shutdown, before any of
    it ran)."""
    return APIError(503, str(e), code="server_shutting_down")
