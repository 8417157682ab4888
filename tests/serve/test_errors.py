"""Every error class: OpenAI error JSON, the right status, and no block leaked afterwards."""

from __future__ import annotations

import concurrent.futures
import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from kvsaga.serve.app import build_app

from .conftest import MODEL, LiveServer, make_engine, settings


def _post(server: LiveServer, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=30, **kwargs)


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({**CHAT, "messages": []}, "messages"),
        ({**CHAT, "temperature": -1}, "temperature"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "n": 2}, "n"),
        ({**CHAT, "kvsaga": {"expected_s": -3}}, "kvsaga.expected_s"),
        ({**CHAT, "kvsaga": {"bogus": 1}}, "kvsaga.bogus"),
        ({k: v for k, v in CHAT.items() if k != "model"}, "model"),
        ({**CHAT, "max_tokens": 10**6}, "max_tokens"),
        ({**CHAT, "max_completion_tokens": 10**6}, "max_completion_tokens"),
        ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages.0.content"),
        # JSON's own types: pydantic's lax mode read these as 1, True and True
        ({**CHAT, "max_tokens": True}, "max_tokens"),
        ({**CHAT, "kvsaga": {"last_step": "yes"}}, "kvsaga.last_step"),
        ({**CHAT, "stream": 1}, "stream"),
        ({**CHAT, "ignore_eos": "false"}, "ignore_eos"),  # (truthy: EOS would be ignored)
        ({**CHAT, "ignore_eos": None}, "ignore_eos"),
    ],
)
def test_bad_fields_are_400(server: LiveServer, body: dict, param: str):
    err = _error(_post(server, "/v1/chat/completions", json=body), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error"


def test_malformed_and_oversized(server: LiveServer):
    err = _error(_post(server, "/v1/chat/completions", content=b"{not json",
                       headers={"content-type": "application/json"}), 400)
    assert "JSON" in err["message"]
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * (9 * 2**20)}]}
    _error(_post(server, "/v1/chat/completions", json=big), 413)
    # Fits the body limit, but not the context (256 tokens).
    long = {"model": MODEL, "prompt": "y" * 400, "max_tokens": 2}
    err = _error(_post(server, "/v1/completions", json=long), 400)
    assert err["code"] == "context_length_exceeded"
    err = _error(_post(server, "/v1/completions", json={**long, "prompt": [5, 99999]}), 422)
    assert "99999" in err["message"]
    _error(_post(server, "/v1/completions", json={**long, "prompt": ["a", "b"]}), 400)
    err = _error(_post(server, "/v1/completions", json={**long, "prompt": [True, 5]}), 400)
    assert err["param"].startswith("prompt")


def test_body_and_method_errors_say_what_was_wrong(server: LiveServer):
    """Before: "malformed JSON: JSON decode error"; a JSON body sent as a form (curl's `-d`)
    read as a bad body ("body: Input should be a valid dictionary ..."); a 405 had no
    `Allow` header and said only "Method Not Allowed"."""
    good = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2})
    bad = good.replace(', "max_tokens"', ' "max_tokens"')
    err = _error(_post(server, "/v1/completions", content=bad.encode(),
                       headers={"content-type": "application/json"}), 400)
    at = bad.index('"max_tokens"')
    assert err["message"] == (f"malformed JSON: Expecting ',' delimiter at character {at} "
                              "(counting from 0)"), err
    err = _error(_post(server, "/v1/completions", content=good.encode(),
                       headers={"content-type": "application/x-www-form-urlencoded"}), 400)
    assert "'application/x-www-form-urlencoded'" in err["message"], err
    assert "send it with Content-Type: application/json" in err["message"], err
    r = httpx.get(f"{server.url}/v1/completions", timeout=30)
    err = _error(r, 405)
    assert r.headers.get("allow") == "POST", r.headers
    assert err["message"] == "GET is not allowed on /v1/completions; allowed: POST", err


def test_body_without_content_type_says_it_has_none(server: LiveServer):
    """Before: "its Content-Type is None"."""
    good = json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2})
    err = _error(_post(server, "/v1/completions", content=good.encode()), 400)
    assert err["message"] == ("the body was not read as JSON: it has no Content-Type; send it "
                              "with Content-Type: application/json"), err


