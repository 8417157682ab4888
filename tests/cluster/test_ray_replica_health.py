"""A replica whose model failed to load (or whose engine stopped) leaves the rotation: it
fails Ray Serve's health check, and the router places no new session on a replica that has
not reported stats while another has. No cluster needed."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from unittest import mock

import pytest

pytest.importorskip("ray.serve")

from kvsaga.integrations.ray import deployment  # noqa: E402
from kvsaga.integrations.ray.deployment import EngineReplica  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster.ray_fakes import StatsReplica, make_router, pending  # noqa: E402


def _replica(factory) -> EngineReplica:
    ctx = SimpleNamespace(replica_id=SimpleNamespace(unique_id="r1"), app_name="kvsaga")
    with mock.patch.object(deployment.serve, "get_replica_context", return_value=ctx):
        return EngineReplica(ServerSettings(model="x"), factory)


def test_failed_load_fails_the_health_check_without_a_request():
    """The model loads from the constructor on, so a failed load shows in `check_health`
    before any request reached the replica (it loaded at the first request, and a
    replica had no health check: Serve kept it, answering 503, for good)."""

    def broken():
        raise RuntimeError("CUDA out of memory")

    replica = _replica(broken)
    engine = replica.app.state.engine
    try:
        engine._thread.join(10)
        assert engine.load_error is not None
        with pytest.raises(RuntimeError, match="failed to load: CUDA out of memory"):
            replica.check_health()
        assert asyncio.run(replica.record_routing_stats()) == {}
    finally:
        engine.stop()


def test_stopped_engine_fails_the_health_check():
    replica = object.__new__(EngineReplica)
    engine = SimpleNamespace(load_error=None, stopped=False, stop_reason="")
    replica.app = SimpleNamespace(state=SimpleNamespace(engine=engine))
    replica.check_health()  # healthy: no error
    engine.stopped, engine.stop_reason = True, "the engine thread failed: KeyError"
    with pytest.raises(RuntimeError, match="engine thread failed"):
        replica.check_health()


def test_router_skips_a_replica_that_has_not_reported():
    """A replica reporting nothing ({}: loading, or its load failed) looked idle and drew
    every new session; it gets one only when no replica has reported."""

    async def go():
        busy = {"total_blocks": 1000, "free_blocks": 600, "paused": 3,
                "predicted_resumes": 3, "busy_s": 40.0}
        reps = [StatsReplica("a", **busy), StatsReplica("b", **dict(busy)),
                StatsReplica("dead")]
        router = make_router(reps)
        placed = set()
        for i in range(6):
            call = {"kvsaga": 1, "session": f"anon/s{i}", "tenant": "anon"}
            got = await router.choose_replicas(list(router.curr_replicas.values()),
                                               pending(call, f"r{i}"))
            placed.add(got[0][0].replica_id.unique_id)
            router.on_request_completed(got[0][0].replica_id, f"r{i}")
        assert placed == {"a", "b"}
        alone = make_router([StatsReplica("dead")])
        call = {"kvsaga": 1, "session": "anon/x", "tenant": "anon"}
        got = await alone.choose_replicas(list(alone.curr_replicas.values()),
                                          pending(call, "x"))
        assert got[0][0].replica_id.unique_id == "dead"  # nowhere else to go

    asyncio.run(go())


def test_a_loaded_replica_reports_before_its_first_request():
    """The router gives no new session to a replica that has not reported, so a replica
    must report once its model has loaded, before any request entered its app's lifespan
    (else a replica added to a busy fleet never got a request)."""
    replica = object.__new__(EngineReplica)
    replica._stack = None  # no request yet

    async def call(fn):
        return {"total_blocks": 10, "free_blocks": 10}

    engine = SimpleNamespace(snapshot=object(), stopped=False, call=call)
    replica.app = SimpleNamespace(state=SimpleNamespace(engine=engine))
    assert asyncio.run(replica.record_routing_stats()) == {"total_blocks": 10,
                                                          "free_blocks": 10}
    engine.snapshot = None  # still loading
    assert asyncio.run(replica.record_routing_stats()) == {}
