"""Session 51 mutation testing of kvsaga-serve (findings/s51/mutserve.md): the ASGI guards
(`kvsaga.serve.guard`) driven directly, each test killing a mutant that the suite let live:
the body limit at its boundary and over chunked bodies, the methods it covers, a client
that leaves mid-body, the bearer scheme's case, the 401's wording and code, and the 500 of
`ContainErrors`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kvsaga.serve.guard import ContainErrors, Guard
from kvsaga.serve.settings import ServerSettings


class Echo:
    """An inner app that answers 200 with the body it read and the API key the Guard set."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        self.calls += 1
        message = await receive()
        body = {"body": message["body"].decode(),
                "api_key": scope.get("state", {}).get("api_key")}
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": json.dumps(body).encode()})


def _call(app: Any, chunks: list[bytes], method: str = "POST", path: str = "/v1/completions",
          headers: list[tuple[bytes, bytes]] | None = None, declare: bool = True,
          disconnect: bool = False) -> tuple[int | None, dict | None]:
    """(status, JSON body) of one request whose body arrives as `chunks` (`more_body` on all
    but the last); `declare` sends content-length; `disconnect` ends the messages with the
    client's disconnect instead of the last chunk."""
    hdrs = list(headers or [])
    if declare:
        hdrs.append((b"content-length", str(sum(map(len, chunks))).encode()))
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
                for i, c in enumerate(chunks)]
    if disconnect:
        messages[-1] = {"type": "http.disconnect"}
    sent: list[dict] = []

    async def receive() -> dict:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": hdrs}
    asyncio.run(app(scope, receive, send))
    if not sent:
        return None, None
    return sent[0]["status"], json.loads(b"".join(m.get("body", b"") for m in sent[1:]))


def _guard(**kwargs: Any) -> tuple[Guard, Echo]:
    inner = Echo()
    return Guard(inner, ServerSettings(**kwargs)), inner


LIMIT = 1024  # the smallest --max-body-bytes
FULL = b"x" * LIMIT


@pytest.mark.parametrize("declare", [True, False])
def test_a_body_of_exactly_the_limit_passes_and_one_byte_more_is_413(declare: bool):
    """Killed mutants: `int(declared) > limit` and `total > limit` -> `>=` (a body of exactly
    --max-body-bytes was refused), and the 413 made a 400."""
    guard, inner = _guard(max_body_bytes=LIMIT)
    assert _call(guard, [FULL], declare=declare) == (200, {"body": FULL.decode(),
                                                           "api_key": None})
    status, body = _call(guard, [FULL + b"y"], declare=declare)
    assert status == 413, body
    assert body["error"]["code"] == "request_too_large"
    assert body["error"]["type"] == "invalid_request_error"
    assert f"limit of {LIMIT} bytes" in body["error"]["message"]
    assert inner.calls == 1


def test_a_chunked_body_reaches_the_app_whole_and_is_counted_whole():
    """Killed mutant: the read loop stopping after the first message (`more_body` ignored):
    the app got the first chunk only."""
    guard, _ = _guard(max_body_bytes=LIMIT)
    parts = [FULL[:100], FULL[100:101], FULL[101:]]
    assert _call(guard, parts, declare=False)[1]["body"] == FULL.decode()
    assert _call(guard, [*parts, b"y"], declare=False)[0] == 413


@pytest.mark.parametrize("method", ["PUT", "PATCH"])
def test_the_body_limit_covers_put_and_patch(method: str):
    """Killed mutant: the limit applied to POST only."""
    guard, inner = _guard(max_body_bytes=LIMIT)
    assert _call(guard, [FULL + b"y"], method=method)[0] == 413
    assert _call(guard, [FULL + b"y"], method=method, declare=False)[0] == 413
    assert inner.calls == 0


def test_a_client_gone_mid_body_gets_nothing_and_the_app_is_not_called():
    """Killed mutant: the disconnect read as an empty last chunk (the app ran on half a
    body)."""
    guard, inner = _guard(max_body_bytes=LIMIT)
    assert _call(guard, [b'{"a": ', b"1}"], declare=False, disconnect=True) == (None, None)
    assert inner.calls == 0


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_the_bearer_scheme_is_case_insensitive_and_the_key_reaches_the_app(scheme: str):
    """Killed mutants: the scheme compared case-sensitively (RFC 7235: it is not); the
    matched key not stored in the scope (the tenant salt reads it)."""
    guard, _ = _guard(api_keys=("key-a", "key-b"))
    auth = [(b"authorization", f"{scheme} key-b".encode())]
    assert _call(guard, [b"{}"], headers=auth) == (200, {"body": "{}", "api_key": "key-b"})


def test_a_missing_key_and_a_wrong_key_are_told_apart():
    """Killed mutants: both called "invalid API key"; the 401's code dropped."""
    guard, inner = _guard(api_keys=("key-a",))
    for headers, why in (([], "missing API key"),
                         ([(b"authorization", b"Bearer nope")], "invalid API key"),
                         ([(b"authorization", b"Basic key-a")], "missing API key")):
        status, body = _call(guard, [b"{}"], headers=headers)
        assert status == 401, body
        err = body["error"]
        assert err["message"].startswith(why + ":"), err
        assert (err["code"], err["type"]) == ("invalid_api_key", "authentication_error")
    assert inner.calls == 0


def test_contain_errors_answers_500_before_a_response_and_reraises_after():
    """Killed mutant: the 500 sent after a response had started (a second start message on
    a half-sent response) instead of re-raising."""
    async def fails_early(scope: dict, receive: Any, send: Any) -> None:
        raise KeyError("x")

    async def fails_late(scope: dict, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        raise KeyError("x")

    status, body = _call(ContainErrors(fails_early), [b""])
    assert status == 500
    assert body["error"] == {"message": "internal error: KeyError", "type": "server_error",
                             "param": None, "code": None}
    with pytest.raises(KeyError):
        _call(ContainErrors(fails_late), [b""])
