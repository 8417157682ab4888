"""X-Session-ID given twice: the gateway routes by the first, the one the single-node
server reads (Starlette's `headers.get`); it took the last, so the step was routed as one
session and served as another."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from starlette.datastructures import Headers  # noqa: E402

from kvsaga.integrations.ray.deployment import routing_call  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402


def test_the_first_x_session_id_is_the_session():
    raw = [(b"x-session-id", b"first"), (b"x-session-id", b"second")]  # (ASGI: lower case)
    assert Headers(raw=raw).get("x-session-id") == "first"  # what the server reads
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    call = routing_call(ServerSettings(), "POST", "/v1/chat/completions", b"", raw, body)
    assert call["session"].endswith("/first")
