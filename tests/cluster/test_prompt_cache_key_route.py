"""An affinity-only `prompt_cache_key` has a router namespace of its own. It shared the
sessions' (`engine_id(salt, key)`), so `prompt_cache_key: "abc"` and `session_id: "abc"`
were one router entry: a steal of the hint re-homed the real session "abc" on a replica
that pulled none of its KV (no `engine_sid` in the hint's call), and the hint's steal was
counted as a session's steal and migration (review repro t_affinity2)."""

from __future__ import annotations

import asyncio
import json

import pytest

pytest.importorskip("ray.serve")

from kvsaga.integrations.ray.gateway import routing_call  # noqa: E402
from kvsaga.replica_stats import ReplicaStats  # noqa: E402
from kvsaga.routing import RouteRequest, RoutingConfig, make_router  # noqa: E402
from kvsaga.serve.settings import ServerSettings  # noqa: E402
from tests.cluster import ray_fakes  # noqa: E402

# (IDLE has room for a 4,000-token session: a session's thief must report it)
IDLE = ReplicaStats(total_blocks=1000, free_blocks=1000)
BUSY = ReplicaStats(total_blocks=1000, free_blocks=100, queue_depth=3, running=4)


def _call(extra: dict) -> dict:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], **extra}
    return routing_call(ServerSettings(), "POST", "/v1/chat/completions", b"", [],
                        json.dumps(body).encode())


def test_a_prompt_cache_key_is_not_the_session_of_the_same_name():
    step, hint = _call({"session_id": "abc"}), _call({"prompt_cache_key": "abc"})
    assert step["session"] == step["engine_sid"] == "anon/abc"
    assert not step.get("affinity_only")
    assert hint["session"] != step["session"] and hint["affinity_only"]
    assert "engine_sid" not in hint
    r = make_router("kvsaga", ["a", "b"],
                    config=RoutingConfig(steal_min_waiting=3, steal_margin=1))
    first = r.route(RouteRequest(step["session"], context_tokens=4000), {"a": IDLE, "b": BUSY})
    r.finished(first)
    assert first.replica == "a"
    # The hint's home is busy: its step goes elsewhere, the session stays where its KV is.
    got = r.route(RouteRequest(hint["session"], context_tokens=4000,
                               affinity_only=hint["affinity_only"]), {"a": BUSY, "b": IDLE})
    r.finished(got)
    nxt = r.route(RouteRequest(step["session"], context_tokens=4000), {"a": IDLE, "b": IDLE})
    assert (nxt.replica, nxt.moved_from) == ("a", None) and r.home(step["session"]) == "a"


@pytest.mark.parametrize("affinity_only", [True, False])
def test_an_affinity_only_steal_moves_nothing_and_is_not_counted(affinity_only):
    r = make_router("kvsaga", ["a", "b"],
                    config=RoutingConfig(steal_min_waiting=3, steal_margin=1))
    req = RouteRequest("k", context_tokens=4000, affinity_only=affinity_only)
    r.finished(r.route(req, {"a": IDLE, "b": BUSY}))
    got = r.route(req, {"a": BUSY, "b": IDLE})
    assert (got.replica, got.reason) == ("b", "steal") and r.home("k") == "b"
    if affinity_only:  # no session to pull: nothing moved, nothing counted
        assert (got.moved_from, got.migrate, r.num_stolen, r.num_migrated) == (None, False, 0, 0)
    else:  # a session's steal is a move, and counted
        assert (got.moved_from, got.migrate, r.num_stolen, r.num_migrated) == ("a", True, 1, 1)


def test_the_ray_router_routes_a_hint_as_affinity_only():
    """KvsagaRequestRouter hands the gateway's `affinity_only` to the router: a stolen
    hint's route names no replica to pull from."""
    async def go() -> dict:
        a = ray_fakes.StatsReplica("a", total_blocks=100, free_blocks=100)
        b = ray_fakes.StatsReplica("b", total_blocks=100, free_blocks=100)
        router = ray_fakes.make_router([a, b], steal_min_waiting=0, steal_margin=1)
        call = _call({"prompt_cache_key": "k"})
        replicas = list(router.curr_replicas.values())
        first = (await router.choose_replicas(replicas, ray_fakes.pending(call, "r1")))[0][0]
        router.on_request_completed(first.replica_id, "r1")
        (a if first.replica_id.unique_id == "a" else b).stats.update(queue_depth=1, running=1)
        again = dict(call)
        await router.choose_replicas(replicas, ray_fakes.pending(again, "r2"))
        assert again["route"]["replica"] != first.replica_id.unique_id
        return again["route"]

    route = asyncio.run(go())
    assert (route["moved_from"], route["migrate"], route["reason"]) == (None, False, "steal")
