"""Agent sessions across tool pauses, session ids' precedence, ending sessions, tenancy."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import openai
import pytest

from kvsaga.serve.errors import APIError
from kvsaga.serve.sessions import resolve_session_id, tenant_salt

from .conftest import MODEL, LiveServer, make_engine
from .test_session_race import _Hold, _queued, _run, _sessions, _until


def _step(client: openai.OpenAI, messages: list[dict], **extra):
    return client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=6, temperature=0, extra_body=extra
    )


def test_session_survives_tool_pause_and_hits_cache(client: openai.OpenAI, server: LiveServer):
    # The server (session-scoped) keeps an ended session's blocks as prefix cache, as it
    # should: a fixed prompt hit the previous run's blocks when this ran twice in one
    # process, so step 1 opens with a prompt of its own.
    msgs = [{"role": "system", "content": f"Run {uuid.uuid4().hex}. "
             + "You are an agent with tools. " * 3},
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


def test_the_tool_pause_test_repeats_on_one_server(client: openai.OpenAI, server: LiveServer):
    """Run twice on the session's one server (as a second run in one process does), the
    test above found its step 1 cached by the first run: the test's state, not the
    library's (the prefix cache is per engine, and keeping an ended session's blocks for
    others is its purpose)."""
    for _ in range(2):
        test_session_survives_tool_pause_and_hits_cache(client, server)


def test_session_id_from_header(server: LiveServer):
    sid = "via-header"
    body = {"model": MODEL, "prompt": "session by header: " * 4, "max_tokens": 3}
    r = httpx.post(f"{server.url}/v1/completions", json=body, headers={"X-Session-ID": sid},
                   timeout=30)
    assert r.status_code == 200 and r.headers["x-session-id"] == sid
    assert server.call(lambda e: f"anon/{sid}" in e.manager.sessions)
    end = httpx.post(f"{server.url}/v1/sessions/{sid}/end", timeout=60)
    assert end.status_code == 200 and end.json()["ended"] is True
    assert server.call(lambda e: f"anon/{sid}" in e.manager.sessions) is False
    again = httpx.post(f"{server.url}/v1/sessions/{sid}/end", timeout=60)
    assert again.status_code == 404 and again.json()["error"]["code"] == "session_not_found"
    server.wait_idle()


def test_prompt_cache_key_is_a_shared_hint_not_a_session(tiny_dir):
    """OpenAI's prompt_cache_key is shared by unrelated requests: two concurrent ones with
    the same key both run (before: the second got 409 session_busy, and each overwrote the
    other's session context), and no session is opened for it."""
    body = {"model": MODEL, "max_tokens": 2, "ignore_eos": True, "prompt_cache_key": "app-v1"}

    async def scenario(app, aengine, client) -> None:
        hold = _Hold(aengine)
        await hold.wait()
        try:
            first = await _queued(aengine, client.post("/v1/chat/completions", json={
                **body, "messages": [{"role": "user", "content": "What is 2+2?"}]}), "first")
            second = asyncio.create_task(client.post("/v1/chat/completions", json={
                **body, "messages": [{"role": "user", "content": "Name a colour."}]}))
            await _until(lambda: second.done() or aengine.num_in_flight == 2,
                         "answered or queued the second")
        finally:
            hold.release.set()
        for r in (await first, await second):
            assert r.status_code == 200, r.text
            assert "x-session-id" not in r.headers
        assert _sessions(app).get("anon/app-v1") is None
        assert not await aengine.call(lambda e: "anon/app-v1" in e.manager.sessions)
        r = await client.post("/v1/chat/completions", json={
            **body, "messages": [{"role": "user", "content": "hi"}], "kvsaga": {"tool": "t"}})
        assert r.status_code == 400 and r.json()["error"]["param"] == "kvsaga", r.text

    _run(make_engine(tiny_dir), scenario)


def test_resolution_order_and_salts():
    assert resolve_session_id("body", "header") == "body"
    assert resolve_session_id(None, "header") == "header"
    assert resolve_session_id("", "header") == "header"  # an empty one is skipped
    assert resolve_session_id(None, None) is None
    # What the X-Session-ID header echoing it cannot carry is refused up front, naming the
    # field: beyond U+00FF, a control character, or a space or tab at either end (h11,
    # uvicorn's parser without httptools, refuses those once the step has run).
    for bad in ("agent\u0100", "a\nb", "task-42 ", " task-42", "\ttask"):
        with pytest.raises(APIError, match="session_id") as e:
            resolve_session_id(bad, None)
        assert e.value.status == 400 and e.value.param == "session_id"
    assert resolve_session_id("task 42\tb", None) == "task 42\tb"  # inside is fine
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
    r = httpx.post(f"{auth_server.url}/v1/sessions/shared-name/end", headers=hb, timeout=60)
    assert r.status_code == 404
    ha = {"Authorization": "Bearer key-a"}
    assert httpx.post(f"{auth_server.url}/v1/sessions/shared-name/end", headers=ha,
                      timeout=60).is_success
    auth_server.wait_idle()


def test_auth(auth_server: LiveServer):
    url = auth_server.url
    assert httpx.get(f"{url}/health", timeout=60).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic key-a"},
                    {"Authorization": "Bearer caf\xe9".encode("latin-1")},  # before: a 500
                    {"Authorization": "Bearer k\xc3\xa9y".encode("latin-1")}):
        r = httpx.get(f"{url}/v1/models", headers=headers, timeout=60)
        assert r.status_code == 401, headers
        assert r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(f"{url}/metrics", timeout=60).status_code == 200  # open unless --metrics-auth
    with pytest.raises(openai.AuthenticationError):
        auth_server.client("wrong").models.list()
    assert auth_server.client("key-b").models.list().data[0].id == MODEL
