"""The fair-share gate on stealing holds back a tenant above its share only while another
tenant below its share has work waiting: a tenant that was served once and left does not
disable every steal for the others (review repro r6_fair)."""

from __future__ import annotations

import math

import pytest

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
    assert r.fair.share_ratio("big") == 1.0  # tiny has no session left: big is alone
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


def _light_waits_on_b(r: KvsagaRouter, service: dict) -> None:
    """light's new session lands on b, where steps wait (a is loaded for this decision)."""
    busy_a = {**fleet(service), "a": ReplicaStats(total_blocks=1000, free_blocks=1000,
                                                  queue_depth=20, running=4,
                                                  tenant_service=service)}
    assert r.route(RouteRequest(session="light/t", tenant="light"), busy_a).replica == "b"


def test_a_departed_tenants_service_does_not_dilute_the_live_shares():
    """Review s47 routingcore 1: replicas keep a tenant's service long after its last
    session ended. Counted in the shares, 'gone' lowered every live ratio: big, with
    1,000,000 of the live 1,000,010, fell below its share and was stolen for while light,
    below its share, waited. Shares are over the tenants with a session or a step here."""
    service = {"light": 10.0, "gone": 3_000_000.0}
    r = KvsagaRouter(["a", "b"])
    _light_waits_on_b(r, service)
    r.homes["big/s"] = "b"
    held = r.route(RouteRequest(session="big/s", tenant="big"), fleet(service))
    assert held.reason == "affinity"
    assert r.fair.live == {"big", "light"}
    assert r.fair.share_ratio("big") > 1.9


def test_a_tenant_whose_sessions_ended_leaves_the_shares():
    r = KvsagaRouter(["a", "b"])
    stats = fleet({"tiny": 100.0})
    r.finished(r.route(RouteRequest(session="tiny/t", tenant="tiny"), stats))
    r.route(RouteRequest(session="x", tenant="big"), stats)
    assert r.fair.live == {"tiny", "big"}  # tiny's session is paused, not ended
    r.session_ended("tiny/t")
    r.route(RouteRequest(session="y", tenant="big"), stats)
    assert r.fair.live == {"big"}


def test_a_tenant_entering_starts_at_most_the_lag_behind():
    """Review s47 routingcore 2: service is cumulative since the replicas started. A
    tenant that had the fleet alone for an hour stayed above a newcomer's share, held
    back while the newcomer waited, until the newcomer matched that hour. As the replica
    scheduler's catch-up, the newcomer enters at most `lag` behind, and once both have
    been served alike for that long, nobody is held back for the history."""
    f = FairShare()
    hour = 3600 * 1000.0
    f.usage = {"old": hour}
    f.enter({"old"})
    f.usage = {"old": hour, "new": 0.0}
    f.enter({"old", "new"})
    assert f.credit == {"new": hour - f.lag}
    assert f.holds_back("old", ["new"], 1.0)  # new is the lag behind: favoured for it
    both = 3600 * 500.0
    f.usage = {"old": hour + both, "new": both + f.lag}  # new made up the lag
    f.enter({"old", "new"})
    assert f.share_ratio("old") == pytest.approx(1.0)
    assert not f.holds_back("old", ["new"], 1.0)


def test_the_catch_up_follows_the_live_tenants():
    f = FairShare(lag=10.0)
    f.usage = {"a": 100.0, "b": 50.0}
    f.enter({"a", "b"})  # both enter at once, no floor yet: as reported
    assert f.credit == {}
    f.usage = {"a": 100.0, "b": 50.0, "c": 0.0}
    f.enter({"a", "b", "c"})
    assert f.credit == {"c": 40.0}  # the least live (b) less the lag
    f.enter({"a", "b"})  # c leaves: its credit goes
    assert f.credit == {} and f.share_ratio("a") == pytest.approx(2 * 100 / 150)
    f.enter({"c"})  # nobody stays: raised to the last pair's least, 50, less the lag
    assert f.credit == {"c": 40.0}
    f.enter({"b"})  # b's own service (50) is above the floor: not raised
    assert f.credit == {}


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf, "2"])
def test_bad_weights_are_refused(bad):
    """Review s47 routingcore 5: a weight of 0 or below divided by zero, NaN gave NaN
    ratios (never held back). Checked as the scheduler's tenant_weights."""
    with pytest.raises(ValueError, match=r"FairShare.weights: .*tenant_weights\['x'\]"):
        FairShare(weights={"x": bad, "y": 1.0})
    for lag in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="FairShare.lag"):
            FairShare(lag=lag)
