"""The gateway makes the router forget a session only when the replica ended it: a last
step or an end request answered 2xx, or an end request answered 404. A refused last step
(429 queue full, 409 session busy, 400) keeps it (review repro r3_last429)."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import (  # noqa: E402
    DeploymentHandleSource,
    DeploymentID,
    RequestMetadata,
)
from ray.serve._private.test_utils import FakeRunningReplica  # noqa: E402
from ray.serve.request_router import PendingRequest  # noqa: E402

from kvsaga.integrations.ray.gateway import GatewayCore  # noqa: E402
from kvsaga.integrations.ray.router import KvsagaRequestRouter  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402


class StatsReplica(FakeRunningReplica):
    def __init__(self, name: str) -> None:
        super().__init__(name)

    @property
    def routing_stats(self) -> dict:
        return {"total_blocks": 1000, "free_blocks": 1000}


class Engine:
    """A DeploymentHandle stand-in: routes each call with the router, then answers with
    `status` (what the replica's single-node app would)."""

    def __init__(self, router: KvsagaRequestRouter) -> None:
        self.router, self.status, self.n = router, 200, 0

    def options(self, **kwargs):
        return self

    def remote(self, call: dict):
        engine = self

        class Stream:
            async def __anext__(self):
                engine.n += 1
                rid = f"r{engine.n}"
                pr = PendingRequest(args=[call], kwargs={}, metadata=RequestMetadata(rid, rid))
                await engine.router.choose_replicas(
                    list(engine.router.curr_replicas.values()), pr)
                return {"type": "http.response.start", "status": engine.status, "headers": []}

        return Stream()


def step(last: bool) -> bytes:
    return json.dumps({"model": "m", "session_id": "s1", "kvsaga": {"last_step": last},
                       "messages": [{"role": "user", "content": "hi"}]}).encode()


def run(answers: list[tuple[str, int]]) -> list[bool]:
    """Step 1 (200), then each (request, status); whether the router still knows s1
    after each."""
    async def go():
        router = KvsagaRequestRouter(DeploymentID(name="KvsagaEngine"),
                                     DeploymentHandleSource.UNKNOWN)
        router.initialize_state()
        router.update_replicas([StatsReplica("a"), StatsReplica("b")])
        engine = Engine(router)
        gateway = GatewayCore(engine, ServerSettings())
        await gateway.call("POST", "/v1/chat/completions", b"", [], step(False))
        known = []
        for what, status in answers:
            engine.status = status
            if what == "end":
                await gateway.call("POST", "/v1/sessions/s1/end", b"", [], b"")
            else:
                await gateway.call("POST", "/v1/chat/completions", b"", [], step(True))
            known.append("anon/s1" in router.kv_router.homes)
        return known

    return asyncio.run(go())


@pytest.mark.parametrize("status", [429, 409, 400, 500])
def test_a_refused_last_step_keeps_the_session(status):
    assert run([("last", status), ("last", 200)]) == [True, False]


@pytest.mark.parametrize("status", [409, 503])
def test_a_refused_end_keeps_the_session(status):
    assert run([("end", status)]) == [True]


@pytest.mark.parametrize("status", [200, 404])
def test_an_end_answered_2xx_or_404_forgets_it(status):
    assert run([("end", status)]) == [False]


def test_a_last_step_answered_404_keeps_it():
    """404 on a step is not "no such session" (a step opens its session): only an end
    request's 404 says the replica has nothing to end."""
    assert run([("last", 404)]) == [True]
