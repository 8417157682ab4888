"""A replica whose model failed to load (or whose engine stopped, or is stuck inside a
step) leaves the rotation: it fails Ray Serve's health check, and the router places no new
session on a replica that has not reported stats while another has. No cluster needed."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from types import SimpleNamespace
from unittest import mock

import pytest

pytest.importorskip("ray.serve")

from kvsaga.integrations.ray import deployment  # noqa: E402
from kvsaga.integrations.ray.deployment import EngineReplica  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster.ray_fakes import StatsReplica, make_router, pending  # noqa: E402


def _replica(factory, **kwargs) -> EngineReplica:
    ctx = SimpleNamespace(replica_id=SimpleNamespace(unique_id="r1"), app_name="kvsaga")
    with mock.patch.object(deployment.serve, "get_replica_context", return_value=ctx):
        return EngineReplica(ServerSettings(model="x"), factory, **kwargs)


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
    replica.stuck_step_s = deployment.STUCK_STEP_S
    engine = SimpleNamespace(load_error=None, stopped=False, stop_reason="",
                             step_running_s=0.0)
    replica.app = SimpleNamespace(state=SimpleNamespace(engine=engine))
    replica.check_health()  # healthy: no error
    engine.stopped, engine.stop_reason = True, "the engine thread failed: KeyError"
    with pytest.raises(RuntimeError, match="engine thread failed"):
        replica.check_health()


class HungEngine:
    """An engine whose first step blocks until `release` is set: a forward pass that does
    not return (a hung device)."""

    device = SimpleNamespace(type="fake")  # no thread governor (cpu_threads.governor_for)
    last_step_idle = False

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.steps = 0

    def has_unfinished(self) -> bool:
        return self.steps == 0

    def step(self) -> list:
        self.entered.set()
        self.release.wait(60)
        self.steps += 1
        return []

    def tick(self) -> None:
        pass

    def stats(self) -> None:
        return None


def test_an_engine_stuck_inside_a_step_fails_the_health_check():
    """The engine thread stays alive inside a step that never returns, so the replica was
    healthy by every check (loaded, not stopped) and kept its sessions and new ones, each
    waiting for good behind the stuck step."""
    hung = HungEngine()
    replica = _replica(lambda: hung, stuck_step_s=0.001)
    engine = replica.app.state.engine
    try:
        assert hung.entered.wait(10)
        time.sleep(0.01)  # past the limit
        with pytest.raises(RuntimeError, match="engine is stuck: one step has run"):
            replica.check_health()
        hung.release.set()
        engine.call_sync(lambda e: None, timeout=10)  # runs once the step has returned
        assert engine.step_running_s == 0.0
        replica.check_health()  # between steps: healthy again
    finally:
        hung.release.set()
        engine.stop()


def test_a_bad_stuck_step_limit_is_refused_before_anything_is_built():
    settings = ServerSettings(model="x")
    for bad in (0, -1.0, math.nan, "120", True, None):
        with pytest.raises(ValueError, match="stuck_step_s must be a number > 0"):
            deployment.build_application(settings, 2, stuck_step_s=bad)
    deployment.build_application(settings, 2, stuck_step_s=math.inf)  # never


def test_build_application_checks_its_threads_and_stats_period_up_front():
    """A bad `torch_threads` failed later inside every replica actor (torch's
    set_num_threads, naming neither), or, 0, was taken for torch's default; a bad
    `stats_period_s` was refused by Ray's config under its own field name (review s49
    ray 5)."""
    settings = ServerSettings(model="x")
    for bad in (0, -2, 2.5, "2", True):
        with pytest.raises(ValueError, match="torch_threads must be a positive int or None"):
            deployment.build_application(settings, 2, torch_threads=bad)
    for bad in (0, -1, math.nan, math.inf, "0.5", True):
        with pytest.raises(ValueError, match="stats_period_s must be a finite number > 0"):
            deployment.build_application(settings, 2, stats_period_s=bad)
    deployment.build_application(settings, 2, torch_threads=None, stats_period_s=0.2)
    deployment.build_application(settings, 2, torch_threads=1, stats_period_s=2)


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


def test_waiting_for_a_stopped_engine_returns_at_once():
    """`_wait_loaded` polled `wait_ready(0.5)` until a load error or its deadline; with
    `wait_ready` returning at once for a stopped engine (no load error), that loop spun
    until the deadline (600 s for a replica's requests)."""
    from kvsaga.serve.async_engine import AsyncEngine

    engine = AsyncEngine(lambda: None)
    engine.stop()
    calls: list[float | None] = []
    wait_ready = engine.wait_ready
    engine.wait_ready = lambda timeout=None: calls.append(timeout) or wait_ready(timeout)
    deployment._wait_loaded(engine, 2.0)
    assert calls == [2.0] and not engine.ready
