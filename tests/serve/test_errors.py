"""Every error class: OpenAI error JSON, the right status, and no block leaked afterwards."""

from __future__ import annotations

import concurrent.futures
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
        ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
         "messages.content"),
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


def test_not_found(server: LiveServer):
    err = _error(_post(server, "/v1/chat/completions", json={**CHAT, "model": "gpt-4"}), 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    _error(_post(server, "/v1/sessions/never-seen/end"), 404)
    _error(httpx.get(f"{server.url}/v1/nothing-here"), 404)
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
    with LiveServer(app) as s:
        assert httpx.get(f"{s.url}/health").status_code == 503
        err = _error(_post(s, "/v1/chat/completions", json=CHAT), 503)
        assert err["code"] == "model_loading"
        release.set()
        deadline = time.monotonic() + 20
        while httpx.get(f"{s.url}/health").status_code != 200:
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
