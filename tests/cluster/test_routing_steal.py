"""The kvsaga router's steals: a queued step taken by a less busy replica, a resuming
session moved off an overcommitted home (memory), and a step handed from a replica ahead in
busy time to one behind (balance). Placement, keys and bookkeeping: test_routing.py."""

from __future__ import annotations

import dataclasses

import pytest

from kvsaga.routing import ReplicaStats, RouteRequest, RoutingConfig, make_router
from tests.cluster.routing_stats import IDLE, busy, held


def test_kvsaga_steals_from_an_overloaded_replica_to_a_less_busy_one():
    cfg = RoutingConfig(steal_min_waiting=3, steal_margin=1)
    r = make_router("kvsaga", ["a", "b"], config=cfg)
    r.homes["s"] = "a"
    stays = r.route(RouteRequest("s"), {"a": busy(2), "b": IDLE})
    assert stays.reason == "affinity"
    r.finished(stays)  # the next step follows it (a step in flight keeps the session home)
    got = r.route(RouteRequest("s", context_tokens=4000), {"a": busy(3), "b": IDLE})
    assert (got.replica, got.moved_from, got.reason) == ("b", "a", "steal")
    assert got.migrate  # 4000 tokens: moving KV is cheaper than recomputing it
    assert r.home("s") == "b" and r.num_stolen == 1 and r.num_migrated == 1
    # The other replica has steps waiting itself: it stays even when overloaded.
    r.homes["t"] = "a"
    assert r.route(RouteRequest("t"), {"a": busy(9), "b": busy(1)}).replica == "a"
    # The other is not less busy by steal_margin: it stays.
    wide = make_router("kvsaga", ["a", "b"], config=RoutingConfig(steal_margin=20))
    wide.homes["u"] = "a"
    assert wide.route(RouteRequest("u"), {"a": busy(9), "b": IDLE}).reason == "affinity"


def test_migrate_decision_uses_the_homes_real_token_count():
    cfg = RoutingConfig(steal_min_waiting=1)
    r = make_router("kvsaga", ["a", "b"], config=cfg)
    r.homes["s"] = r.homes["t"] = "a"
    # The caller guesses 4000 tokens, but the home holds 2: recomputing 2 is cheaper.
    home = ReplicaStats(total_blocks=100, free_blocks=10, queue_depth=3, running=4,
                        session_tokens={"s": 2, "t": 4000})
    got = r.route(RouteRequest("s", context_tokens=4000), {"a": home, "b": IDLE})
    assert got.reason == "steal" and not got.migrate
    r.finished(got)
    # The caller guesses nothing; the home reports 4000: migrating wins.
    got = r.route(RouteRequest("t", context_tokens=0), {"a": home, "b": IDLE})
    assert got.reason == "steal" and got.migrate


def test_commitment_is_the_sessions_context_over_the_pool():
    assert held(s=800, t=1600).commitment == pytest.approx(1.5)
    assert held().commitment == 0.0 and held().capacity_tokens == 1600


def test_commitment_is_summed_once_per_report():
    """A report stands for one moment: a live `session_tokens` view that grows after the
    first read leaves that report's commitment as it was; the next report sees the growth.
    The memo is no field: a report's fields rebuild it (the Ray replica sends them)."""
    live = {"s": 800}
    report = ReplicaStats(total_blocks=100, free_blocks=50, session_tokens=live)
    assert report.commitment == pytest.approx(0.5)
    live["t"] = 800
    assert report.commitment == pytest.approx(0.5)
    again = ReplicaStats(**{f.name: getattr(report, f.name)
                            for f in dataclasses.fields(report) if f.init})
    assert again.commitment == pytest.approx(1.0) and again == report


