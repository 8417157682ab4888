"""Session 56 review "oai" (findings/s56/oai.md, oaifix.md): kvsaga-serve's max_tokens
against vLLM 0.32, the server it replaces.

- A `max_tokens` above the room the prompt leaves in the context was a 400
  `context_length_exceeded`; vLLM cuts it to the room and answers 200 with finish_reason
  "length" (an agent sending a fixed max_tokens broke once its conversation grew). A
  max_tokens above the whole context, and a prompt that fills the context, stay 400s.
- Without max_tokens both endpoints generated up to 256 tokens; vLLM gives /v1/completions
  16 and chat the model's max_new_tokens, else the room left.

The tiny model's context is 256 tokens. `ignore_eos` everywhere: the assertions count
tokens, and a sampled end of sequence would end an answer early."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from kvsaga.serve.app import build_app

from .conftest import MODEL, LiveServer, make_engine, settings, tiny_copy

CTX = 256
MSGS = [{"role": "user", "content": "hi"}]


def _post(server: LiveServer, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=120)


def _ok(r: httpx.Response) -> dict:
    assert r.status_code == 200, r.text
    return r.json()


def _err(r: httpx.Response) -> dict:
    assert r.status_code == 400, r.text
    return r.json()["error"]


def _ids(n: int) -> list[int]:
    return [5 + i % 50 for i in range(n)]


# -- more than the room left: cut to fit, as vLLM -------------------------------------------


def test_completions_max_tokens_past_the_room_is_cut_to_fit(server: LiveServer):
    """Was 400 "max_tokens=10 plus the prompt's 250 tokens exceeds the context"."""
    out = _ok(_post(server, "/v1/completions",
                    {"model": MODEL, "prompt": _ids(250), "max_tokens": 10, "ignore_eos": True}))
    assert out["choices"][0]["finish_reason"] == "length", out
    assert out["usage"]["prompt_tokens"] == 250, out
    assert out["usage"]["completion_tokens"] == CTX - 250, out
    assert out["usage"]["total_tokens"] == CTX, out
    server.wait_idle()


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_chat_max_tokens_past_the_room_is_cut_to_fit(server: LiveServer, field: str):
    """An agent's fixed max_tokens (the whole context here) once the conversation has grown."""
    out = _ok(_post(server, "/v1/chat/completions",
                    {"model": MODEL, "messages": MSGS, field: CTX, "ignore_eos": True}))
    usage = out["usage"]
    assert out["choices"][0]["finish_reason"] == "length", out
    assert usage["completion_tokens"] == CTX - usage["prompt_tokens"], usage
    assert usage["total_tokens"] == CTX, usage
    server.wait_idle()


def test_a_streamed_request_past_the_room_is_cut_to_fit(server: LiveServer):
    """Streamed: the refusal came as a JSON 400 before the stream; now the stream runs to
    the context and its last choice says "length", with the usage chunk right."""
    stream = server.client().completions.create(
        model=MODEL, prompt=_ids(248), max_tokens=100, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and set(finishes[:-1]) <= {None}, finishes
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None, chunks[-1]
    assert (usage.prompt_tokens, usage.completion_tokens) == (248, CTX - 248), usage
    server.wait_idle()


# -- what stays a 400 ------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/completions", {"prompt": "hi"}, "max_tokens"),
    ("/v1/chat/completions", {"messages": MSGS}, "max_tokens"),
    ("/v1/chat/completions", {"messages": MSGS}, "max_completion_tokens")])
def test_max_tokens_above_the_whole_context_is_refused(server: LiveServer, path, body, field):
    """As vLLM ("max_tokens=N cannot be greater than max_model_len"): no prompt could make
    room for it, so it is a client's mistake, not a long conversation."""
    err = _err(_post(server, path, {"model": MODEL, **body, field: CTX + 1}))
    assert (err["param"], err["code"]) == (field, "context_length_exceeded"), err
    assert err["message"].startswith(f"{field}={CTX + 1} "), err
    assert f"context of {CTX} tokens" in err["message"], err


@pytest.mark.parametrize("n", [CTX, CTX + 3])
def test_a_prompt_filling_the_context_is_still_refused(server: LiveServer, n: int):
    """vLLM refuses both: a prompt over the context, and one that fills it (max_tokens 0)."""
    err = _err(_post(server, "/v1/completions",
                     {"model": MODEL, "prompt": _ids(n), "max_tokens": 4}))
    assert (err["param"], err["code"]) == ("prompt", "context_length_exceeded"), err


