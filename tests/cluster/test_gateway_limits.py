"""The Ray gateway applies one node's request limits and /metrics key and answers as one
node does, and its /metrics does not hang on one replica (review repros body_limit,
metrics_auth, metrics_hang, salt_crash): no cluster needed, the engine handle is a fake."""

from __future__ import annotations

import asyncio
import json
import logging
from unittest import mock

import pytest

pytest.importorskip("ray.serve")

from fastapi import FastAPI, Request  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from kvsaga.integrations.ray import deployment  # noqa: E402
from kvsaga.integrations.ray import gateway as gw  # noqa: E402
from kvsaga.integrations.ray.gateway import GatewayCore  # noqa: E402
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


class MetricsHandle:
    """The handle's `metrics` calls: replica "stuck" never answers, "broken" fails."""

    def options(self, **kwargs):
        return self

    async def _text(self, rid: str) -> str:
        if rid == "stuck":
            await asyncio.sleep(3600)
        if rid == "broken":
            raise RuntimeError("actor died")
        return "# HELP kvsaga:x x\n# TYPE kvsaga:x gauge\nkvsaga:x 1\n"

    def remote(self, call: dict):
        return self._text(call["pin"])


def metrics_of(settings: ServerSettings, rids: list[str], headers=()):
    core = GatewayCore(MetricsHandle(), settings)
    ctx = mock.Mock(app_name="kvsaga")
    with mock.patch.object(gw.serve, "get_replica_context", return_value=ctx), \
         mock.patch.object(gw, "engine_replicas", return_value=rids):
        return asyncio.run(core.metrics(list(headers)))


def test_metrics_auth_applies_at_the_gateway():
    """--metrics-auth under --replicas: the gateway's /metrics checked no key."""
    settings = ServerSettings(model="x", api_keys=("secret",), metrics_auth=True)
    r = metrics_of(settings, ["r1"])
    assert r.status_code == 401 and json.loads(r.body)["error"]["code"] == "invalid_api_key"
    r = metrics_of(settings, ["r1"], [(b"authorization", b"Bearer wrong")])
    assert r.status_code == 401
    r = metrics_of(settings, ["r1"], [(b"authorization", b"Bearer secret")])
    assert r.status_code == 200 and b'replica="r1"' in r.body
    open_settings = ServerSettings(model="x", api_keys=("secret",))  # open by default
    assert metrics_of(open_settings, ["r1"]).status_code == 200


def test_metrics_leave_out_a_stuck_or_failed_replica(monkeypatch, caplog):
    """Replicas were asked with no timeout: one replica stuck (waiting for its model
    load) held every replica's metrics."""
    monkeypatch.setattr(gw, "_METRICS_TIMEOUT_S", 0.2)
    with caplog.at_level(logging.WARNING, logger="kvsaga.ray"):
        r = metrics_of(ServerSettings(model="x"), ["a", "stuck", "broken", "b"])
    assert r.status_code == 200
    assert b'replica="a"' in r.body and b'replica="b"' in r.body and b"stuck" not in r.body
    logged = caplog.text
    assert "stuck" in logged and "broken" in logged and "actor died" in logged


def test_a_replica_answers_metrics_before_its_model_has_loaded():
    replica = object.__new__(deployment.EngineReplica)
    replica.replica_id = "r1"

    async def loading() -> None:
        await asyncio.sleep(3600)

    replica._start = loading
    replica.app = mock.Mock()
    replica.app.state.server.metrics.scrape = mock.AsyncMock(return_value=b"# metrics\n")
    text = asyncio.run(asyncio.wait_for(replica.metrics({"pin": "r1"}), 5))
    assert text == "# metrics\n"


@pytest.mark.parametrize("salt", [5, ["a"], {"a": 1}, "", "\ud800"])
def test_a_bad_cache_salt_reaches_the_replica_without_routing_facts(salt):
    """The gateway hashed a raw non-str (or lone-surrogate) cache_salt and answered a bare
    500 where one node answers 400 naming cache_salt: now the replica answers it."""
    client, handle = gateway(ServerSettings(model="x"))
    r = client.post("/v1/chat/completions", content=json.dumps(
        {"model": "m", "session_id": "s", "messages": [{"role": "user", "content": "hi"}],
         "cache_salt": salt}))
    assert r.status_code == 200 and len(handle.calls) == 1  # (the fake replica's answer)
    assert "session" not in handle.calls[0] and "tenant" not in handle.calls[0]
    r = client.post("/v1/sessions/s/end", content=json.dumps({"cache_salt": salt}))
    assert r.status_code == 200 and "session" not in handle.calls[1]


def test_a_body_too_deep_to_parse_reaches_the_replica():
    client, handle = gateway(ServerSettings(model="x", max_body_bytes=1 << 20))
    r = client.post("/v1/chat/completions", content=b"[" * 200_000 + b"]" * 200_000)
    assert r.status_code == 200 and len(handle.calls) == 1
    assert "session" not in handle.calls[0]


def test_a_lone_surrogate_in_the_system_message_reaches_the_replica():
    client, handle = gateway(ServerSettings(model="x"))
    r = client.post("/v1/chat/completions", content=json.dumps(
        {"model": "m", "session_id": "s",
         "messages": [{"role": "system", "content": "\ud800"}]}))
    assert r.status_code == 200 and "session" not in handle.calls[0]
