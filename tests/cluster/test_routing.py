"""The router implementation that the Ray adapter and the cluster simulator share: keys,
placement, affinity, fair share and bookkeeping. The steals (queue, memory, busy-time
balance): test_routing_steal.py."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.routing import (
    ROUTERS,
    FairShare,
    ReplicaStats,
    Route,
    RouteRequest,
    RoutingConfig,
    affinity_key,
    count_predicted_resumes,
    make_router,
    prefix_key,
    session_key,
)
from tests.cluster.routing_stats import IDLE, busy, held


def test_session_key_precedence():
    assert session_key({"session_id": "a", "prompt_cache_key": "c"}, {"X-Session-ID": "b"}) == "a"
    assert session_key({"prompt_cache_key": "c"}, {"x-session-id": "b"}) == "b"
    assert session_key({"session_id": ""}, None) is None
    assert session_key({"session_id": 3}) is None
    # An empty one is skipped, as the server skips it (`resolve_session_id`).
    assert session_key({"session_id": ""}, {"X-Session-ID": "b"}) == "b"
    # prompt_cache_key names no session (OpenAI's shared caching hint)...
    assert session_key({"prompt_cache_key": "c"}, {}) is None
    assert session_key({"session_id": "", "prompt_cache_key": "c"}, {"X-Session-ID": ""}) is None


def test_affinity_key_is_the_session_else_the_prompt_cache_key():
    # ...but requests sharing it are routed together.
    assert affinity_key({"prompt_cache_key": "c"}, {}) == "c"
    assert affinity_key({"session_id": "", "prompt_cache_key": "c"}, {"X-Session-ID": ""}) == "c"
    assert affinity_key({"session_id": "a", "prompt_cache_key": "c"}) == "a"
    assert affinity_key({"prompt_cache_key": "c"}, {"X-Session-ID": "b"}) == "b"
    assert affinity_key({"prompt_cache_key": 3}) is None and affinity_key({}) is None


def test_prefix_key_is_the_system_prompt():
    a = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "x"}]}
    b = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "y"}]}
    c = {"messages": [{"role": "user", "content": "x"}]}
    assert prefix_key(a) == prefix_key(b) is not None
    assert prefix_key(c) is None
    assert prefix_key({"prompt": "p" * 300}) == prefix_key({"prompt": "p" * 256 + "q"})


def test_make_router_names_and_errors():
    assert set(ROUTERS) == {"round-robin", "affinity", "kvsaga"}
    with pytest.raises(ValueError, match="unknown router 'x'"):
        make_router("x")
    with pytest.raises(RuntimeError, match="no live replica"):
        make_router("kvsaga").route(RouteRequest("s"), {})
    with pytest.raises(ValueError, match="replica must be"):
        make_router("kvsaga", [""])


def test_replica_stats_validation():
    with pytest.raises(ValueError, match="queue_depth"):
        ReplicaStats(queue_depth=-1)
    with pytest.raises(ValueError, match="exceed total"):
        ReplicaStats(total_blocks=4, free_blocks=3, evictable_blocks=2)
    with pytest.raises(ValueError, match=r"tenant_service\['t'\]"):
        ReplicaStats(tenant_service={"t": -1.0})
    with pytest.raises(ValueError, match="session_tokens must be a mapping"):
        ReplicaStats(session_tokens=[1])
    with pytest.raises(ValueError, match="block_size must be > 0"):
        ReplicaStats(block_size=0)
    with pytest.raises(ValueError, match="max_commitment"):
        RoutingConfig(max_commitment=-0.5)
    with pytest.raises(ValueError, match="steal_min_waiting"):
        RoutingConfig(steal_min_waiting=-1)
    with pytest.raises(ValueError, match="link_bandwidth"):
        RoutingConfig(link_bandwidth=0)
    for bad in (-1.0, float("nan"), "1"):
        with pytest.raises(ValueError, match="busy_s"):
            ReplicaStats(busy_s=bad)
        with pytest.raises(ValueError, match="busy_balance"):
            RoutingConfig(busy_balance=bad)
        with pytest.raises(ValueError, match="busy_balance_quiet"):
            RoutingConfig(busy_balance_quiet=bad)
        with pytest.raises(ValueError, match="busy_balance_crowding"):
            RoutingConfig(busy_balance_crowding=bad)


FINITE_FIELDS = ("steal_margin", "resume_weight", "prefix_slack", "steal_max_share",
                 "max_commitment", "busy_balance", "busy_balance_min_s", "busy_balance_quiet",
                 "busy_balance_crowding", "busy_balance_force", "migrate_latency_s",
                 "link_bandwidth", "bytes_per_token")


@pytest.mark.parametrize("name", FINITE_FIELDS)
def test_routing_config_values_must_be_finite(name):
    """Review s47 routingcore 6: `--routing-config`'s JSON reads Infinity; with
    resume_weight=inf every predicted load was inf x 0 = nan and every new session went
    to the first replica, whatever its queue."""
    with pytest.raises(ValueError, match=f"RoutingConfig.{name} must be a finite number"):
        RoutingConfig(**{name: float("inf")})


def test_steal_margin_must_be_above_zero():
    """Review s47 routingcore 4: with a margin of 0 the queue rule held at every step and an
    equally idle replica stole: a lone session moved, with its KV, at each step."""
    with pytest.raises(ValueError, match="steal_margin must be > 0"):
        RoutingConfig(steal_margin=0.0)
    assert RoutingConfig(steal_margin=0.5).steal_margin == 0.5


@pytest.mark.parametrize("config", [{}, {"steal_margin": 1.0}, "kvsaga"])
def test_the_router_config_must_be_a_routing_config(config):
    """Review s47 routingcore 9: an empty dict silently became the defaults, a filled one
    failed at the first decision with an AttributeError naming neither."""
    with pytest.raises(ValueError, match="config must be a RoutingConfig"):
        make_router("kvsaga", ["a", "b"], config=config)
    assert make_router("kvsaga", ["a"], config=None).config == RoutingConfig()


@pytest.mark.parametrize("tokens", ["120", -1_000_000_000, float("nan"), 12.0, True, None])
def test_replica_stats_refuses_a_bad_session_token_count(tokens):
    """Each session's context must be an int >= 0, refused at the report naming the
    session: it was accepted, and a router summing it (`commitment`) at a decision far
    from the report then failed ('120') or routed on a negative or nan commitment (review
    s46 simcluster, stats_tokens.py)."""
    assert ReplicaStats(session_tokens={"s0": 0, "s1": 120}).commitment == pytest.approx(7.5)
    with pytest.raises(ValueError, match=r"session_tokens\['s1'\] must be an int >= 0"):
        ReplicaStats(session_tokens={"s0": 5, "s1": tokens})


def test_stats_from_manager():
    mgr = KVCacheManager(KVSpec(2, 2, 16, block_size=4), 16)
    mgr.begin_step("s", list(range(10)))
    mgr.allocate_slots("s", 10)
    st = ReplicaStats.from_manager(mgr, queue_depth=3)
    assert (st.total_blocks, st.free_blocks, st.running, st.queue_depth) == (16, 13, 1, 3)
    mgr.finish_step("s")
    st = ReplicaStats.from_manager(mgr)
    assert (st.evictable_blocks, st.paused, st.running) == (3, 1, 0)


def test_round_robin_ignores_sessions():
    r = make_router("round-robin", ["a", "b"])
    stats = {"a": IDLE, "b": IDLE}
    got = []
    for _ in range(4):  # each step finished before the next (sequential agent steps)
        route = r.route(RouteRequest("s"), stats)
        r.finished(route)
        got.append(route.replica)
    assert got == ["a", "b", "a", "b"]


def test_affinity_is_sticky_and_consistent():
    r = make_router("affinity", ["a", "b", "c"])
    stats = {"a": busy(50), "b": IDLE, "c": IDLE}
    homes = {s: r.route(RouteRequest(s), stats).replica for s in map(str, range(60))}
    assert len(set(homes.values())) == 3  # spreads
    for s, h in homes.items():  # sticky even when overloaded: it never steals
        assert r.route(RouteRequest(s), stats).replica == h
    # Removing a replica moves only its sessions.
    r.remove_replica("c")
    for s, h in homes.items():
        got = r.route(RouteRequest(s), stats)
        if h != "c":
            assert got.replica == h
        else:
            assert got.reason == "lost" and got.moved_from == "c"


def test_kvsaga_new_sessions_go_least_loaded_then_stick():
    r = make_router("kvsaga", ["a", "b"])
    stats = {"a": busy(1, running=3), "b": IDLE}
    first = r.route(RouteRequest("s1"), stats)
    assert first == Route("b", reason="new")
    # b is no longer idle; the session stays on b while b is not busier than a by
    # steal_margin steps.
    stats = {"a": IDLE, "b": busy(0, running=1)}
    r.finished(first)
    assert r.route(RouteRequest("s1"), stats) == Route("b", reason="affinity")


def test_kvsaga_in_flight_spreads_a_burst():
    r = make_router("kvsaga", ["a", "b", "c"])
    stats = {x: IDLE for x in "abc"}
    got = {r.route(RouteRequest(f"s{i}"), stats).replica for i in range(3)}
    assert got == {"a", "b", "c"}


def test_kvsaga_prefix_hot_placement():
    r = make_router("kvsaga", ["a", "b"])
    first = r.route(RouteRequest("s1", prefix_key="sys"), {"a": IDLE, "b": IDLE})
    r.finished(first)
    assert first.replica == "a"
    # Equally loaded by steps, b holds fewer paused sessions: b wins unless a has the prefix.
    stats = {"a": ReplicaStats(total_blocks=100, free_blocks=90, paused=3), "b": IDLE}
    second = r.route(RouteRequest("s2", prefix_key="sys"), stats)
    assert (second.replica, second.reason) == ("a", "prefix")
    r.finished(second)
    other = r.route(RouteRequest("s3", prefix_key="other"), stats)
    assert (other.replica, other.reason) == ("b", "new")
    # A replica with more steps in flight is never chosen for its prefix.
    busy_a = {"a": busy(0, running=2), "b": IDLE}
    assert r.route(RouteRequest("s4", prefix_key="sys"), busy_a).replica == "b"


def test_new_sessions_avoid_overcommitted_replicas():
    r = make_router("kvsaga", ["a", "b"])
    # a is idle by steps but its sessions overflow its pool; b runs two steps.
    stats = {"a": held(s=2000), "b": held(running=2, t=100)}
    assert r.route(RouteRequest("new"), stats).replica == "b"
    off = make_router("kvsaga", ["a", "b"], config=RoutingConfig(max_commitment=0.0))
    assert off.route(RouteRequest("new"), stats).replica == "a"
    # Every replica overcommitted: predicted load decides again.
    both = {"a": held(s=2000), "b": held(running=2, t=2000)}
    assert make_router("kvsaga", ["a", "b"]).route(RouteRequest("n"), both).replica == "a"


def test_new_sessions_count_predicted_resumes():
    r = make_router("kvsaga", ["a", "b"])
    # a runs one step; b runs none but expects three paused sessions back soon.
    stats = {"a": ReplicaStats(total_blocks=100, free_blocks=90, running=1),
             "b": ReplicaStats(total_blocks=100, free_blocks=90, paused=3,
                               predicted_resumes=3)}
    assert r.route(RouteRequest("s"), stats).replica == "a"
    blind = make_router("kvsaga", ["a", "b"], config=RoutingConfig(resume_weight=0.0))
    assert blind.route(RouteRequest("s"), stats).replica == "b"


def test_count_predicted_resumes_by_hint_and_horizon():
    mgr = KVCacheManager(KVSpec(2, 2, 16, block_size=4), 32)
    for i, (sid, expected) in enumerate((("soon", 1.0), ("late", 100.0), ("unknown", None))):
        mgr.begin_step(sid, list(range(10 * i, 10 * i + 6)), now=0.0)  # nothing shared
        mgr.allocate_slots(sid, 6, now=0.0)
        mgr.finish_step(sid, now=0.0, expected_s=expected)
    mgr.begin_step("running", list(range(6)), now=0.0)
    assert count_predicted_resumes(mgr, now=0.0, horizon_s=10.0) == 2  # soon + unknown
    assert count_predicted_resumes(mgr, now=95.0, horizon_s=10.0) == 3  # late is due now
    st = ReplicaStats.from_manager(mgr, now=0.0, resume_horizon_s=10.0)
    assert st.predicted_resumes == 2 and st.paused == 3 and st.block_size == 4
    assert dict(st.session_tokens) == {"soon": 6, "late": 6, "unknown": 6, "running": 6}


def test_migrate_versus_recompute_by_cost():
    cfg = RoutingConfig()
    assert not cfg.should_migrate(0)
    # A handful of tokens: the fixed latency of a migration exceeds their recompute.
    assert not cfg.should_migrate(4)
    assert cfg.should_migrate(2000)
    slow = RoutingConfig(link_bandwidth=1e6)  # a slow link: recompute instead
    assert not slow.should_migrate(2000)


def test_fair_share_blocks_stealing_for_heavy_tenants():
    r = make_router("kvsaga", ["a", "b"])
    r.fair.record("heavy", 90.0)
    r.fair.record("light", 10.0)
    # light has a step waiting on a (the gate holds only while someone below their share
    # waits: tests/cluster/test_fair_share_gate.py)
    assert r.route(RouteRequest("l0", tenant="light"), {"a": busy(5), "b": busy(6)}).replica == "a"
    r.homes["h"] = r.homes["l"] = "a"
    stats = {"a": busy(5), "b": IDLE}
    assert r.route(RouteRequest("h", tenant="heavy"), stats).replica == "a"
    assert r.route(RouteRequest("l", tenant="light"), stats).replica == "b"


def test_fair_share_sums_the_service_every_replica_reports():
    r = make_router("kvsaga", ["a", "b", "c"])
    # "heavy" is served a little on each replica, "light" a lot on one: across the fleet
    # heavy has had 3 x 40 = 120 and light 100, so heavy is the one above its share.
    a = ReplicaStats(total_blocks=100, free_blocks=10, queue_depth=5, running=4,
                     tenant_service={"heavy": 40.0})
    b = ReplicaStats(total_blocks=100, free_blocks=90, tenant_service={"heavy": 40.0})
    c = ReplicaStats(total_blocks=100, free_blocks=90,
                     tenant_service={"heavy": 40.0, "light": 100.0})
    r.homes["h"] = r.homes["l"] = "a"
    stats = {"a": a, "b": b, "c": c}
    # A new light session waits to start on b or c: someone below its share waits.
    assert r.route(RouteRequest("l0", tenant="light"), stats).replica != "a"
    assert r.route(RouteRequest("h", tenant="heavy"), stats).replica == "a"
    assert r.fair.usage == {"heavy": 120.0, "light": 100.0}
    assert r.route(RouteRequest("l", tenant="light"), stats).reason == "steal"


def test_fair_share_ratio():
    f = FairShare(weights={"a": 3.0})
    assert f.share_ratio("a") == 0.0
    f.record("a", 3.0)
    f.record("b", 1.0)
    assert f.share_ratio("a") == pytest.approx(1.0)
    assert f.share_ratio("b") == pytest.approx(1.0)
    assert f.share_ratio("c") == 0.0
    with pytest.raises(ValueError):
        f.record("a", -1.0)


def test_sync_and_finished_bookkeeping():
    r = make_router("kvsaga", ["a", "b"])
    route = r.route(RouteRequest("s"), {"a": IDLE, "b": IDLE})
    assert r.in_flight[route.replica] == 1
    r.finished(route)
    r.finished(route)  # idempotent at zero
    assert r.in_flight[route.replica] == 0
    assert r.sync(["c"]) == ["s"]
    assert r.replicas == ["c"]
    got = r.route(RouteRequest("s"), {})
    assert got == Route("c", moved_from=route.replica, reason="lost")
    r.session_ended("s")
    assert r.home("s") is None


def test_a_replica_added_again_starts_with_no_routed_steps():
    """Ties go to the replica routed the fewest steps: one that was removed and added back
    (a restart) holds nothing, so its old count must not make it lose every tie."""
    r = make_router("kvsaga", ["a", "b"])
    for i in range(3):
        r.finished(r.route(RouteRequest(f"s{i}"), {"a": IDLE, "b": busy(3)}))
    r.finished(r.route(RouteRequest("s3"), {"a": busy(3), "b": IDLE}))
    assert r.routed == {"a": 3, "b": 1}
    r.remove_replica("a")
    r.add_replica("a")  # (it comes last in the order now: the tie is decided by counts)
    assert r.routed["a"] == 0
    r.finished(r.route(RouteRequest("fresh"), {"a": IDLE, "b": IDLE}))
    assert r.routed == {"a": 1, "b": 1}


def test_move_target_removed_before_the_move_arrived_homes_the_session_back():
    """A session stolen from a to b, b removed before the step reached it (the move
    unconfirmed): the session's context and KV are still on a, alive, so a is its home
    again and it is not lost (routed as lost from b, it was recomputed elsewhere while a
    kept its copy; review repro move_target_dies)."""
    r = make_router("kvsaga", ["a", "b", "c"])
    r.homes["t/s1"] = "a"
    stats = {"a": ReplicaStats(total_blocks=1000, free_blocks=900, queue_depth=5, running=3,
                               session_tokens={"t/s1": 2000}),
             "b": ReplicaStats(total_blocks=1000, free_blocks=1000),
             "c": ReplicaStats(total_blocks=1000, free_blocks=1000, busy_s=0.0)}
    first = r.route(RouteRequest(session="t/s1", tenant="t"), stats)
    assert first.moved_from == "a" and r.unconfirmed_move("t/s1", stats) is not None
    assert r.remove_replica(first.replica) == []
    assert r.home("t/s1") == "a" and "t/s1" not in r.lost and "t/s1" not in r.moves
    stats.pop(first.replica)
    retry = r.route(RouteRequest(session="t/s1", tenant="t"), stats)
    assert retry.moved_from in (None, "a") and retry.reason != "lost"
    # A confirmed move is no longer undone: the session then lived on b and is lost with it.
    r2 = make_router("kvsaga", ["a", "b"])
    r2.homes["t/s2"] = "b"
    assert r2.remove_replica("b") == ["t/s2"] and r2.lost == {"t/s2": "b"}
