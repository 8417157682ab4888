"""Session 51 mutation testing of kvsaga-serve (findings/s51/mutserve.md): behaviour of the
live server that the suite did not pin down, each test killing a mutant that lived."""

from __future__ import annotations

import json

import httpx

from .conftest import MODEL, LiveServer

# ignore_eos: the assertions count tokens, and a sampled end of sequence would end early.
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2,
        "ignore_eos": True}
TEXT = {"model": MODEL, "prompt": "hi", "max_tokens": 2, "ignore_eos": True}


def _post(server: LiveServer, path: str, **kwargs) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", timeout=60, **kwargs)


def _events(r: httpx.Response) -> list[dict]:
    lines = [x for x in r.text.splitlines() if x.startswith("data: ")]
    assert lines[-1] == "data: [DONE]", lines[-3:]
    return [json.loads(x.removeprefix("data: ")) for x in lines[:-1]]


def test_a_session_header_of_exactly_the_limit_is_taken(server: LiveServer):
    """Killed mutant: `len(header_sid) > MAX_SESSION_ID` -> `>=` (the suite tried 257
    characters only)."""
    sid = "h" * 256
    r = _post(server, "/v1/chat/completions", json=CHAT, headers={"X-Session-ID": sid})
    assert r.status_code == 200, r.text
    assert r.headers["x-session-id"] == sid
    assert _post(server, f"/v1/sessions/{sid}/end").status_code == 200
    server.wait_idle()


def test_echo_of_a_token_id_prompt_is_its_decoded_text(server: LiveServer):
    """Killed mutant: echo taken from the prompt's text only (a prompt sent as token ids
    echoed nothing)."""
    text = "echo these ids"
    ids = server.app.state.server.serving().sessions.tokenizer.encode(text)
    plain = _post(server, "/v1/completions", json={**TEXT, "prompt": text, "temperature": 0})
    by_ids = _post(server, "/v1/completions",
                   json={**TEXT, "prompt": ids, "temperature": 0, "echo": True})
    assert plain.status_code == 200 and by_ids.status_code == 200, by_ids.text
    decoded = server.app.state.server.serving().sessions.tokenizer.decode(
        ids, skip_special_tokens=False)
    assert decoded.strip() and text in decoded
    assert by_ids.json()["choices"][0]["text"] == decoded + plain.json()["choices"][0]["text"]
    server.wait_idle()


def test_stream_options_without_include_usage_sends_no_usage_chunk(server: LiveServer):
    """Killed mutant: `include_usage` read as `bool(stream_options)` (any stream_options
    object, `{"include_usage": false}` included, added the usage chunk)."""
    for path, body in (("/v1/chat/completions", CHAT), ("/v1/completions", TEXT)):
        for opts, usage in (({"include_usage": False}, False), ({}, False),
                            ({"include_usage": True}, True)):
            r = _post(server, path, json={**body, "stream": True, "stream_options": opts})
            assert r.status_code == 200, r.text
            chunks = _events(r)
            with_usage = [c for c in chunks if c.get("usage")]
            assert bool(with_usage) == usage, (path, opts, chunks[-1])
            if usage:
                assert with_usage[-1]["usage"]["completion_tokens"] == 2
                assert with_usage[-1]["choices"] == []
    server.wait_idle()
