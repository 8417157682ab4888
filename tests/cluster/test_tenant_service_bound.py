"""What a replica reports and the router keeps stays bounded (review repro
service_unbounded): a replica forgot no tenant (a tenant is a client-chosen cache_salt),
and the router no replica id it had seen."""

from __future__ import annotations

import time as _time
from types import SimpleNamespace as NS

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager, KVSpec  # noqa: E402
from kvsaga.integrations.ray import deployment  # noqa: E402
from kvsaga.integrations.ray.deployment import EngineReplica  # noqa: E402
from kvsaga.routing import make_router  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402

SPEC = KVSpec(num_layers=2, num_kv_heads=2, head_dim=16, block_size=4)


def replica(mgr: KVCacheManager, idle_s: float) -> tuple[EngineReplica, NS]:
    r = object.__new__(EngineReplica)
    r._seen_tokens, r._service, r._last_live = {}, {}, {}
    r.settings = ServerSettings(model="x", session_idle_s=idle_s)
    r.app = NS(state=NS(engine=NS(busy_s=0.0)))
    return r, NS(manager=mgr, scheduler=NS(waiting=[]))


def step(mgr: KVCacheManager, sid: str) -> None:
    st = mgr.begin_step(sid, list(range(8)))
    mgr.allocate_slots(sid, 8 - st.num_cached_tokens)
    mgr.finish_step(sid)


def test_tenants_without_a_live_session_are_forgotten_after_the_idle_limit(monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(deployment, "time", NS(monotonic=lambda: clock[0], time=_time.time))
    mgr = KVCacheManager(SPEC, 256)
    r, engine = replica(mgr, idle_s=60.0)
    step(mgr, "gone/s")
    step(mgr, "stays/s")
    assert set(r._routing_stats(engine)["tenant_service"]) == {"gone", "stays"}
    mgr.end_session("gone/s")
    clock[0] += 30  # within the idle limit: a client back soon keeps its history
    assert set(r._routing_stats(engine)["tenant_service"]) == {"gone", "stays"}
    clock[0] += 31
    row = r._routing_stats(engine)
    assert row["tenant_service"] == {"stays": 8.0}  # before the fix: 'gone' for good
    assert set(r._last_live) == {"stays"}


def test_a_tenant_that_gained_nothing_here_is_forgotten_too(monkeypatch):
    """A tenant whose only session here was imported (`_import` records its size as seen)
    and left before it grew has no service here: it was never forgotten from `_last_live`
    (review s49 ray 3)."""
    clock = [1000.0]
    monkeypatch.setattr(deployment, "time", NS(monotonic=lambda: clock[0], time=_time.time))
    mgr = KVCacheManager(SPEC, 256)
    r, engine = replica(mgr, idle_s=60.0)
    step(mgr, "moved/s")
    r._seen_tokens["moved/s"] = 8  # (what `_import` records for an imported session)
    assert r._routing_stats(engine)["tenant_service"] == {}
    assert set(r._last_live) == {"moved"}
    mgr.end_session("moved/s")  # it moves on (or ends) before it grows here
    clock[0] += 61
    r._routing_stats(engine)
    assert r._last_live == {}  # before: {"moved": 1000.0}, for good


def test_idle_tenants_beyond_the_cap_go_longest_idle_first(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(deployment, "time", NS(monotonic=lambda: clock[0], time=_time.time))
    monkeypatch.setattr(deployment, "_MAX_IDLE_TENANTS", 3)
    mgr = KVCacheManager(SPEC, 256)
    r, engine = replica(mgr, idle_s=float("inf"))
    for i in range(6):
        clock[0] += 1
        step(mgr, f"t{i}/s")
        r._routing_stats(engine)
        mgr.end_session(f"t{i}/s")
    step(mgr, "live/s")
    row = r._routing_stats(engine)
    assert set(row["tenant_service"]) == {"t3", "t4", "t5", "live"}


def test_the_router_forgets_a_removed_replica():
    router = make_router("kvsaga", ["a", "b"])
    for i in range(50):
        router.sync(["a", "b", f"x{i}"])
    router.sync(["a", "b"])
    assert set(router._order) == {"a", "b"}  # before the fix: every x<i> too
    router.add_replica("x0")
    assert router._order["x0"] > router._order["b"]