def test_not_found(server: LiveServer):
    err = _error(_post(server, "/v1/chat/completions", json={**CHAT, "model": "gpt-4"}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    _error(_post(server, "/v1/sessions/never-seen/end"), 404)
    _error(httpx.get(f"{server.url}/v1/nothing-here", timeout=60), 404)
    server.wait_idle()


def test_queue_full_is_429_with_retry_after(tiny_dir: Path):
    app = build_app(make_engine(tiny_dir, max_num_seqs=1), settings(max_queue=1))
    body = {"model": MODEL, "prompt": "busy " * 4, "max_tokens": 60, "ignore_eos": True}
    with LiveServer(app) as s, concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: _post(s, "/v1/completions", json=body), range(6)))
        codes = sorted(r.status_code for r in results)
        assert codes.count(200) >= 2 and 429 in codes and set(codes) <= {200, 429}, codes
        limited = next(r for r in results if r.status_code == 429)
        assert limited.headers["retry-after"] == "1"
        assert _error(limited, 429)["type"] == "rate_limit_error"
        s.wait_idle()


def test_503_while_loading(tiny_dir: Path):
    release = threading.Event()

    def slow_factory():
        release.wait(20)
        return make_engine(tiny_dir)

    app = build_app(slow_factory, settings())
    with LiveServer(app, wait_ready=False) as s:
        assert httpx.get(f"{s.url}/health", timeout=60).status_code == 503
        err = _error(_post(s, "/v1/chat/completions", json=CHAT), 503)
        assert err["code"] == "model_loading"
        release.set()
        deadline = time.monotonic() + 20
        while httpx.get(f"{s.url}/health", timeout=60).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _post(s, "/v1/chat/completions", json=CHAT).status_code == 200
        s.wait_idle()


def test_session_busy_is_409(server: LiveServer):
    """A second request of a session whose first is still running gets 409 session_busy.

    The engine thread is held between steps while the first request is in it, so the first
    cannot finish before the second arrives, however loaded the machine is.
    """
    body = {"model": MODEL, "prompt": "agent ", "max_tokens": 80, "ignore_eos": True,
            "session_id": "busy-1"}
    held, release = threading.Event(), threading.Event()

    def hold_while_running(engine) -> None:
        if any(r.session_id == "anon/busy-1" for r in engine.requests.values()):
            held.set()
            release.wait(30)

    def in_flight() -> bool:
        ctx = server.app.state.server.serving().sessions.get("anon/busy-1")
        return ctx is not None and ctx.in_flight is not None

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        first = pool.submit(_post, server, "/v1/completions", json=body)
        try:
            deadline = time.monotonic() + 30
            while not (held.is_set() and in_flight()):
                assert time.monotonic() < deadline, "the first request never started"
                if not held.is_set():
                    server.app.state.engine.post(hold_while_running)
                held.wait(0.02)
            err = _error(_post(server, "/v1/completions", json={**body, "max_tokens": 1}), 409)
        finally:
            release.set()
        assert err["code"] == "session_busy"
        assert first.result().status_code == 200
    assert _post(server, "/v1/sessions/busy-1/end").status_code == 200
    server.wait_idle()


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {**CHAT, "seed": 2**70}, "seed"),
        ("/v1/chat/completions", {**CHAT, "presence_penalty": 0.5}, "presence_penalty"),
        ("/v1/chat/completions", {**CHAT, "frequency_penalty": -1}, "frequency_penalty"),
        ("/v1/chat/completions", {**CHAT, "logit_bias": {"5": 100}}, "logit_bias"),
        ("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}},
         "response_format"),
        ("/v1/chat/completions", {**CHAT, "tool_choice": 3}, "tool_choice"),
        ("/v1/chat/completions", {**CHAT, "tool_choice": "always"}, "tool_choice"),
        ("/v1/chat/completions", {**CHAT, "tool_choice": {"type": "function"}}, "tool_choice"),
        ("/v1/chat/completions", {**CHAT, "tool_choice": {"type": "function", "function":
                                                          {"name": 5}}}, "tool_choice"),
        ("/v1/chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
        ("/v1/chat/completions", {**CHAT, "stream_options": {"include_usage": True}},
         "stream_options"),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "stream": False,
                             "stream_options": {"include_usage": False}}, "stream_options"),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "suffix": "z"}, "suffix"),
        ("/v1/completions", {"model": MODEL, "prompt": "a", "best_of": 3}, "best_of"),
    ],
)
def test_values_the_engine_cannot_honour_are_400_not_ignored(server: LiveServer, path: str,
                                                              body: dict, param: str):
    err = _error(_post(server, path, json=body), 400)
    assert err["param"] == param and param in err["message"]


