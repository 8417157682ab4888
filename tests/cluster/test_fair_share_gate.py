"""The fair-share gate on stealing holds back a tenant above its share only while another
tenant below its share has work waiting: a tenant that was served once and left does not
disable every steal for the others (review repro r6_fair)."""

from __future__ import annotations

from kvsaga.fair_share import FairShare
from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest


def fleet(service_a: dict) -> dict:
    return {"a": ReplicaStats(total_blocks=1000, free_blocks=1000, busy_s=50.0,
                              tenant_service=service_a),
            "b": ReplicaStats(total_blocks=1000, free_blocks=900, queue_depth=6, running=4,
                              busy_s=50.0, session_tokens={"big/s": 1000},
                              tenant_service={"big": 1_000_000.0})}


def test_a_tenant_served_once_and_gone_does_not_block_stealing():
    r = KvsagaRouter(["a", "b"])
    r.homes["big/s"] = "b"
    route = r.route(RouteRequest(session="big/s", tenant="big"), fleet({"tiny": 100.0}))
    assert r.fair.share_ratio("big") > 1.9  # far above its share of the tenants seen
    assert (route.replica, route.moved_from, route.reason) == ("a", "b", "steal")


def test_a_tenant_below_its_share_with_work_waiting_holds_the_heavy_one_back():
    r = KvsagaRouter(["a", "b"])
    stats = fleet({"tiny": 100.0})
    # tiny's new session lands on b (a is given a queue for this one decision)...
    busy_a = {**stats, "a": ReplicaStats(total_blocks=1000, free_blocks=1000, queue_depth=20,
                                         running=4, tenant_service={"tiny": 100.0})}
    waiting = r.route(RouteRequest(session="tiny/t", tenant="tiny"), busy_a)
    assert waiting.replica == "b"  # ... where steps wait: tiny has work waiting
    r.homes["big/s"] = "b"
    held = r.route(RouteRequest(session="big/s", tenant="big"), stats)
    assert held.reason == "affinity"
    r.finished(held)
    r.finished(waiting)  # tiny's step is done: nobody below its share waits
    assert r.route(RouteRequest(session="big/s", tenant="big"), stats).reason == "steal"


def test_holds_back():
    f = FairShare()
    f.record("big", 90.0)
    f.record("tiny", 10.0)
    assert f.holds_back("big", ["tiny"], 1.0)
    assert not f.holds_back("big", [], 1.0)  # nobody waiting
    assert not f.holds_back("big", ["big"], 1.0)  # only itself
    assert not f.holds_back("tiny", ["big"], 1.0)  # below its share: never held back
    assert not f.holds_back("big", ["tiny"], 2.0)  # within the allowed share
