"""A migration whose KV copy fails with an error that is not a KVSagaError (a failed host-tier
copy raises RuntimeError) fails cleanly: a failed export moves the context without its KV
(recomputed); a failed import leaves the session with its sender.

Review finding (session 42): `_pull` (importer) and `export_session`'s `take` (exporter)
caught only KVSagaError, so a RuntimeError skipped the importer's `sessions.open` (the
request failed) and the exporter's `engine.end_session` (the session stayed on the engine
that handed it over). Since session 45 a hand-over is two-phase (test_ray_handover.py): a
failed import aborts it, the session staying with its sender; a failed export still moves
the context, and the commit ends the sender's copy.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.integrations.ray import deployment, handover  # noqa: E402
from kvsaga.integrations.ray.deployment import EngineReplica  # noqa: E402
from kvsaga.migration import plan_export  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from tests.cluster.ray_replicas import SID, SPEC, Pinned, paused, stub_replica  # noqa: E402


class Engine:
    """The replica's AsyncEngine, reduced to what `_pull` and `export_session` use."""

    def __init__(self, manager) -> None:
        self.manager, self.ended = manager, []

    async def call(self, fn):
        return fn(self)

    def end_engine_session(self, engine, sid: str):  # (AsyncEngine's; no readers here)
        return engine.end_session(sid)

    def end_session(self, sid: str) -> list[str]:
        self.ended.append(sid)
        if sid in self.manager.sessions:
            self.manager.end_session(sid)
        return []


def replica(manager, sessions: SessionRegistry) -> EngineReplica:
    return stub_replica("b", Engine(manager), sessions)


def failed_copy(*args, **kwargs):
    raise RuntimeError("KV transfer failed: simulated")


def test_a_failed_import_aborts_and_leaves_the_session_with_its_sender(monkeypatch):
    """(Session 45: a failed import no longer takes the context and recomputes, which lost
    the KV the sender had already ended; the hand-over is aborted instead.)"""
    src = KVCacheManager(SPEC, 64)
    paused(src)
    sender = SessionRegistry(tokenizer=None)
    sender.open(SID).num_steps = 3
    a = stub_replica("a", Engine(src), sender)
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: Pinned(a))
    monkeypatch.setattr(handover, "export_session",
                        lambda e, sid: plan_export(e.manager, sid).export)
    monkeypatch.setattr(handover, "import_session", failed_copy)
    registry = SessionRegistry(tokenizer=None)
    b = replica(KVCacheManager(SPEC, 64), registry)
    err = asyncio.run(b._pull(SID, "t1", "a", True))  # before the fix: RuntimeError
    assert err.status == 503 and err.code == "session_move_failed"
    assert registry.get(SID) is None and SID not in b._seen_tokens
    assert SID in src.sessions and sender.get(SID).in_flight is None


def test_a_failed_export_hands_the_context_over_and_the_commit_ends_the_session(
        monkeypatch):
    """(Session 45: the export no longer ends the session at once, its importer may still
    refuse it; the commit ends it, the engine's copy with the record.)"""
    manager = KVCacheManager(SPEC, 64)
    paused(manager)
    registry = SessionRegistry(tokenizer=None)
    registry.open(SID).num_steps = 3
    monkeypatch.setattr(handover, "export_session", failed_copy)
    a = replica(manager, registry)

    async def go():
        got = await a.export_session({"pin": "b", "engine_sid": SID, "migrate": True})
        # before the fix: RuntimeError, the session left here
        assert got.exported is None and got.context == {"tokens": None, "num_steps": 3}
        assert await a.finish_handover({"pin": "b", "engine_sid": SID, "id": got.id,
                                        "commit": True}) is True

    asyncio.run(go())
    assert a.app.state.engine.ended == [SID]
    assert SID not in manager.sessions and registry.get(SID) is None
    manager.check_integrity()
