"""Agent sessions across tool pauses, session ids' precedence, ending sessions, tenancy."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from kvsaga.serve.errors import APIError
from kvsaga.serve.sessions import resolve_session_id, tenant_salt

from .conftest import MODEL, LiveServer


def _step(client: openai.OpenAI, messages: list[dict], **extra):
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0, extra_body=extra
    )


def test_session_survives_tool_pause_and_hits_cache(client: openai.OpenAI, server: LiveServer):
    msgs = [{"role": "system", "content": "You are an agent with tools. " * 3},
            {"role": "user", "content": "List the files, then read the first one."}]
    hint = {"tool": "ls", "expected_s": 0.1}
    r1 = _step(client, msgs, session_id="agent-1", kvsaga=hint)
    assert r1.usage.prompt_tokens_details.cached_tokens == 0
    paused = server.call(lambda e: e.manager.session("anon/agent-1").state.name)
    assert paused == "PAUSED"
    time.sleep(0.2)  # the tool runs
    msgs += [{"role": "assistant", "content": r1.choices[0].message.content},
             {"role": "tool", "content": "a.txt b.txt"}]
    r2 = _step(client, msgs, session_id="agent-1", kvsaga={"last_step": True})
    # Everything of step 1 (prompt and output) is context of step 2; all but the block
    # holding the last token is served from the cache.
    step1 = r1.usage.prompt_tokens + r1.usage.completion_tokens
    assert r2.usage.prompt_tokens > step1
    assert r2.usage.prompt_tokens_details.cached_tokens >= (step1 - 1) // 16 * 16
    assert server.call(lambda e: "anon/agent-1" in e.manager.sessions) is False  # last step
    server.wait_idle()


def test_session_id_from_header_and_prompt_cache_key(server: LiveServer):
    for how in ("header", "prompt_cache_key"):
        sid = f"via-{how}"
        headers = {"X-Session-ID": sid} if how == "header" else {}
        body = {"model": MODEL, "prompt": f"session by {how}: " * 4, "max_tokens": 3}
        if how == "prompt_cache_key":
            body["prompt_cache_key"] = sid
        r = httpx.post(f"{server.url}/v1/completions", json=body, headers=headers, timeout=30)
        assert r.status_code == 200 and r.headers["x-session-id"] == sid
        assert server.call(lambda e, sid=sid: f"anon/{sid}" in e.manager.sessions)
        end = httpx.post(f"{server.url}/v1/sessions/{sid}/end")
        assert end.status_code == 200 and end.json()["ended"] is True
        assert server.call(lambda e, sid=sid: f"anon/{sid}" in e.manager.sessions) is False
        again = httpx.post(f"{server.url}/v1/sessions/{sid}/end")
        assert again.status_code == 404 and again.json()["error"]["code"] == "session_not_found"
    server.wait_idle()


def test_resolution_order_and_salts():
    assert resolve_session_id("body", "header", "key") == "body"
    assert resolve_session_id(None, "header", "key") == "header"
    assert resolve_session_id(None, None, "key") == "key"
    assert resolve_session_id(None, None, None) is None
    # What the X-Session-ID header echoing it cannot carry is refused up front, naming the
    # field: beyond U+00FF, a control character, or a space or tab at either end (h11,
    # uvicorn's parser without httptools, refuses those once the step has run).
    for bad in ("agent\u0100", "a\nb", "task-42 ", " task-42", "\ttask"):
        with pytest.raises(APIError, match="session_id") as e:
            resolve_session_id(bad, None, None)
        assert e.value.status == 400 and e.value.param == "session_id"
    assert resolve_session_id("task 42\tb", None, None) == "task 42\tb"  # inside is fine
    assert tenant_salt(None, None) is None
    salts = {tenant_salt("a", None), tenant_salt("b", None), tenant_salt(None, "a"),
             tenant_salt("a", "x"), tenant_salt("ax", None)}
    assert len(salts) == 5  # no two tenants collide, nor a key with a salt


def test_cache_salt_isolates(client: openai.OpenAI, server: LiveServer):
    prompt = "A long shared system prompt that two tenants both send. " * 3

    def cached(salt: str) -> int:
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2,
                                      extra_body={"cache_salt": salt})
        return r.usage.prompt_tokens_details.cached_tokens

    assert cached("tenant-x") == 0
    assert cached("tenant-y") == 0  # same tokens, other tenant: no hit
    assert cached("tenant-x") > 0
    server.wait_idle()


def test_api_keys_are_tenants(auth_server: LiveServer):
    a, b = auth_server.client("key-a"), auth_server.client("key-b")
    prompt = "Tenant isolation by API key, " * 4

    def cached(c: openai.OpenAI) -> int:
        r = c.completions.create(model=MODEL, prompt=prompt, max_tokens=2)
        return r.usage.prompt_tokens_details.cached_tokens

    assert cached(a) == 0 and cached(b) == 0 and cached(a) > 0
    # A session id is the tenant's own: the other key cannot end it.
    a.completions.create(model=MODEL, prompt="x" * 20, max_tokens=1,
                         extra_body={"session_id": "shared-name"})
    hb = {"Authorization": "Bearer key-b"}
    r = httpx.post(f"{auth_server.url}/v1/sessions/shared-name/end", headers=hb)
    assert r.status_code == 404
    ha = {"Authorization": "Bearer key-a"}
    assert httpx.post(f"{auth_server.url}/v1/sessions/shared-name/end", headers=ha).is_success
    auth_server.wait_idle()


def test_auth(auth_server: LiveServer):
    url = auth_server.url
    assert httpx.get(f"{url}/health").status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic key-a"},
                    {"Authorization": "Bearer caf\xe9".encode("latin-1")},  # before: a 500
                    {"Authorization": "Bearer k\xc3\xa9y".encode("latin-1")}):
        r = httpx.get(f"{url}/v1/models", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{url}/metrics").status_code == 200  # open unless --metrics-auth
    with pytest.raises(openai.AuthenticationError):
        auth_server.client("wrong").models.list()
    assert auth_server.client("key-b").models.list().data[0].id == MODEL
