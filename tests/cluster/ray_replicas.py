"""A kvsaga `EngineReplica` built without Ray Serve or a model, over a test's own engine
stand-in, the pinned calls between such replicas, and a paused session to move, for the
migration tests (tests/cluster/test_migration_ray_failures.py, test_ray_pull_refusal.py,
test_ray_handover.py). Import it after `pytest.importorskip("ray.serve")`: the deployment
module needs Ray."""

from __future__ import annotations

from types import SimpleNamespace as NS

from kvsaga import KVCacheManager, KVSpec
from kvsaga.integrations.ray.deployment import EngineReplica
from kvsaga.serve.sessions import SessionRegistry

SPEC = KVSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=4)
SID = "t1/s"


def stub_replica(rid: str, engine, sessions: SessionRegistry, app=None) -> EngineReplica:
    """Replica `rid` of app "app" whose server holds `sessions` and whose engine is `engine`
    (what `_pull` and `export_session` call); already started."""
    r = object.__new__(EngineReplica)
    r._seen_tokens, r._service, r._handovers = {}, {}, {}
    r.replica_id, r.app_name = rid, "app"
    r.app = app or NS()
    r.app.state = NS(engine=engine, server=NS(serving_if_ready=NS(sessions=sessions)))

    async def started() -> None:
        return None

    r._start = started
    return r


def paused(manager: KVCacheManager) -> None:
    """Session `SID` paused with 20 tokens computed (tenant salt "t1")."""
    manager.begin_step(SID, list(range(20)), salt="t1")
    manager.allocate_slots(SID, 20)
    manager.finish_step(SID)


class Pinned:
    """The deployment handle of a replica's pull (`EngineReplica._ask`): each pinned call
    goes to the named method of `target` (no target: every call answers "unknown").
    `asked` lists the calls, as (method, call)."""

    def __init__(self, target: EngineReplica | None = None) -> None:
        self.target, self.asked = target, []

    def options(self, method_name: str) -> _Call:
        return _Call(self, method_name)


class _Call:
    def __init__(self, pinned: Pinned, method: str) -> None:
        self.pinned, self.method = pinned, method

    async def remote(self, call: dict):
        self.pinned.asked.append((self.method, call))
        target = self.pinned.target
        return "unknown" if target is None else await getattr(target, self.method)(call)
