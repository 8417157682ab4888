"""Session 50 serve review (findings/s50/serve.md, item 2): an unknown request field whose
name matches a field or method of the other endpoint's request class was read as that field
(pydantic keeps extras as attributes), giving a 500, an error naming the wrong field and
value, and a refusal blamed on a field the server calls ignored."""

from __future__ import annotations

import httpx

from .conftest import MODEL, LiveServer

# ignore_eos: the assertions count tokens, and a sampled end of sequence would end early.
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "ignore_eos": True}
TEXT = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "ignore_eos": True}


def _post(server: LiveServer, body: dict, path: str) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def test_a_stray_unenforced_tool_choice_field_is_ignored_not_called(server: LiveServer):
    """It was called as chat's method: `TypeError: 'int' object is not callable`, a 500."""
    for value in (1, "x"):
        r = _post(server, {**TEXT, "unenforced_tool_choice": value}, "/v1/completions")
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["completion_tokens"] == 2
    server.wait_idle()


def test_a_too_large_max_tokens_is_named_not_a_stray_max_completion_tokens(
        server: LiveServer):
    """The error named `max_completion_tokens` (an ignored extra on completions) with the
    value of `max_tokens`."""
    body = {**TEXT, "max_tokens": 100_000, "max_completion_tokens": 5}
    r = _post(server, body, "/v1/completions")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "max_tokens", err
    assert err["message"].startswith("max_tokens=100000"), err
    assert "max_completion_tokens" not in err["message"], err


def test_a_too_long_prompt_is_named_prompt_not_a_stray_messages(server: LiveServer):
    """A completions body carrying an extra `messages` had `param: messages`."""
    body = {**TEXT, "prompt": "hi " * 400, "max_tokens": None, "messages": "stray"}
    r = _post(server, body, "/v1/completions")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded", err
    assert err["param"] == "prompt", err


def test_chat_echo_is_ignored_as_logged_not_refused_with_logprobs(server: LiveServer):
    """`echo` is not a chat field (logged as accepted and ignored), yet with logprobs it drew
    400 "echo with logprobs is not supported", param echo."""
    r = _post(server, {**CHAT, "echo": True, "logprobs": True}, "/v1/chat/completions")
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert len(choice["logprobs"]["content"]) == 2, choice
    # Completions' own echo is still refused with logprobs.
    r = _post(server, {**TEXT, "echo": True, "logprobs": 1}, "/v1/completions")
    assert r.status_code == 400 and r.json()["error"]["param"] == "echo", r.text
    server.wait_idle()