def test_those_fields_at_their_defaults_are_accepted(server: LiveServer):
    body = {**CHAT, "presence_penalty": 0, "frequency_penalty": 0.0, "logit_bias": {},
            "response_format": {"type": "text"}, "tool_choice": "auto", "seed": -(2**63),
            "top_logprobs": 0}
    assert _post(server, "/v1/chat/completions", json=body).status_code == 200
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1, "suffix": "", "best_of": 1}
    assert _post(server, "/v1/completions", json=body).status_code == 200
    server.wait_idle()


def test_tool_choice_is_accepted_unenforced_and_logged_once(tool_server: LiveServer, caplog,
                                                            warn_once_reset):
    """smolagents' ToolCallingAgent sends tool_choice "required"; it was served (the field
    was ignored, the agent parses calls from the text) until it became a 400. Every OpenAI
    form is accepted again, with one warning per distinct value that it is not enforced.
    (The tools need a template that renders them: test_protocol_surface.)"""
    server = tool_server
    tools = [{"type": "function", "function": {"name": "run_tests", "parameters": {}}}]
    named = {"type": "function", "function": {"name": "run_tests"}}
    allowed = {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [named]}}
    with caplog.at_level("WARNING", logger="kvsaga.serve"):
        for choice in ("required", named, "required", allowed, "auto", "none"):
            r = _post(server, "/v1/chat/completions",
                      json={**CHAT, "tools": tools, "tool_choice": choice})
            assert r.status_code == 200, r.text
    warned = [m for m in caplog.messages if "not enforced" in m]
    assert len(warned) == 3, warned  # required, the named tool, allowed_tools: once each
    server.wait_idle()


def test_session_end_names_a_bad_cache_salt_and_takes_ids_with_a_slash(server: LiveServer):
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1, "session_id": "team/task-1"}
    assert _post(server, "/v1/completions", json=body).status_code == 200
    for salt in (5, [1], ""):
        err = _error(_post(server, "/v1/sessions/team%2Ftask-1/end",
                           json={"cache_salt": salt}), 400)
        assert err["param"] == "cache_salt"
    assert _post(server, "/v1/sessions/team%2Ftask-1/end").json()["ended"] is True
    _error(_post(server, "/v1/sessions/team%2Ftask-1/end"), 404)
    server.wait_idle()


def test_an_assistant_turn_that_only_called_tools_is_served(tool_server: LiveServer):
    """OpenAI's reply that calls tools has content null; clients send it back as is. The
    template reads every message's content: it gets "" (it was a 422 from the template)."""
    server = tool_server
    call = {"id": "c1", "type": "function", "function": {"name": "run_tests", "arguments": "{}"}}
    messages = [{"role": "user", "content": "fix it"},
                {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "1 failed"}]
    r = _post(server, "/v1/chat/completions", json={**CHAT, "messages": messages})
    assert r.status_code == 200, r.text
    del messages[1]["content"]
    assert _post(server, "/v1/chat/completions",
                 json={**CHAT, "messages": messages}).status_code == 200
    messages[2] = {"role": "tool", "tool_call_id": "c1"}
    err = _error(_post(server, "/v1/chat/completions", json={**CHAT, "messages": messages}), 400)
    assert err["param"] == "messages.2.content" and "role 'tool'" in err["message"]
    server.wait_idle()


def test_kvsaga_hints_without_a_session_are_400_not_dropped(server: LiveServer):
    body = {**CHAT, "kvsaga": {"tool": "run_tests", "expected_s": 8}}
    err = _error(_post(server, "/v1/chat/completions", json=body), 400)
    assert err["param"] == "kvsaga" and "session_id" in err["message"]
    r = _post(server, "/v1/chat/completions", json=body, headers={"X-Session-ID": "hinted"})
    assert r.status_code == 200
    assert _post(server, "/v1/sessions/hinted/end").status_code == 200
    for empty in ({}, {"last_step": False}):  # a hint that carries nothing needs no session
        assert _post(server, "/v1/chat/completions",
                     json={**CHAT, "kvsaga": empty}).status_code == 200
    server.wait_idle()


