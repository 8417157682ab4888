"""A replica that refused a session moved to it is not chosen for that session again for a
while (review of the two-phase hand-over, session 45; repro r3_refused_import_retry_loop).

The queue steal does not check the thief's free blocks: a session stolen for a replica
with no room for its KV had its import refused (503 `session_move_failed`, Retry-After 1),
the gateway sent it home (`move_refused`), and the client's retry met the same stats and
was stolen for the same replica again, every try a 503 and a full KV export on the home
for as long as the load stayed.
"""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray.serve")

from kvsaga import KVCacheManager  # noqa: E402
from kvsaga.integrations.ray import deployment  # noqa: E402
from kvsaga.migration import plan_export, plan_import  # noqa: E402
from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest  # noqa: E402
from kvsaga.serve.sessions import SessionRegistry  # noqa: E402
from tests.cluster.ray_replicas import SID, SPEC, Pinned, paused, stub_replica  # noqa: E402

# a: 3 steps waiting, 2 running, the session long enough to migrate; b: nothing queued or
# running, its pool full of paused sessions (no room for the moved session's 5 blocks);
# c: one step running, room to spare.
LOADED = ReplicaStats(total_blocks=64, free_blocks=59, queue_depth=3, running=2,
                      session_tokens={SID: 20000})
FULL = ReplicaStats(total_blocks=4, free_blocks=0)
ROOMY = ReplicaStats(total_blocks=64, free_blocks=60, running=1)


class Engine:
    """The replica's AsyncEngine, reduced to what a hand-over uses."""

    def __init__(self, manager) -> None:
        self.manager = manager

    async def call(self, fn):
        return fn(self)

    def end_session(self, sid: str) -> list[str]:
        if sid in self.manager.sessions:
            self.manager.end_session(sid)
        return []

    def end_engine_session(self, engine, sid: str):  # (AsyncEngine's; no readers here)
        return engine.end_session(sid)


@pytest.fixture(autouse=True)
def bookkeeping_copies(monkeypatch):
    """Export and import by their bookkeeping halves (no K/V tensors, no model)."""
    monkeypatch.setattr(deployment, "export_session",
                        lambda e, sid: plan_export(e.manager, sid).export)
    monkeypatch.setattr(deployment, "import_session",
                        lambda e, ex, salt=None: plan_import(e.manager, ex, salt=salt))


def fleet(monkeypatch):
    """Replica a holding session `SID`, b with 4 blocks (no room for it), b's pulls
    delivered to a, and a router that has it at home on a; the router's clock is
    `now[0]`."""
    ma = KVCacheManager(SPEC, 64)
    paused(ma)
    ra = SessionRegistry(tokenizer=None)
    ra.open(SID)
    a = stub_replica("a", Engine(ma), ra)
    b = stub_replica("b", Engine(KVCacheManager(SPEC, 4)), SessionRegistry(tokenizer=None))
    handle = Pinned(a)
    monkeypatch.setattr(deployment.serve, "get_deployment_handle", lambda *x: handle)
    router = KvsagaRouter(["a", "b", "c"])
    now = [1000.0]
    router.clock = lambda: now[0]
    router.homes[SID] = "a"
    return router, b, handle, now


def attempt(router, b, stats) -> tuple[str, object]:
    """One try of the session's step: routed, pulled by b if moved there (the gateway's
    `move_refused` on the refusal header), finished."""
    route = router.route(RouteRequest(session=SID, context_tokens=20), stats)
    answer: object = "home"
    if route.replica == "b":
        err = asyncio.run(b._pull(SID, "t1", "a", route.migrate))
        answer = 200 if err is None else err.status
        if err is not None and deployment.PULL_REFUSED_HEADER in err.headers:
            router.move_refused(SID, err.headers[deployment.PULL_REFUSED_HEADER])
    router.finished(route)
    return route.replica, answer


def test_a_refused_replica_is_not_stolen_for_again_and_the_retries_run_at_home(monkeypatch):
    router, b, handle, now = fleet(monkeypatch)
    stats = {"a": LOADED, "b": FULL}
    tries = [attempt(router, b, stats) for _ in range(6)]
    # Before the fix: [("b", 503)] * 6, and six full KV exports on a.
    assert tries == [("b", 503)] + [("a", "home")] * 5
    assert sum(m == "export_session" for m, _ in handle.asked) == 1
    assert router.home(SID) == "a"
    # Once the cool-off is over, b may take it again (its room may have come back).
    now[0] += router.refused_move_s + 1
    assert attempt(router, b, stats) == ("b", 503)


def test_another_idle_replica_still_takes_the_session(monkeypatch):
    router, b, handle, _ = fleet(monkeypatch)
    stats = {"a": LOADED, "b": FULL, "c": ROOMY}
    assert attempt(router, b, stats) == ("b", 503)  # b is the least loaded
    route = router.route(RouteRequest(session=SID, context_tokens=20), stats)
    assert (route.replica, route.moved_from) == ("c", "a")


def test_the_refusals_remembered_are_bounded(monkeypatch):
    router = KvsagaRouter(["a", "b"])
    now = [0.0]
    router.clock = lambda: now[0]
    monkeypatch.setattr(KvsagaRouter, "_MAX_REFUSED", 3)
    for i in range(5):
        router.homes[f"s{i}"] = "b"
        router.move_refused(f"s{i}", "a")
    assert list(router._refused) == [("s2", "b"), ("s3", "b"), ("s4", "b")]
    now[0] = router.refused_move_s + 1  # all over: the next refusal sweeps them out
    router.homes["s5"] = "b"
    router.move_refused("s5", "a")
    assert list(router._refused) == [("s5", "b")]
