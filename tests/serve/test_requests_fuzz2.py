"""kvsaga-serve on malformed requests (fuzz2 lane): a valid chat or text completion body with
one field replaced by an arbitrary JSON value is served (200) or refused with OpenAI's error
JSON and a 4xx status, never a 500 or a hung request, and no block is left referenced."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import MODEL, LiveServer

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
TEXT = {"model": MODEL, "prompt": "hi", "max_tokens": 2}

_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=3),
    max_leaves=6)
_FIELDS = ["model", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k",
           "n", "stop", "seed", "stream", "stream_options", "ignore_eos", "user",
           "session_id", "prompt_cache_key", "cache_salt", "kvsaga", "presence_penalty",
           "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "tools",
           "tool_choice", "response_format", "echo", "suffix", "best_of"]
_HINT = st.dictionaries(st.sampled_from(["tool", "expected_s", "last_step", "workflow", "x"]),
                        _VALUE, max_size=3)
_MESSAGE = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool"]), _VALUE)},
    optional={"content": _VALUE, "tool_calls": _VALUE, "name": _VALUE})


def _check(r: httpx.Response) -> None:
    assert r.status_code == 200 or 400 <= r.status_code < 500 and r.status_code != 429, (
        r.status_code, r.text)
    if r.status_code != 200:
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]


@settings(max_examples=120, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chat=st.booleans(), field=st.sampled_from(_FIELDS),
       value=st.one_of(_VALUE, _HINT), session=st.booleans())
def test_one_field_of_any_value(server: LiveServer, chat, field, value, session):
    body = dict(CHAT if chat else TEXT)
    if session:
        body["session_id"] = "fuzz2-s"
    body[field] = value
    if body.get("stream") is True:
        body["max_tokens"] = 2
    path = "/v1/chat/completions" if chat else "/v1/completions"
    _check(httpx.post(f"{server.url}{path}", json=body, timeout=60))
    if session:
        httpx.post(f"{server.url}/v1/sessions/fuzz2-s/end", timeout=60)
    server.wait_idle()  # no block left referenced, the manager's books intact


@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messages=st.one_of(_VALUE, st.lists(_MESSAGE, min_size=1, max_size=3)))
def test_any_messages(server: LiveServer, messages):
    _check(httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, "messages": messages},
                      timeout=60))
    server.wait_idle()


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.one_of(_VALUE, st.lists(st.integers(-5, 2**40), max_size=4),
                        st.lists(st.lists(st.integers(-5, 300), max_size=3), max_size=2)))
def test_any_prompt(server: LiveServer, prompt):
    _check(httpx.post(f"{server.url}/v1/completions", json={**TEXT, "prompt": prompt},
                      timeout=60))
    server.wait_idle()


@pytest.mark.parametrize("extra, param", [
    ({"temperature": True}, "temperature"), ({"top_p": True}, "top_p"),
    ({"presence_penalty": True}, "presence_penalty"),
    ({"logit_bias": {"5": True}}, "logit_bias.5"),
    ({"session_id": "b", "kvsaga": {"expected_s": True}}, "kvsaga.expected_s"),
])
def test_a_boolean_for_a_number_is_400(server: LiveServer, extra, param):
    # pydantic's lax mode read `true` as 1.0: a temperature of 1 from a typo.
    r = httpx.post(f"{server.url}/v1/chat/completions", json={**CHAT, **extra}, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and "got a boolean" in err["message"]


def _raw(server: LiveServer, path: str, body: str) -> httpx.Response:
    """POST a JSON text as is (json= would refuse a lone surrogate escape)."""
    return httpx.post(f"{server.url}{path}", content=body.encode(), timeout=60,
                      headers={"content-type": "application/json"})


@pytest.mark.parametrize("field, sid", [
    ("session_id", "日本"), ("session_id", "€"), ("session_id", "a\nb"),
    ("session_id", "a\r\nX-Evil: 1"),
])
@pytest.mark.parametrize("stream", [False, True])
def test_a_session_id_the_header_cannot_echo_is_400_before_anything_runs(
        server: LiveServer, field, sid, stream):
    # Was a 500 (UnicodeEncodeError building the X-Session-ID header, after the step ran
    # and the session was recorded) or a connection closed with no response (control
    # characters).
    body = {**CHAT, field: sid, "stream": stream}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == field and "X-Session-ID" in err["message"]
    assert server.call(lambda e: len(e.manager.sessions)) == 0  # nothing was opened
    # Latin-1 text is echoed as it was, and a prompt_cache_key (never an id) is fine.
    ok = {**CHAT, "session_id": "café", "prompt_cache_key": "日本"}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=ok, timeout=60)
    assert r.status_code == 200 and r.headers["x-session-id"].encode("latin-1") == b"caf\xe9"
    assert httpx.post(f"{server.url}/v1/sessions/caf%C3%A9/end", timeout=60).status_code == 200


def test_a_lone_surrogate_in_the_prompt_is_400(server: LiveServer):
    # JSON may escape a lone UTF-16 surrogate; the tokenizer raised TypeError on it (a 500).
    cases = [("/v1/chat/completions", '"messages": [{"role": "user", "content": "hi \\ud800"}]',
              "messages"),
             ("/v1/chat/completions", '"messages": [{"role": "u\\udfff", "content": "hi"}]',
              "messages"),
             ("/v1/completions", '"prompt": "hi \\udc00"', "prompt")]
    for path, part, param in cases:
        r = _raw(server, path, '{"model": "' + MODEL + '", "max_tokens": 2, ' + part + "}")
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and "lone surrogate" in err["message"]


def test_session_end_refuses_a_surrogate_salt_and_a_too_deep_body(server: LiveServer):
    r = _raw(server, "/v1/sessions/x/end", '{"cache_salt": "\\ud800"}')
    assert r.status_code == 400 and r.json()["error"]["param"] == "cache_salt", r.text
    r = _raw(server, "/v1/sessions/x/end", "[" * 100_000 + "]" * 100_000)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"], r.text


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(field=st.sampled_from(["session_id", "prompt_cache_key", "cache_salt"]),
       value=st.text(max_size=4), stream=st.booleans())
def test_any_session_field_text(server: LiveServer, field, value, stream):
    body = {**CHAT, field: value, "stream": stream}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60)
    _check(r)
    if r.status_code == 200 and field == "session_id" and value not in ("", ".", ".."):
        # (HTTP drops whitespace around a header value: the echo is the id stripped)
        assert r.headers["x-session-id"].encode("latin-1") == value.strip(" \t").encode(
            "latin-1")
        end = httpx.post(f"{server.url}/v1/sessions/{quote(value, safe='')}/end", timeout=60)
        assert end.status_code == 200, end.text


@pytest.fixture(autouse=True)
def _idle_after(server: LiveServer):
    yield
    server.wait_idle()
