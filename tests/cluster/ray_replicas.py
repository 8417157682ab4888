"""A kvsaga `EngineReplica` built without Ray Serve or a model, over a test's own engine
stand-in, the pinned calls between such replicas (`Pinned`; `Fleet`, where some are
gone), and a paused session to move, for the
migration tests (tests/cluster/test_migration_ray_failures.py, test_ray_pull_refusal.py,
test_ray_handover.py); one that serves a tiny model without Ray Serve
(`served_replica`, test_ray_pull_reservation.py); and the gateway relaying a replica's
answer to a routed step to a test's router (`gateway_answer`). Import it after
`pytest.importorskip("ray.serve")`: the deployment module needs Ray."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
from pathlib import Path
from types import SimpleNamespace as NS
from unittest import mock

from kvsaga import KVCacheManager, KVSpec
from kvsaga.integrations.ray import deployment, handover, registry
from kvsaga.integrations.ray.deployment import EngineReplica
from kvsaga.integrations.ray.gateway import PULL_REFUSED_HEADER, GatewayCore
from kvsaga.migration import plan_export, plan_import
from kvsaga.serve.sessions import SessionRegistry
from kvsaga.serve.settings import ServerSettings

SPEC = KVSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=4)
SID = "t1/s"


class BookkeepingEngine:
    """The replica's AsyncEngine, reduced to what a hand-over uses (`_pull`,
    `export_session`, `finish_handover`, the end route); with `threaded`, its commands run
    on a thread of their own, as on the engine thread."""

    def __init__(self, manager, threaded: bool = False) -> None:
        self.manager = manager
        self.pool = concurrent.futures.ThreadPoolExecutor(1) if threaded else None

    async def call(self, fn):
        if self.pool is None:
            return fn(self)
        return await asyncio.wrap_future(self.pool.submit(fn, self))

    def end_session(self, sid: str) -> list[str]:
        if sid in self.manager.sessions:
            self.manager.end_session(sid)
        return []

    def end_engine_session(self, engine, sid: str):  # (AsyncEngine's; no readers here)
        return engine.end_session(sid)


def threaded_engine(manager) -> BookkeepingEngine:
    return BookkeepingEngine(manager, threaded=True)


def copy_by_bookkeeping(monkeypatch) -> None:
    """Export and import by their bookkeeping halves (no K/V tensors, no model)."""
    monkeypatch.setattr(handover, "export_session",
                        lambda e, sid: plan_export(e.manager, sid).export)
    monkeypatch.setattr(handover, "import_session",
                        lambda e, ex, salt=None: plan_import(e.manager, ex, salt=salt))

def stub_replica(rid: str, engine, sessions: SessionRegistry, app=None) -> EngineReplica:
    """Replica `rid` of app "app" whose server holds `sessions` and whose engine is `engine`
    (what `_pull` and `export_session` call); already started."""
    r = object.__new__(EngineReplica)
    r._seen_tokens, r._service, r._handovers = {}, {}, {}
    r._committed = collections.OrderedDict()
    r.replica_id, r.app_name = rid, "app"
    r.app = app or NS()
    r.app.state = NS(engine=engine, server=NS(serving_if_ready=NS(sessions=sessions)))

    async def started() -> None:
        return None

    r._start = started
    return r


def served_replica(rid: str, model_dir: Path) -> EngineReplica:
    """Replica `rid` of app "app", built by `EngineReplica.__init__` (Ray Serve's replica
    context stood in for) over a CPU engine of the model in `model_dir`, served as
    "tiny": its model loads from now on, its app's lifespan is entered at its first call,
    and `close_replica` leaves it (which stops the engine)."""
    from kvsaga.engine.engine import LLMEngine

    ctx = NS(replica_id=NS(unique_id=rid), app_name="app")
    with mock.patch.object(deployment.serve, "get_replica_context", lambda: ctx):
        return EngineReplica(ServerSettings(served_model_name="tiny"), factory=lambda: LLMEngine(
            model_dir, device="cpu", progress=False, kv_memory_bytes=4 * 2**20,
            max_num_seqs=8))


async def close_replica(replica: EngineReplica) -> None:
    """Leave a `served_replica`'s app lifespan (its engine stops), or stop its engine."""
    if replica._stack is not None:
        await replica._stack.aclose()
    replica.app.state.engine.stop()


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


    def reach(self, call: dict) -> EngineReplica | None:
        """The replica a pinned call reaches."""
        return self.target


class Fleet(Pinned):
    """The deployment handle of the live replicas `replicas`: a pinned call goes to the one
    it names, and one naming a replica that is not among them (gone: Ray no longer lists
    it) reaches the first of them, which answers "misrouted"."""

    def __init__(self, *replicas: EngineReplica) -> None:
        super().__init__()
        self.replicas = {r.replica_id: r for r in replicas}

    def reach(self, call: dict) -> EngineReplica | None:
        return self.replicas.get(call["pin"], next(iter(self.replicas.values())))


class _Call:
    def __init__(self, pinned: Pinned, method: str) -> None:
        self.pinned, self.method = pinned, method

    async def remote(self, call: dict):
        self.pinned.asked.append((self.method, call))
        target = self.pinned.reach(call)
        return "unknown" if target is None else await getattr(target, self.method)(call)


def gateway_answer(monkeypatch, router, route, status: int, body: bytes,
                   refused: str | None = None, headers: dict | None = None) -> None:
    """The gateway relaying the first message of a replica's answer `status` (with the
    pull-refused header naming `refused`, if given, and `headers`, a replica's
    `APIError.headers`, if given) to the step of `body` that `route` (a
    `kvsaga.routing.Route`) sent, `router` (a `kvsaga.routing.Router`) standing for the
    Ray Serve request router it tells."""
    monkeypatch.setattr(registry, "routers_here", lambda: [NS(
        kv_router=router, session_ended=router.session_ended,
        move_refused=router.move_refused, move_taken=router.move_taken)])
    sent = dict(headers or {})
    if refused is not None:
        sent[PULL_REFUSED_HEADER] = refused
    headers = [(k.lower().encode(), v.encode()) for k, v in sent.items()]

    class Stream:
        async def __anext__(self):
            return {"type": "http.response.start", "status": status, "headers": headers}

    class Handle:
        def options(self, **kwargs):
            return self

        def remote(self, call):
            call["route"] = {"replica": route.replica, "moved_from": route.moved_from,
                             "migrate": route.migrate, "reason": route.reason}
            return Stream()

    asyncio.run(GatewayCore(Handle(), ServerSettings(model="x")).call(
        "POST", "/v1/completions", b"", [], body))