def test_an_overcommitted_home_hands_a_resuming_session_to_a_roomy_replica():
    """Memory steal: home's sessions (2,400 of 1,600 tokens) cannot all stay cached, so
    the step of `s` (800 tokens) moves, with its KV, to the replica where it fits below
    max_commitment, although neither replica queues anything."""
    r = make_router("kvsaga", ["a", "b", "c"])
    r.homes["s"] = "a"
    stats = {"a": held(running=1, s=800, t=1600), "b": held(t2=1200), "c": held(t3=100)}
    got = r.route(RouteRequest("s"), stats)
    assert (got.replica, got.moved_from, got.reason, got.migrate) == ("c", "a", "steal", True)
    # No room anywhere (b and c would go above 1.0) or the home is not overcommitted: stay.
    for others, home in (({"b": held(t2=1200), "c": held(t3=1000)}, held(s=800, t=1600)),
                         ({"b": IDLE, "c": IDLE}, held(s=800, t=700))):
        r2 = make_router("kvsaga", ["a", "b", "c"])
        r2.homes["s"] = "a"
        assert r2.route(RouteRequest("s"), {"a": home, **others}).reason == "affinity"
    # A busier replica does not take it, nor one with a step waiting; max_commitment 0
    # turns the memory steal off.
    for b, cfg in ((held(running=3, t2=10), RoutingConfig()),
                   (held(queue=1, t2=10), RoutingConfig()),
                   (IDLE, RoutingConfig(max_commitment=0.0))):
        r3 = make_router("kvsaga", ["a", "b"], config=cfg)
        r3.homes["s"] = "a"
        got = r3.route(RouteRequest("s"), {"a": held(running=1, s=800, t=1600), "b": b})
        assert got.reason == "affinity"


def worked(busy_s: float, queue: int = 0, running: int = 0, paused: int = 0,
           **sessions: int) -> ReplicaStats:
    """`held`, having run batch steps for `busy_s` seconds so far."""
    return ReplicaStats(total_blocks=100, free_blocks=50, queue_depth=queue, running=running,
                        paused=paused, session_tokens=sessions, block_size=16, busy_s=busy_s)


BALANCED = RoutingConfig(busy_balance=0.1, busy_balance_min_s=0.0)
ROOM_FIRST = dataclasses.replace(BALANCED, busy_balance_force=0.0)  # room always required


def test_a_replica_ahead_in_busy_time_hands_a_step_to_the_one_furthest_behind():
    """Balance steal: nothing queues and nothing overflows, but a has worked 150 s against
    a mean of 100 s (more than 10% ahead): s's step moves, with its KV, to the idle replica
    furthest behind the mean (c), not to b (behind, but less so)."""
    r = make_router("kvsaga", ["a", "b", "c", "d"], config=BALANCED)
    r.homes["s"] = "a"
    stats = {"a": worked(150, s=400), "b": worked(80), "c": worked(60), "d": worked(110)}
    got = r.route(RouteRequest("s"), stats)
    assert (got.replica, got.moved_from, got.reason, got.migrate) == ("c", "a", "balance", True)
    assert r.home("s") == "c" and r.num_stolen == 1


@pytest.mark.parametrize("case", ["within tolerance", "under the floor", "off", "busier thief",
                                  "thief waits", "no room", "nobody behind",
                                  "no busy time yet", "no room, lead under the force share"])
