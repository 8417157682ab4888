"""A migration whose KV copy fails with an error that is not a KVSagaError (a failed host-tier
copy raises RuntimeError) still moves the session's context, and the KV is recomputed.

Review finding (session 42): `_pull` (importer) and `export_session`'s `take` (exporter)
caught only KVSagaError, so a RuntimeError skipped the importer's `sessions.open` (the
request failed) and the exporter's `engine.end_session` (the session stayed on the engine
that handed it over).
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.integrations.ray import deployment  # noqa: E402
from kvsaga.integrations.ray.deployment import EngineReplica  # noqa: E402
from kvsaga.migration import plan_export  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from tests.cluster.ray_replicas import SID, SPEC, paused, stub_replica  # noqa: E402


class Engine:
    """The replica's AsyncEngine, reduced to what `_pull` and `export_session` use."""

    def __init__(self, manager) -> None:
        self.manager, self.ended = manager, []

    async def call(self, fn):
        return fn(self)

    def end_session(self, sid: str) -> list[str]:
        self.ended.append(sid)
        if sid in self.manager.sessions:
            self.manager.end_session(sid)
        return []


def replica(manager, sessions: SessionRegistry) -> EngineReplica:
    return stub_replica("b", Engine(manager), sessions)


def failed_copy(*args, **kwargs):
    raise RuntimeError("KV transfer failed: simulated")


def test_a_failed_import_still_takes_the_context(monkeypatch):
    src = KVCacheManager(SPEC, 64)
    paused(src)
    export = plan_export(src, SID).export

    class Handle:  # the pinned export call to the session's previous replica
        def options(self, **kwargs):
            return self

        async def remote(self, ask):
            return {"num_steps": 3}, export

    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *a: Handle())
    monkeypatch.setattr(deployment, "import_session", failed_copy)
    registry = SessionRegistry(tokenizer=None)
    b = replica(KVCacheManager(SPEC, 64), registry)
    asyncio.run(b._pull(SID, "t1", "a", True))  # before the fix: RuntimeError
    ctx = registry.get(SID)
    assert ctx is not None and ctx.num_steps == 3
    assert SID not in b._seen_tokens


def test_a_failed_export_still_ends_the_session_here(monkeypatch):
    manager = KVCacheManager(SPEC, 64)
    paused(manager)
    registry = SessionRegistry(tokenizer=None)
    registry.open(SID).num_steps = 3
    monkeypatch.setattr(deployment, "export_session", failed_copy)
    a = replica(manager, registry)
    got = asyncio.run(a.export_session({"pin": "b", "engine_sid": SID, "migrate": True}))
    assert got is not None  # before the fix: RuntimeError, the session left here
    context, exported = got
    assert exported is None and context == {"tokens": None, "num_steps": 3}
    assert a.app.state.engine.ended == [SID]
    assert SID not in manager.sessions and registry.get(SID) is None
    manager.check_integrity()
