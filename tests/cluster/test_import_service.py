"""A session migrated into a replica with its KV is not counted as tenant service there:
its context was computed elsewhere (review repro r7_service: the fleet counted it twice)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace as NS

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager, KVSpec  # noqa: E402
from kvsaga.integrations.ray import deployment, handover  # noqa: E402
from kvsaga.integrations.ray.deployment import EngineReplica  # noqa: E402
from kvsaga.migration import plan_export, plan_import  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402

SPEC = KVSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=4)
SID = "t1/s"


class Engine:
    """The replica's AsyncEngine, reduced to what `_pull` and `_routing_stats` use."""

    def __init__(self, manager) -> None:
        self.manager, self.scheduler, self.busy_s = manager, NS(waiting=[]), 0.0

    async def call(self, fn):
        return fn(self)

    def end_engine_session(self, engine, sid: str):  # (AsyncEngine's; no readers here)
        return engine.end_session(sid)

    def end_session(self, sid: str) -> None:  # (nothing here to end)
        assert sid not in self.manager.sessions


def replica(manager) -> EngineReplica:
    r = object.__new__(EngineReplica)
    r._seen_tokens, r._service, r._last_live = {}, {}, {}
    r.settings = ServerSettings(model="x")
    r.replica_id, r.app_name = "b", "app"
    r.app = NS(state=NS(engine=Engine(manager), server=NS(
        serving_if_ready=NS(sessions=SessionRegistry(tokenizer=None)))))
    return r


def test_a_migrated_session_is_no_service_on_its_new_replica(monkeypatch):
    src, dst = KVCacheManager(SPEC, 64), KVCacheManager(SPEC, 64)
    src.begin_step(SID, list(range(100)), salt="t1")
    src.allocate_slots(SID, 100)
    src.finish_step(SID)
    export = plan_export(src, SID).export

    class Handle:  # the pinned calls to the session's previous replica: export, commit
        def options(self, method_name):
            self.method = method_name
            return self

        async def remote(self, ask):
            return deployment.Handover("h", {}, export) \
                if self.method == "export_session" else True

    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *a: Handle())
    # The K/V bytes need a real engine: the bookkeeping half stands in for them.
    monkeypatch.setattr(handover, "import_session",
                        lambda engine, e, salt=None: plan_import(engine.manager, e, salt=salt))
    b = replica(dst)
    asyncio.run(b._pull(SID, "t1", "a", True))
    assert SID in dst.sessions
    row = b._routing_stats(b.app.state.engine)
    assert row["session_tokens"] == {SID: 100}
    assert row["tenant_service"] == {}  # before the fix: {'t1': 100.0}
    toks = [*range(100), 7, 8, 9]  # its next step here: what it computes counts
    dst.begin_step(SID, toks, salt="t1")
    dst.allocate_slots(SID, len(toks) - dst.num_computed_tokens(SID))
    dst.finish_step(SID)
    assert b._routing_stats(b.app.state.engine)["tenant_service"] == {"t1": 3.0}