def test_the_balance_steal_leaves_a_step_home(case):
    cfg, home = BALANCED, worked(150, s=400)
    other = worked(50)  # mean 100: home 50% ahead, other 50% behind
    if case == "within tolerance":
        home, other = worked(105, s=400), worked(95)  # 5% ahead < 10%
    elif case == "under the floor":  # a lone session's home on a quiet fleet: the floor
        cfg = RoutingConfig(busy_balance=0.1, busy_balance_min_s=5.0)
        home, other = worked(8, paused=1, s=400), worked(0)  # 100% ahead, but by 4 s < 5 s
    elif case == "off":
        cfg = RoutingConfig(busy_balance=0.0)
    elif case == "busier thief":
        other = worked(50, running=1)
    elif case == "thief waits":
        other = worked(50, queue=1, running=1)
        home = worked(150, running=1, s=400)
    elif case == "no room":  # with balance before room off; a lead under it: below
        cfg = ROOM_FIRST
        other = worked(50, t=1500)  # 1,500 + 400 tokens > 1,600 (max_commitment 1)
    elif case == "no room, lead under the force share":  # ahead (> 5%), not far (< 10%)
        cfg = dataclasses.replace(BALANCED, busy_balance=0.05)
        home, other = worked(108, s=400), worked(92, t=1500)
    elif case == "nobody behind":
        home, other = worked(150, s=400), worked(150)
    elif case == "no busy time yet":
        home, other = worked(0, s=400), worked(0)
    r = make_router("kvsaga", ["a", "b"], config=cfg)
    r.homes["s"] = "a"
    got = r.route(RouteRequest("s"), {"a": home, "b": other})
    assert (got.replica, got.reason) == ("a", "affinity")


def test_when_every_pool_overflows_a_balance_steal_may_take_a_replica_no_more_crowded():
    """A thrashing fleet's drain: every pool overflows (commitment > max_commitment 1), so
    no replica has room below it. a is 50% ahead in busy time at commitment 1.5 (s: 400 of
    its 2,400 tokens); c, furthest behind, would hold 1.25 + 0.25 = 1.5 with s, no more
    crowded than a: with `busy_balance_crowding` 1 the step moves there. b, behind too but
    at 1.3 + 0.25 = 1.55 > 1.5, does not take it when it is the only one behind. With
    crowding 0 (room below max_commitment only) s stays on a. (`busy_balance_force` off
    here: a's lead would move s by that rule.)"""
    def fleet(b_tokens):
        return {"a": worked(150, s=400, t=2000), "b": worked(80, u=b_tokens),
                "c": worked(60, v=2000), "d": worked(140, w=1700)}

    crowding = dataclasses.replace(ROOM_FIRST, busy_balance_crowding=1.0)
    r = make_router("kvsaga", ["a", "b", "c", "d"], config=crowding)
    r.homes["s"] = "a"
    got = r.route(RouteRequest("s"), fleet(1700))
    assert (got.replica, got.moved_from, got.reason) == ("c", "a", "balance")
    for cfg, others, reason in (
            (ROOM_FIRST, fleet(1700), "affinity"),
            (crowding, {k: v for k, v in fleet(2080).items() if k != "c"}, "affinity"),
            (crowding, {k: v for k, v in fleet(2000).items() if k != "c"}, "balance")):
        r2 = make_router("kvsaga", list(others), config=cfg)
        r2.homes["s"] = "a"
        assert r2.route(RouteRequest("s"), others).reason == reason, (cfg, others)


def test_a_home_far_ahead_hands_a_step_to_the_least_crowded_replica_behind():
    """Every pool overflows, so no replica behind has room for s (400 tokens) below
    max_commitment 1. a leads the mean (100 s) by 50%. With `busy_balance_force` 0.3 that
    lead is too far ahead to keep s for want of room: s moves to b, the least crowded
    replica behind (1,700 + 400 of 1,600 tokens: 1.31), not c, further behind but more
    crowded (1.63). Off (0) or with a lead under the force share (0.6), and when nobody
    is behind, s stays on a; a replica behind with room still comes first. The default
    (0.1) moves it."""
    def fleet(c_tokens=2200, **extra):
        return {"a": worked(150, s=400, t=2000), "b": worked(80, u=1700),
                "c": worked(60, v=c_tokens), "d": worked(110, w=1700), **extra}

    def route(cfg, stats):
        r = make_router("kvsaga", list(stats), config=cfg)
        r.homes["s"] = "a"
        return r.route(RouteRequest("s"), stats)

    force = dataclasses.replace(BALANCED, busy_balance_force=0.3)
    got = route(force, fleet())
    assert (got.replica, got.moved_from, got.reason) == ("b", "a", "balance")
    assert route(ROOM_FIRST, fleet()).reason == "affinity"
    assert route(BALANCED, fleet()).replica == "b"
    assert route(dataclasses.replace(BALANCED, busy_balance_force=0.6), fleet()).reason == (
        "affinity")
    level = {k: worked(150, u=1700) for k in ("b", "c", "d")}
    assert route(force, {"a": worked(150, s=400, t=2000), **level}).reason == "affinity"
    assert route(force, fleet(c_tokens=100)).replica == "c"  # room first, furthest behind
    with pytest.raises(ValueError, match="busy_balance_force"):
        RoutingConfig(busy_balance_force=-1.0)