def test_a_session_header_over_the_field_limit_is_400(server: LiveServer):
    r = _post(server, "/v1/chat/completions", json=CHAT, headers={"X-Session-ID": "s" * 257})
    assert _error(r, 400)["param"] == "X-Session-ID"
    # The body's session_id wins over the header, which is then ignored: not refused.
    r = _post(server, "/v1/chat/completions", json={**CHAT, "session_id": "body-wins"},
              headers={"X-Session-ID": "s" * 257})
    assert r.status_code == 200 and r.headers["x-session-id"] == "body-wins"
    assert _post(server, "/v1/sessions/body-wins/end").status_code == 200
    server.wait_idle()


def test_a_refused_request_posts_no_resume_hint(server: LiveServer,
                                                monkeypatch: pytest.MonkeyPatch):
    """The resume hint starts an offload reload: only a request that is queued gives it,
    not one refused by the server's checks (max_tokens, stop, ...: 400) nor by the engine's
    (a token id outside the vocabulary: 422)."""
    from kvsaga.engine.engine import LLMEngine
    from kvsaga.session import SessionState

    hinted: list[str] = []
    states: list[SessionState] = []
    real = LLMEngine.resume_hint

    def spy(self, session_id: str) -> int:
        hinted.append(session_id)
        states.append(self.manager.sessions[session_id].state)
        return real(self, session_id)

    monkeypatch.setattr(LLMEngine, "resume_hint", spy)
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1, "session_id": "refused-1"}
    assert _post(server, "/v1/completions", json=body).status_code == 200
    assert not hinted  # a new session has nothing to reload
    for bad in ({"max_tokens": 10**9}, {"stop": [""]}):
        _error(_post(server, "/v1/completions", json={**body, **bad}), 400)
    _error(_post(server, "/v1/completions", json={**body, "prompt": [5, 10**7]}), 422)
    assert not hinted
    assert _post(server, "/v1/completions", json=body).status_code == 200
    assert len(hinted) == 1 and hinted[0].endswith("refused-1")  # the accepted step only
    # Given with the add, before the step began: it can still start the reload.
    assert states == [SessionState.PAUSED]
    assert _post(server, "/v1/sessions/refused-1/end").status_code == 200
    server.wait_idle()


def test_a_failing_resume_hint_leaves_the_step_queued(server: LiveServer,
                                                      monkeypatch: pytest.MonkeyPatch):
    """The hint runs in the step's add command: a failure of it is logged, and the step it
    followed still runs and answers."""
    from kvsaga.engine.engine import LLMEngine

    def broken(self, session_id: str) -> int:
        raise RuntimeError("hint failed")

    monkeypatch.setattr(LLMEngine, "resume_hint", broken)
    body = {"model": MODEL, "prompt": "a", "max_tokens": 2, "session_id": "hint-fails"}
    for _ in range(2):  # the second step is the one hinted
        r = _post(server, "/v1/completions", json=body)
        assert r.status_code == 200, r.text
    assert _post(server, "/v1/sessions/hint-fails/end").status_code == 200
    server.wait_idle()


def test_an_internal_error_is_500_json_and_keeps_the_connection(
        server: LiveServer, monkeypatch: pytest.MonkeyPatch):
    """Starlette's last-resort handler answers, then re-raises, and uvicorn closes the
    connection: a keep-alive client's next request would fail. Ours answers and goes on."""
    state = server.app.state.server

    def crash(name: str) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(state, "check_model", crash)
    body = json.dumps(CHAT).encode()
    request = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
               f"application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        reader = sock.makefile("rb")
        sock.sendall(request)
        status, payload = _read_response(reader)
        assert status == 500 and json.loads(payload)["error"]["message"] == (
            "internal error: RuntimeError")
        monkeypatch.undo()
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_response(reader)[0] == 200  # the same connection still answers
    server.wait_idle()


def _read_response(reader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    line = reader.readline()
    assert line, "the server closed the connection"
    status = int(line.split()[1])
    length = 0
    while (header := reader.readline()) not in (b"\r\n", b""):
        name, _, value = header.decode().partition(":")
        if name.lower() == "content-length":
            length = int(value)
    return status, reader.read(length)