def test_the_servers_own_limit_still_refuses(tiny_dir: Path):
    """--max-tokens-limit is kvsaga's explicit cap: over it is refused, not cut."""
    app = build_app(make_engine(tiny_dir), settings(max_tokens_limit=8))
    with LiveServer(app) as s:
        err = _err(_post(s, "/v1/completions", {"model": MODEL, "prompt": "hi",
                                                 "max_tokens": 9}))
        assert err["param"] == "max_tokens" and "limit of 8" in err["message"], err
        # An unset max_tokens is bounded by the limit too (16 would be the default).
        out = _ok(_post(s, "/v1/completions",
                        {"model": MODEL, "prompt": "hi", "ignore_eos": True}))
        assert out["usage"]["completion_tokens"] == 8, out
        s.wait_idle()


# -- defaults, as vLLM ------------------------------------------------------------------------


def test_completions_default_to_16_tokens(server: LiveServer):
    """Were 256 (here: the room, 256 minus the prompt)."""
    for body in ({}, {"max_tokens": None}):  # vLLM reads an explicit null as unset too
        out = _ok(_post(server, "/v1/completions",
                        {"model": MODEL, "prompt": "hi", "ignore_eos": True, **body}))
        assert out["usage"]["completion_tokens"] == 16, out
        assert out["choices"][0]["finish_reason"] == "length", out
    server.wait_idle()


@pytest.fixture(scope="module")
def long_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with a context of LONG_CTX tokens (its weights do not depend on it)."""
    out = tiny_copy(tiny_dir, tmp_path_factory, "serve-tiny-long")
    cfg = json.loads((out / "config.json").read_text())
    cfg["max_position_embeddings"] = LONG_CTX
    (out / "config.json").write_text(json.dumps(cfg))
    return out


LONG_CTX = 320  # above the old 256-token default, so a return to it fails


def test_chat_defaults_to_the_room_left(long_dir: Path):
    """Chat without max_tokens runs to the context (or an end of sequence), as on vLLM and
    OpenAI; it was cut at 256 tokens (review s56 diffgen LOW-4: on the 256-token model the
    old default reached the context too, so the context here is longer)."""
    app = build_app(make_engine(long_dir), settings())
    with LiveServer(app) as s:
        assert s.app.state.server.serving().max_model_len == LONG_CTX
        out = _ok(_post(s, "/v1/chat/completions",
                        {"model": MODEL, "messages": MSGS, "ignore_eos": True}))
        usage = out["usage"]
        assert usage["total_tokens"] == LONG_CTX, usage
        assert usage["completion_tokens"] > 256, usage
        assert out["choices"][0]["finish_reason"] == "length", out
        s.wait_idle()


@pytest.fixture(scope="module")
def gen_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model with max_new_tokens 7 in its generation_config.json."""
    out = tiny_copy(tiny_dir, tmp_path_factory, "serve-tiny-gen")
    (out / "generation_config.json").write_text(json.dumps({"max_new_tokens": 7}))
    return out


def test_chat_defaults_to_the_models_max_new_tokens_and_an_override_wins(gen_dir: Path):
    """vLLM's chat default is the model's max_new_tokens; completions keep 16.
    `--default-max-tokens` (kvsaga's option) sets both."""
    chat = {"model": MODEL, "messages": MSGS, "ignore_eos": True}
    text = {"model": MODEL, "prompt": "hi", "ignore_eos": True}
    app = build_app(make_engine(gen_dir), settings())
    with LiveServer(app) as s:
        assert _ok(_post(s, "/v1/chat/completions", chat))["usage"]["completion_tokens"] == 7
        assert _ok(_post(s, "/v1/completions", text))["usage"]["completion_tokens"] == 16
        s.wait_idle()
    app = build_app(make_engine(gen_dir), settings(default_max_tokens=5))
    with LiveServer(app) as s:
        assert _ok(_post(s, "/v1/chat/completions", chat))["usage"]["completion_tokens"] == 5
        assert _ok(_post(s, "/v1/completions", text))["usage"]["completion_tokens"] == 5
        # An explicit max_tokens wins over every default.
        out = _ok(_post(s, "/v1/completions", {**text, "max_tokens": 3}))
        assert out["usage"]["completion_tokens"] == 3
        s.wait_idle()
