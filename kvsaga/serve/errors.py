"""APIError: a failure that the server reports as OpenAI's error JSON with an HTTP status."""

from __future__ import annotations

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
