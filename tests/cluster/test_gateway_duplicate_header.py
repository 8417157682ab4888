"""Headers given twice or empty are read by the gateway as the single-node server reads
them. X-Session-ID given twice: the gateway routes by the first, the one the server reads
(Starlette's `headers.get`); it took the last, so the step was routed as one session and
served as another. An empty X-Session-ID is skipped; of two Authorization headers the
last counts (the replica's `Guard`)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray.serve")

from starlette.datastructures import Headers  # noqa: E402

from kvsaga.integrations.ray.gateway import routing_call  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402


def test_the_first_x_session_id_is_the_session():
    raw = [(b"x-session-id", b"first"), (b"x-session-id", b"second")]  # (ASGI: lower case)
    assert Headers(raw=raw).get("x-session-id") == "first"  # what the server reads
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
    call = routing_call(ServerSettings(), "POST", "/v1/chat/completions", b"", raw, body)
    assert call["session"].endswith("/first")


def test_an_empty_x_session_id_is_skipped_as_the_server_skips_it():
    """The server skips an empty X-Session-ID (`resolve_session_id`); the gateway stopped
    at it and routed a one-shot step (review repro empty_header). Past it, a
    prompt_cache_key routes the step for affinity only: the server opens no session for it,
    so the gateway names none to pull or move (no `engine_sid`)."""
    from kvsaga.serve.sessions import resolve_session_id

    body = b'{"model": "m", "prompt": "hi", "session_id": "s7"}'
    raw = [(b"x-session-id", b"")]
    call = routing_call(ServerSettings(), "POST", "/v1/completions", b"", raw, body)
    assert call["session"] == call["engine_sid"] == "anon/s7"
    assert resolve_session_id(None, "") is None
    body = b'{"model": "m", "prompt": "hi", "prompt_cache_key": "agent-7"}'
    call = routing_call(ServerSettings(), "POST", "/v1/completions", b"", raw, body)
    assert call["session"] == "pck:anon/agent-7" and "engine_sid" not in call
    body = b'{"model": "m", "prompt": "hi", "session_id": "", "prompt_cache_key": "k"}'
    call = routing_call(ServerSettings(), "POST", "/v1/completions", b"", [], body)
    assert call["session"] == "pck:anon/k" and "engine_sid" not in call


def test_two_authorization_headers_name_the_tenant_the_replica_serves():
    """The replica's Guard reads the last Authorization header (`dict(scope["headers"])`);
    the gateway read the first, so it named the session by another tenant (review repro
    dup_auth)."""
    from kvsaga.serve.sessions import SessionRegistry, tenant_salt

    settings = ServerSettings(api_keys=("k1", "k2"))
    raw = [(b"authorization", b"Bearer k1"), (b"authorization", b"Bearer k2")]
    assert dict(raw)[b"authorization"] == b"Bearer k2"  # what Guard reads
    body = b'{"model": "m", "prompt": "hi", "session_id": "s"}'
    call = routing_call(settings, "POST", "/v1/completions", b"", raw, body)
    assert call["engine_sid"] == SessionRegistry.engine_id(tenant_salt("k2", None), "s")