def test_a_replica_ahead_in_busy_time_steals_no_step():
    """Queue and memory steals count steps and memory, not work done: without this rule
    they handed steps to the replica furthest ahead of the fleet, which the balance steal,
    blocked for room in a thrashing fleet, could not move back (assistant, 32 GPUs x 16
    sessions, fit seed 1: load_imbalance 1.203 with it, 1.120 without). b has worked 300 s
    against a mean of 150 s; c is behind. Both idle, b first in order: the step goes to c
    (the rule before picked b); with c waiting, nobody takes it."""
    queued = worked(100, queue=2, running=4)  # busy 6 >= steal_margin 3 more than b, c
    overflowing = worked(100, running=1, s=800, t=1600)  # commitment 1.5
    for home in (queued, overflowing):
        r = make_router("kvsaga", ["a", "b", "c"])
        r.homes["s"] = "a"
        got = r.route(RouteRequest("s"), {"a": home, "b": worked(300), "c": worked(50)})
        assert (got.replica, got.moved_from, got.reason) == ("c", "a", "steal")
        r2 = make_router("kvsaga", ["a", "b", "c"])
        r2.homes["s"] = "a"
        stats = {"a": home, "b": worked(300), "c": worked(50, queue=1, running=1)}
        assert r2.route(RouteRequest("s"), stats).reason == "affinity"
        # With the balance steal off, busy time is not read: b takes it.
        off = make_router("kvsaga", ["a", "b", "c"], config=RoutingConfig(busy_balance=0.0))
        off.homes["s"] = "a"
        assert off.route(RouteRequest("s"), stats).replica == "b"


def test_a_thief_ahead_by_less_than_the_floor_still_steals():
    """Early in a run the mean is small: b leads it (5 s) by 3 s, 60%, but by less than
    `busy_balance_min_s` (10 s), so it still takes a's queued step; a lead of 12 s over
    a mean of 9 s keeps it out."""
    for b_busy, want in ((8, "b"), (21, "a")):
        r = make_router("kvsaga", ["a", "b", "c"])
        r.homes["s"] = "a"
        stats = {"a": worked(4, queue=2, running=4), "b": worked(b_busy),
                 "c": worked(3, queue=1, running=1)}
        assert r.route(RouteRequest("s"), stats).replica == want, b_busy


def _steal_then_drain(r, a_busy: float, b_busy: float, cycles: int = 3) -> list[tuple]:
    """s starts on b. Each cycle b's queue builds (2 waiting, 5 busy) while a runs another
    session, then drains: (replica, reason) of s's step at each."""
    r.homes["s"] = "b"
    trail = []
    for _ in range(cycles):
        for queue, running in ((2, 3), (0, 1)):
            mine = {"s": 400} if r.home("s") == "a" else {}
            stats = {"a": worked(a_busy, running=1, o=100, **mine),
                     "b": worked(b_busy, queue=queue, running=running,
                                 **({} if mine else {"s": 400}))}
            route = r.route(RouteRequest("s"), stats)
            r.finished(route)
            trail.append((route.replica, route.reason))
    return trail


