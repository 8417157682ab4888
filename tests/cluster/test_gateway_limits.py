"""The Ray gateway applies one node's request limits and answers as one node does (review
repros body_limit, salt_crash): no cluster needed, the engine handle is a fake."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("ray.serve")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from kvsaga.integrations.ray.deployment import GatewayCore  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402


class FakeHandle:
    """The engine deployment's handle: records each call, answers 200."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def options(self, **kwargs):
        return self

    def remote(self, call: dict):
        self.calls.append(call)

        class Stream:
            async def __anext__(self):
                return {"type": "http.response.start", "status": 200, "headers": []}

        return Stream()


def gateway(settings: ServerSettings) -> tuple[TestClient, FakeHandle]:
    handle = FakeHandle()
    core = GatewayCore(handle, settings)
    app = FastAPI()

    @app.post("/{path:path}")
    async def forward(request: Request):
        return await core.forward(request)

    return TestClient(app, raise_server_exceptions=False), handle


def test_a_body_over_the_limit_gets_413_at_the_gateway():
    """The gateway buffered, parsed and shipped through Ray a body of any size; only the
    replica applied `max_body_bytes`."""
    client, handle = gateway(ServerSettings(model="x", max_body_bytes=2048))
    body = json.dumps({"model": "m", "session_id": "s", "prompt": "x" * 5000})
    r = client.post("/v1/completions", content=body)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert handle.calls == []

    def chunks():  # no content-length: chunked encoding
        for _ in range(10):
            yield b"x" * 500

    r = client.post("/v1/completions", content=chunks())
    assert r.status_code == 413 and handle.calls == []
    small = json.dumps({"model": "m", "session_id": "s", "prompt": "hi"})
    assert client.post("/v1/completions", content=small).status_code == 200
    assert handle.calls[0]["body"] == small.encode()
