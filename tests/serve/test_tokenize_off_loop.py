"""A long prompt is tokenized on a worker thread, not on the server's event loop (where no
other request's stream is written meanwhile), with the same ids; a short one on the loop.
A session's known ids are reused either way."""

from __future__ import annotations

import threading

import httpx
import pytest

from kvsaga.serve import serving
from kvsaga.serve.sessions import SessionRegistry

from .conftest import MODEL, LiveServer


@pytest.fixture
def encodes(monkeypatch):
    """Every `SessionRegistry.encode` call's (thread, text length, ids, release_gil)."""
    seen = []
    original = SessionRegistry.encode

    def spy(self, ctx, text, special, release_gil=False):
        ids = original(self, ctx, text, special, release_gil)
        if release_gil:  # the same ids as the GIL-holding `encode`
            assert ids == original(self, ctx, text, special)
        seen.append((threading.current_thread(), len(text), ids, release_gil))
        return ids
    monkeypatch.setattr(SessionRegistry, "encode", spy)
    return seen


def test_long_prompts_are_tokenized_off_the_event_loop(server: LiveServer, encodes,
                                                       monkeypatch):
    monkeypatch.setattr(serving, "TOKENIZE_OFF_LOOP_CHARS", 64)
    short = httpx.post(f"{server.url}/v1/completions", timeout=30,
                       json={"model": MODEL, "prompt": "hello there", "max_tokens": 1})
    assert short.status_code == 200, short.text
    # Long for the lowered threshold, within the tiny model's 256-token context.
    text = "tokens on a thread " * 6
    long = httpx.post(f"{server.url}/v1/completions", timeout=30,
                      json={"model": MODEL, "prompt": text, "max_tokens": 1})
    assert long.status_code == 200, long.text
    (t_short, n_short, _, gil_short), (t_long, n_long, ids, gil_long) = encodes
    assert n_short < 64 <= n_long == len(text)
    assert t_short is server.thread  # the loop's own thread
    assert t_long is not server.thread
    # off the loop through `encode_batch`, which lets the loop run (bench/tokenize_off_loop.py)
    assert (gil_short, gil_long) == (False, True)
    assert long.json()["usage"]["prompt_tokens"] == len(ids)


def test_a_sessions_known_ids_are_reused_off_the_loop(server: LiveServer, encodes,
                                                      monkeypatch):
    """A session's second step, long enough to go to a thread, extends its first step's
    exact ids (the prefix is not tokenized again)."""
    monkeypatch.setattr(serving, "TOKENIZE_OFF_LOOP_CHARS", 64)
    first = "step one of a session whose every prompt goes to a worker thread, twice over "
    body = {"model": MODEL, "max_tokens": 2, "session_id": "off-loop-1",
            "kvsaga": {"tool": "t", "expected_s": 0.1}}
    r1 = httpx.post(f"{server.url}/v1/completions", timeout=30, json={**body, "prompt": first})
    assert r1.status_code == 200, r1.text
    second = first + r1.json()["choices"][0]["text"] + " and more"
    r2 = httpx.post(f"{server.url}/v1/completions", timeout=30,
                    json={**body, "prompt": second, "kvsaga": {"last_step": True}})
    assert r2.status_code == 200, r2.text
    (_, _, ids1, _), (thread2, _, ids2, _) = encodes
    assert thread2 is not server.thread
    assert ids2[:len(ids1)] == ids1
