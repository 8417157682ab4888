"""KvsagaRequestRouter on Ray Serve's own fake replicas: no cluster needed."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("ray.serve")

from ray.serve._private.common import DeploymentHandleSource, DeploymentID  # noqa: E402

from kvsaga.integrations.ray.gateway import merge_metrics, routing_call  # noqa: E402
from kvsaga.integrations.ray.router import (  # noqa: E402
    RayDefaultRequestRouter,
)
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster.ray_fakes import StatsReplica, make_router, pending  # noqa: E402


async def choose(router, call: dict, rid: str) -> str:
    ranks = await router.choose_replicas(list(router.curr_replicas.values()), pending(call, rid))
    assert len(ranks) == 1 and len(ranks[0]) == 1
    return ranks[0][0].replica_id.unique_id


def test_affinity_stealing_and_route_annotation():
    async def go():
        # 200 blocks of 16 tokens: room for the session's 2,000 tokens on either (a thief
        # must report room for the session it takes).
        a = StatsReplica("a", total_blocks=200, free_blocks=200)
        b = StatsReplica("b", total_blocks=200, free_blocks=200)
        router = make_router([a, b], steal_min_waiting=0, steal_margin=1)
        assert router.kv_router.replicas == ["a", "b"]
        call = {"kvsaga": 1, "session": "t/s1", "context_tokens": 2000}
        first = await choose(router, call, "r1")
        assert call["route"]["reason"] == "new"
        done = next(i for i in router.curr_replicas if i.unique_id == first)
        router.on_request_completed(done, "r1")
        # Sequential steps stay home.
        assert await choose(router, dict(call), "r2") == first
        router.on_request_completed(done, "r2")
        # Home busy (other sessions' steps) and the other idle: the next step is stolen,
        # and its KV migrates (2000 tokens: cheaper to move than to recompute). (A step of
        # the session still in flight would keep it home: test_concurrent_step.py.)
        (a if first == "a" else b).stats.update(queue_depth=1, running=1)
        moved = dict(call)
        other = await choose(router, moved, "r3")
        assert other != first
        assert moved["route"] == {"replica": other, "moved_from": first, "migrate": True,
                                  "reason": "steal"}
        # A retry of the same request is not routed again.
        assert await choose(router, dict(moved), "r3") == other
        assert router.kv_router.in_flight[other] == 1

    asyncio.run(go())


def test_busy_time_the_replicas_report_drives_a_balance_steal():
    """The adapter hands each replica's `busy_s` to kvsaga.routing: with `busy_balance`
    set, a session whose home has worked far more than the other replica moves there
    (nothing queues anywhere); without it, it stays."""
    async def go(balance: float) -> dict:
        # 1,000 blocks of 16 tokens: room for the session's 2,000 tokens on either.
        a = StatsReplica("a", total_blocks=1000, free_blocks=1000, busy_s=1.0)
        b = StatsReplica("b", total_blocks=1000, free_blocks=1000, busy_s=1.0)
        router = make_router([a, b], busy_balance=balance)
        call = {"kvsaga": 1, "session": "t/s", "context_tokens": 2000}
        home = await choose(router, call, "r1")
        router.on_request_completed(
            next(i for i in router.curr_replicas if i.unique_id == home), "r1")
        (a if home == "a" else b).stats["busy_s"] = 30.0  # home ran far ahead
        nxt = dict(call)
        await choose(router, nxt, "r2")
        return {"home": home, **nxt["route"]}

    moved = asyncio.run(go(0.1))
    assert moved["reason"] == "balance" and moved["moved_from"] == moved["home"]
    assert moved["replica"] != moved["home"] and moved["migrate"]
    assert asyncio.run(go(0.0))["reason"] == "affinity"


def test_pins_foreign_calls_and_dead_replicas():
    async def go():
        a, b = StatsReplica("a"), StatsReplica("b")
        router = make_router([a, b])
        cands = list(router.curr_replicas.values())
        got = await router.choose_replicas(cands, pending({"kvsaga": 1, "pin": "b"}, "p"))
        assert got == [[b]]
        # A pin to a replica that is gone goes anywhere: that replica answers "misrouted".
        got = await router.choose_replicas(cands, pending({"kvsaga": 1, "pin": "zz"}, "q"))
        assert got == [cands]
        assert await router.choose_replicas(cands, pending({"other": 1}, "x")) == [cands]
        home = await choose(router, {"kvsaga": 1, "session": "s"}, "r")
        router.on_replica_actor_died(next(i for i in router.curr_replicas if i.unique_id == home))
        call = {"kvsaga": 1, "session": "s"}
        again = await choose(router, call, "r2")
        assert again != home and call["route"]["reason"] == "lost"
        assert call["route"]["moved_from"] == home and not call["route"]["migrate"]

    asyncio.run(go())


def test_ray_default_router_is_rays_own_except_for_pins():
    """`--router ray-default`: Ray Serve's default class decides every step (two random
    candidates in ray 2.60's power-of-two-choices), sessions ignored; pinned calls still
    reach the replica they name."""
    from ray.serve.config import RequestRouterConfig

    from kvsaga.integrations.ray.deployment import _router_config, build_application

    ray_default = RequestRouterConfig().get_request_router_class()
    assert issubclass(RayDefaultRequestRouter, ray_default)
    assert RayDefaultRequestRouter.choose_replicas is not ray_default.choose_replicas

    async def go():
        reps = [StatsReplica(n) for n in "abc"]
        router = RayDefaultRequestRouter(deployment_id=DeploymentID(name="KvsagaEngine"),
                                         handle_source=DeploymentHandleSource.UNKNOWN)
        router.initialize_state()
        router.update_replicas(reps)
        cands = list(router.curr_replicas.values())
        assert await router.choose_replicas(cands, pending({"kvsaga": 1, "pin": "c"}, "p")) \
            == [[reps[2]]]
        call = {"kvsaga": 1, "session": "t/s1"}
        for i in range(8):
            ranks = await router.choose_replicas(cands, pending(dict(call), f"r{i}"))
            assert len(ranks) == 1 and len(ranks[0]) == 2  # Ray's two choices
            assert set(ranks[0]) <= set(reps)
        assert "route" not in call  # no kvsaga decision: nothing moves with the session

    asyncio.run(go())
    cfg = _router_config("ray-default", None, 0.5)
    assert cfg.request_router_class.endswith("router.RayDefaultRequestRouter")
    assert not cfg.request_router_kwargs
    with pytest.raises(ValueError, match="unknown router 'random'"):
        build_application(ServerSettings(device="cpu"), 2, router="random")


def test_routing_call_extracts_tenant_session_and_prefix():
    s = ServerSettings(api_keys=("k1",))
    body = b'{"model": "m", "messages": [{"role": "system", "content": "S"}], "session_id": "x"}'
    auth = [(b"authorization", b"Bearer k1")]
    call = routing_call(s, "POST", "/v1/chat/completions", b"", auth, body)
    assert call["engine_sid"].endswith("/x") and call["session"] == call["engine_sid"]
    other = routing_call(s, "POST", "/v1/chat/completions", b"",
                         [(b"authorization", b"Bearer wrong")], body)
    assert other["engine_sid"] != call["engine_sid"]  # an invalid key is no tenant
    assert call["prefix_key"] is not None and not call["ends"]
    end = routing_call(s, "POST", "/v1/sessions/x/end", b"", auth, b"")
    assert end["engine_sid"] == call["engine_sid"] and end["ends"]
    slashed = routing_call(s, "POST", "/v1/chat/completions", b"", auth,
                           body.replace(b'"x"', b'"team/task-1"'))
    end = routing_call(s, "POST", "/v1/sessions/team/task-1/end", b"", auth, b"")
    assert end["engine_sid"] == slashed["engine_sid"] and end["ends"]  # not routed by "team"
    bad = routing_call(s, "POST", "/v1/chat/completions", b"", auth, b"{nope")
    assert "session" not in bad and bad["body"] == b"{nope"
    assert "session" not in routing_call(s, "GET", "/v1/models", b"", auth, b"")


def test_merge_metrics_labels_each_replica_once_per_family():
    text = ("# HELP kvsaga:x doc\n# TYPE kvsaga:x gauge\nkvsaga:x 1.0\n"
            '# HELP kvsaga:y doc\n# TYPE kvsaga:y counter\nkvsaga:y_total{model="m"} 2.0\n')
    merged = merge_metrics({"r1": text, "r2": text.replace("1.0", "3.0")})
    lines = merged.splitlines()
    assert lines.count("# TYPE kvsaga:x gauge") == 1
    assert 'kvsaga:x{replica="r1"} 1.0' in lines and 'kvsaga:x{replica="r2"} 3.0' in lines
    assert 'kvsaga:y_total{replica="r2",model="m"} 2.0' in lines
    # Families stay contiguous: both x samples come before y's TYPE line.
    assert lines.index('kvsaga:x{replica="r2"} 3.0') < lines.index("# TYPE kvsaga:y counter")


def test_replica_reports_resumes_tenant_service_and_session_tokens():
    """What an engine replica hands the router: ReplicaStats fields that parse back, each
    session's real context size, and per-tenant service counted from context growth."""
    from types import SimpleNamespace

    from kvsaga import KVCacheManager, KVSpec
    from kvsaga.integrations.ray.deployment import EngineReplica
    from kvsaga.integrations.ray.router import stats_of
    from kvsaga.routing import ReplicaStats

    mgr = KVCacheManager(KVSpec(2, 2, 16, block_size=4), 32)
    engine = SimpleNamespace(manager=mgr, scheduler=SimpleNamespace(waiting=[1, 2]))
    replica = object.__new__(EngineReplica)
    replica._seen_tokens, replica._service, replica._last_live = {}, {}, {}
    replica.settings = ServerSettings(model="x")
    # The seconds its engine thread has spent in steps (AsyncEngine.busy_s).
    replica.app = SimpleNamespace(state=SimpleNamespace(engine=SimpleNamespace(busy_s=2.5)))
    for i, sid in enumerate(("acme/s1", "acme/s2", "anon/s3", "oneshot-cmpl-1")):
        mgr.begin_step(sid, list(range(10 * i, 10 * i + 6)), now=0.0)
        mgr.allocate_slots(sid, 6, now=0.0)
        if sid not in ("acme/s2", "oneshot-cmpl-1"):
            mgr.finish_step(sid, now=0.0)
    row = replica._routing_stats(engine)
    assert row["session_tokens"] == {"acme/s1": 6, "acme/s2": 6, "anon/s3": 6,
                                     "oneshot-cmpl-1": 6}
    # A one-shot request is no tenant of its own (it would make the others look served).
    assert row["tenant_service"] == {"acme": 12.0, "anon": 6.0}
    assert (row["queue_depth"], row["running"], row["paused"]) == (2, 2, 2)
    assert row["predicted_resumes"] == 2  # paused, no hint: an agent comes back
    assert row["busy_s"] == 2.5
    parsed = stats_of(SimpleNamespace(routing_stats=row))
    assert parsed == ReplicaStats(**row) and parsed.session_tokens["anon/s3"] == 6
    # Only growth since the last report counts again.
    mgr.append_tokens("acme/s2", [99, 98])
    assert replica._routing_stats(engine)["tenant_service"] == {"acme": 14.0, "anon": 6.0}


def test_wait_loaded_returns_on_ready_or_failed_load():
    """Every request to a replica waits for its model (not only the first, which a client
    timeout may cancel), and a failed load does not hold requests for the whole timeout."""
    import threading
    from types import SimpleNamespace

    from kvsaga.integrations.ray.deployment import _wait_loaded

    ready = threading.Event()
    engine = SimpleNamespace(wait_ready=ready.wait, load_error=None)
    threading.Timer(0.2, ready.set).start()
    _wait_loaded(engine, 30.0)
    assert ready.is_set()
    # One wait with the whole budget: AsyncEngine.wait_ready itself returns at a failed
    # load or a stop (tests/serve/test_async_engine_lifecycle.py), so there is no polling.
    waits = []
    failed = SimpleNamespace(wait_ready=lambda t: waits.append(t) and False,
                             load_error=OSError("gone"))
    _wait_loaded(failed, 30.0)
    assert waits == [30.0]