def test_a_stolen_session_is_not_balanced_straight_back():
    """Review s47 routingcore 3: a at 108 s, b at 92 s (mean 100). a leads by 8 s, over
    `busy_balance` x the mean (5 s) but under `busy_balance_min_s` (10 s), so it may steal
    (`_lead_limit`) and, running other work, is a balance source (`_ahead`). It stole s
    while b's queue built and handed it back by the balance steal as soon as it drained:
    six moves and six migrations in three cycles, the busy times unchanged. Now s stays
    on a: one move."""
    r = make_router("kvsaga", ["a", "b"])
    trail = _steal_then_drain(r, 108.0, 92.0)
    assert trail == [("a", "steal")] + [("a", "affinity")] * 5
    assert (r.num_stolen, r.num_migrated) == (1, 1)


def test_a_thief_whose_lead_grew_past_the_steal_limit_hands_the_session_back():
    """The hold lasts while the thief is within the lead that let it steal: once a leads
    the mean by more than `busy_balance_min_s` (15 s > 10 s), the balance steal moves s
    back to b."""
    r = make_router("kvsaga", ["a", "b"])
    r.homes["s"] = "b"
    stats = {"a": worked(108, running=1, o=100), "b": worked(92, queue=2, running=3, s=400)}
    stolen = r.route(RouteRequest("s"), stats)
    r.finished(stolen)
    assert (stolen.replica, stolen.reason) == ("a", "steal")
    stats = {"a": worked(115, running=1, o=100, s=400), "b": worked(85)}
    got = r.route(RouteRequest("s"), stats)
    assert (got.replica, got.moved_from, got.reason) == ("b", "a", "balance")


def test_a_stolen_session_may_still_be_balanced_to_a_third_replica():
    """Only the undoing of the steal is held: a (108 s) stole s from b (94 s) while c
    (95 s) had a step waiting; once both drain, the balance steal, which would have taken
    b (furthest behind the 99 s mean), hands s to c."""
    r = make_router("kvsaga", ["a", "b", "c"])
    r.homes["s"] = "b"
    stats = {"a": worked(108, running=1, o=100), "b": worked(94, queue=2, running=3, s=400),
             "c": worked(95, queue=1, running=1)}
    stolen = r.route(RouteRequest("s"), stats)
    r.finished(stolen)
    assert (stolen.replica, stolen.reason) == ("a", "steal")
    stats = {"a": worked(108, running=1, o=100, s=400), "b": worked(94), "c": worked(95)}
    got = r.route(RouteRequest("s"), stats)
    assert (got.replica, got.moved_from, got.reason) == ("c", "a", "balance")


def test_a_lone_session_on_a_quiet_fleet_stays_home_by_default():
    """Two replicas, one session, nothing else running: its home leads the mean by half
    the work the session has done. The default floor (10 s of work) keeps it home; with no
    floor it would move at this step and, as the other replica pulls ahead in turn, back
    again a few steps later."""
    stats = {"a": worked(8, paused=1, s=400), "b": worked(0)}  # lead 4 s over a 4 s mean
    r = make_router("kvsaga", ["a", "b"])
    r.homes["s"] = "a"
    assert r.route(RouteRequest("s"), stats).reason == "affinity"
    floorless = make_router("kvsaga", ["a", "b"], config=RoutingConfig(busy_balance_min_s=0.0))
    floorless.homes["s"] = "a"
    assert floorless.route(RouteRequest("s"), stats).reason == "balance"


def test_a_lone_home_in_a_worked_fleets_drain_moves_under_the_floor():
    """A fleet that has worked (mean 6 s) drains: a holds one session and leads the mean by
    1 s (17%, over busy_balance), less than the 10 s floor but less than the mean too, so
    its lead is the drain's, not its own session's on a quiet fleet: the step moves to the
    replica furthest behind. The rule before `busy_balance_quiet` (0: the floor holds
    every lone home) kept it on a, the 64-GPU bfcl burst's imbalance. b holds another
    session (a drain's lone homes); without it s is alone in the fleet, and the default
    (`busy_balance_alone`) keeps it home: moving it would shorten nobody's wait."""
    stats = {"a": worked(7, paused=1, s=400), "b": worked(6, paused=1), "c": worked(5),
             "d": worked(6)}
    r = make_router("kvsaga", ["a", "b", "c", "d"])
    r.homes["s"] = "a"
    got = r.route(RouteRequest("s"), stats)
    assert (got.replica, got.moved_from, got.reason) == ("c", "a", "balance")
    old = make_router("kvsaga", ["a", "b", "c", "d"],
                      config=RoutingConfig(busy_balance_quiet=0.0))
    old.homes["s"] = "a"
    assert old.route(RouteRequest("s"), stats).reason == "affinity"
    alone = {**stats, "b": worked(6)}
    for cfg, reason in ((None, "affinity"), (RoutingConfig(busy_balance_alone=False), "balance")):
        r = make_router("kvsaga", ["a", "b", "c", "d"], config=cfg)
        r.homes["s"] = "a"
        assert r.route(RouteRequest("s"), alone).reason == reason, cfg


def test_a_lead_of_at_least_busy_balance_quiet_x_the_mean_is_a_quiet_fleets():
    """Three replicas, only a has worked (9 s): it leads the mean (3 s) by 6 s = 2 x the
    mean, its own session's work on an otherwise idle fleet; the floor (10 s) keeps the
    session home. With `busy_balance_quiet` 3 a lead of 2 x the mean is a drain's and the
    step moves (with `busy_balance_alone` off: s is alone in the fleet, which the default
    holds whatever the lead); with no floor it moves too."""
    stats = {"a": worked(9, paused=1, s=400), "b": worked(0), "c": worked(0)}
    for cfg, reason in ((RoutingConfig(), "affinity"),
                        (RoutingConfig(busy_balance_quiet=3.0, busy_balance_alone=False),
                         "balance"),
                        (RoutingConfig(busy_balance_quiet=3.0), "affinity"),
                        (RoutingConfig(busy_balance_min_s=0.0), "balance")):
        r = make_router("kvsaga", ["a", "b", "c"], config=cfg)
        r.homes["s"] = "a"
        assert r.route(RouteRequest("s"), stats).reason == reason, cfg


@pytest.mark.parametrize("other_work", [{"running": 1}, {"paused": 2}])
def test_a_shared_home_needs_no_floor(other_work):
    """The same 4 s lead on a home that also runs a step, or holds another paused session:
    moving s spreads work, so the default floor does not hold it back."""
    r = make_router("kvsaga", ["a", "b"])
    r.homes["s"] = "a"
    stats = {"a": worked(8, s=400, **{"paused": 1, **other_work}), "b": worked(0)}
    assert r.route(RouteRequest("s"), stats).reason == "balance"


def test_a_replica_that_does_not_report_is_out_of_the_busy_time_mean():
    """b has not reported (no stats yet): the mean is over a and c only, and b cannot be
    the thief (its busy time is unknown); c, behind that mean, is."""
    r = make_router("kvsaga", ["a", "b", "c"], config=BALANCED)
    r.homes["s"] = "a"
    got = r.route(RouteRequest("s"), {"a": worked(150, s=400), "c": worked(50)})
    assert (got.replica, got.reason) == ("c", "balance")
    r2 = make_router("kvsaga", ["a", "b"], config=BALANCED)
    r2.homes["s"] = "a"
    assert r2.route(RouteRequest("s"), {"a": worked(150, s=400)}).reason == "affinity"


def test_a_queue_steal_goes_first_to_the_least_loaded_not_the_least_worked():
    """When home's queue is over the margin, the queue steal decides (least predicted
    load) even if busy time is uneven too. (c, at 90 s, is within `busy_balance` of the
    mean: a thief further ahead takes nothing.)"""
    r = make_router("kvsaga", ["a", "b", "c"], config=BALANCED)
    r.homes["s"] = "a"
    stats = {"a": worked(150, queue=3, running=4, s=400), "b": worked(10, running=1),
             "c": worked(90)}
    got = r.route(RouteRequest("s"), stats)
    assert (got.replica, got.reason) == ("c", "steal")
