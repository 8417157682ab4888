"""The fair-share check of a steal (`KvsagaRouter._held_back`) reads each session in flight
once a decision (review s52 routing 1): it walked every session in flight for each replica
with work waiting, and tested each session's room on every idle replica, so a decision on a
loaded fleet cost replicas x sessions x idle replicas (64 replicas, 4,000 sessions in flight:
38 ms). It then read every tenant's sessions on a replica for each tenant, and the sessions
of tenants whose answer `holds_back` drops (review s52 diffrouting 1): it reads the sessions
in flight of the tenants below their share, each once. Its answer is unchanged
(`test_held_back_answers_as_the_rule_says`, with stamped reports and real steals, and the
two directed cases its rewrite rests on), and `Router.replica_sessions`, which it reads,
stays `session_steps` turned round and keyed by each session's tenant."""

from __future__ import annotations

import functools
import operator
import random

import pytest

from kvsaga._validate import is_int
from kvsaga.routing import KvsagaRouter, ReplicaStats, Route, RouteRequest

REPLICAS = [f"r{i}" for i in range(8)]


class _CountedItems(dict):
    """A dict that counts the passes over its items."""

    passes = 0

    def items(self):
        type(self).passes += 1
        return super().items()


def _loaded_fleet(sessions: int):
    """r0 holds H (tenant "big", far above its share) with steps waiting; tenant "small"'s
    sessions (20,000 tokens each) are queued on r1..r6; r7 is idle with room for 1,600
    tokens: no small session could go there, so nothing holds H's steal back."""
    router = KvsagaRouter(REPLICAS)
    tokens = {x: {} for x in REPLICAS}
    placed = {x: ReplicaStats(total_blocks=100, free_blocks=100) for x in REPLICAS}
    for k in range(sessions):
        x = REPLICAS[1 + k % 6]
        route = router.route(RouteRequest(f"s{k}", tenant="small"), {x: placed[x]})
        assert route.replica == x
        tokens[x][f"s{k}"] = 20000
    router.homes["H"] = "r0"
    stats = {x: ReplicaStats(total_blocks=2000, free_blocks=0, queue_depth=5, running=4,
                             session_tokens=tokens[x], block_size=16)
             for x in REPLICAS[1:7]}
    stats["r0"] = ReplicaStats(total_blocks=2000, free_blocks=0, queue_depth=9, running=4,
                               tenant_service={"big": 1e6, "small": 10.0},
                               session_tokens={"H": 100}, block_size=16)
    stats["r7"] = ReplicaStats(total_blocks=100, free_blocks=100, block_size=16)
    return router, stats


@pytest.mark.parametrize("sessions", [60, 600])
def test_a_steal_decision_reads_the_sessions_in_flight_once(sessions, monkeypatch):
    router, stats = _loaded_fleet(sessions)
    router.session_steps = _CountedItems(router.session_steps)
    _CountedItems.passes = 0
    room_tests = []
    has_room = KvsagaRouter._has_room
    monkeypatch.setattr(KvsagaRouter, "_has_room", staticmethod(
        lambda x, tokens, st: room_tests.append(x) or has_room(x, tokens, st)))
    route = router.route(RouteRequest("H", tenant="big", context_tokens=100), stats)
    assert (route.replica, route.moved_from, route.reason) == ("r7", "r0", "steal")
    # before: one pass per replica with work waiting (6), and a room test per session
    # (and per idle replica): 60 and 600
    assert _CountedItems.passes == 0
    assert len(room_tests) <= 2 * len(REPLICAS)


class _ReadCount(dict):
    """One tenant's sessions on a replica (a leaf of `replica_sessions`) that counts the
    entries read from it."""

    reads = 0

    def items(self):
        for item in super().items():
            type(self).reads += 1
            yield item


def _count_reads(index: dict) -> dict:
    """`index` with each dict of counts (session -> steps) made a `_ReadCount`: as landed
    in 3c25e1eb, replica -> session -> steps; now replica -> tenant -> session -> steps."""
    if all(isinstance(v, int) for v in index.values()):
        return _ReadCount(index)
    return {k: _count_reads(v) for k, v in index.items()}


def _tenants_fleet(tenants: int, rich: int):
    """8 replicas. r0 holds H (tenant "big", far above its share) with steps waiting;
    `tenants` tenants below their share each have sessions in flight on r1..r6 (20,000
    tokens each, steps waiting there), and tenant "rich" (above its share too) `rich`;
    r7 is idle with room for 1,600 tokens. No session could go to r7, so the answer
    (nothing holds H back) needs every tenant below its share checked on every replica."""
    router = KvsagaRouter(REPLICAS)
    tokens: dict[str, dict[str, int]] = {x: {} for x in REPLICAS}
    placed = {x: ReplicaStats(total_blocks=100, free_blocks=100) for x in REPLICAS}
    owners = [f"t{i}" for i in range(tenants)] * 6 + ["rich"] * rich
    for k, tenant in enumerate(owners):
        x = REPLICAS[1 + k % 6]
        route = router.route(RouteRequest(f"s{k}", tenant=tenant), {x: placed[x]})
        assert route.replica == x
        tokens[x][f"s{k}"] = 20000
    service = {f"t{i}": 10.0 for i in range(tenants)} | {"big": 1e6, "rich": 1e6}
    stats = {x: ReplicaStats(total_blocks=2000, free_blocks=0, queue_depth=5, running=4,
                             session_tokens=tokens[x], block_size=16,
                             tenant_service=service)
             for x in REPLICAS[1:7]}
    stats["r0"] = ReplicaStats(total_blocks=2000, free_blocks=0, queue_depth=9, running=4,
                               tenant_service=service, session_tokens={"H": 100},
                               block_size=16)
    stats["r7"] = ReplicaStats(total_blocks=100, free_blocks=100, block_size=16)
    router.fair.observe((stats.get(r) for r in router.replicas),
                        router.live_tenants() | {"big"})
    assert router.fair.share_ratio("rich") >= 1.0 > router.fair.share_ratio("t0")
    return router, stats, len(owners) - rich


@pytest.mark.parametrize("rich", [0, 60])
def test_a_decision_reads_each_session_below_its_share_once(rich):
    """8 tenants below their share (and `rich` sessions of one above it): one decision
    reads each session in flight of the tenants below their share once (as landed in
    3c25e1eb it read every session on a replica for each tenant: 7 x; and the sessions of
    the tenants above their share, whose answer `holds_back` drops)."""
    router, stats, below = _tenants_fleet(8, rich)
    router.replica_sessions = _count_reads(router.replica_sessions)
    _ReadCount.reads = 0
    assert router._held_back("big", ["r7"], stats) is False
    assert _ReadCount.reads <= below
    router.homes["H"] = "r0"
    route = router.route(RouteRequest("H", tenant="big", context_tokens=100), stats)
    assert (route.replica, route.moved_from, route.reason) == ("r7", "r0", "steal")
    _check_turned_round(router)


def _fair_fleet(room: dict[str, int], on_x: dict[str, int]):
    """Replica x has steps waiting and holds tenant "small"'s sessions `on_x` (session ->
    tokens its report lists); the idle replicas `room` show that many tokens of room
    (16-token blocks); tenant "big" is far above its share, "small" below."""
    router = KvsagaRouter(["x", *room, "h"])
    now = [100.0]
    router.clock = lambda: now[0]
    for s in on_x:
        router.route(RouteRequest(s, tenant="small"), {"x": ReplicaStats()})
    service = {"big": 1e6, "small": 10.0}
    stats = {"x": ReplicaStats(total_blocks=100, free_blocks=0, queue_depth=3, running=1,
                               session_tokens=on_x, tenant_service=service),
             "h": ReplicaStats(total_blocks=100, free_blocks=0, queue_depth=9, running=4,
                               tenant_service=service)}
    for y, tokens in room.items():
        stats[y] = ReplicaStats(total_blocks=1000, free_blocks=tokens // 16, taken_at=98.0)
    router.fair.observe((stats.get(r) for r in router.replicas),
                        router.live_tenants() | {"big"})
    return router, stats


@pytest.mark.parametrize("room,held", [(8000, True), (400, False)])
def test_the_smallest_session_decides(room, held):
    """Sessions of 50,000 and 500 tokens wait on x; idle y has room for `room`: the 500
    could go there when it fits (a steal for "big" is held back), whatever the 50,000."""
    router, stats = _fair_fleet({"y": room}, {"large": 50000, "small1": 500})
    assert router._held_back("big", ["y"], stats) is held


@pytest.mark.parametrize("z_room,held", [(960, True), (320, False)])
def test_idle_replicas_are_ranked_by_room_net_of_arrivals(z_room, held):
    """Idle y shows 8,000 tokens of room, but 7,800 of them go to a session a steal moved
    there after its report was taken; idle z shows `z_room` with nothing arriving. A
    500-token session waits on x: it could go only where the room net of arrivals fits
    it, to z when z shows 960 (y has 200 left), nowhere when z shows 320."""
    router, stats = _fair_fleet({"y": 8000, "z": z_room}, {"small1": 500})
    router._add_arrival("M", "y", Route("y", moved_from="h", tokens=7800, sent_at=99.0,
                                        session="M"))
    assert router._arriving("y", stats["y"]) == 7800
    assert router._held_back("big", ["y", "z"], stats) is held


def _reference_held_back(router: KvsagaRouter, tenant: str, idle: list[str], stats,
                         arrivals: bool = True) -> bool:
    """The rule as written before session 52: a tenant but `tenant` has work waiting that
    an idle replica could take when, on a replica with steps waiting, it has a one-shot
    step, a session not listed (or not an int) in that replica's report, or one that some
    idle replica has room for: its report's free and evictable blocks hold the session
    beside the sessions a steal moved there that the report does not show yet
    (`_arriving`; left out with `arrivals=False`). Spelled out here, not read from
    `_room_for`: a router whose room test ignored the arrivals passed as its own reference
    (routing3)."""
    def has_room(y, tokens):
        st = stats.get(y)
        if st is None:
            return False
        coming = router._arriving(y, st) if arrivals else 0
        return (st.free_blocks + st.evictable_blocks) * st.block_size >= tokens + coming

    def could_go(t, x, steps):
        st = stats.get(x)
        for s, where in router.session_steps.items():
            if x not in where or router._session_tenant.get(s) != t:
                continue
            steps -= where[x]
            tokens = st.session_tokens.get(s) if st is not None else None
            if not is_int(tokens) or any(has_room(y, tokens) for y in idle):
                return True
        return steps > 0

    waiting = [t for t, where in router.tenant_steps.items()
               if t != tenant and any(router.waiting(x, stats) > 0 and could_go(t, x, n)
                                      for x, n in where.items() if x in router.in_flight)]
    return router.fair.holds_back(tenant, waiting, router.config.steal_max_share)


def _check_turned_round(router: KvsagaRouter) -> None:
    turned: dict[str, dict[str | None, dict[str, int]]] = {}
    for s, where in router.session_steps.items():
        for x, n in where.items():
            turned.setdefault(x, {}).setdefault(router._session_tenant.get(s), {})[s] = n
    assert router.replica_sessions == turned


@pytest.mark.parametrize("seed,many", [(s, False) for s in range(6)]
                         + [(s, True) for s in (6, 7, 8, 10)])
def test_held_back_answers_as_the_rule_says(seed, many):
    """Random fleets and steps in flight (sessions of three tenants, or twelve of random
    weights: `many`, one-shot steps, sessions a report lists or not, idle replicas with
    and without room, replicas added and removed, reports stamped before and after real
    steals, whose sessions then count in their thief's room): `_held_back` answers as the
    rule written out, whose share ratios are `FairShare.share_ratio`'s, one tenant at a
    time, and `replica_sessions` matches `session_steps` throughout."""
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(6)]
    tenants = [f"T{i}" for i in range(12)] if many else ["A", "B", "C"]
    weights = {t: rng.choice([0.5, 1.0, 3.0]) for t in tenants} if many else None
    router = KvsagaRouter(names, tenant_weights=weights)
    now = [1000.0]
    router.clock = lambda: now[0]
    live: list = []
    answers = []
    arriving = 0  # decisions taken while a steal's tokens counted in its thief's room
    for _ in range(300):
        now[0] += rng.random() * 0.5
        stats = {}
        for x in router.replicas:
            if rng.random() < 0.1:
                continue  # no report
            listed = {s: rng.choice([100, 500, 5000, 20000, 50000]) for s, where in
                      router.session_steps.items() if x in where and rng.random() < 0.8}
            listed.update((s, rng.choice([100, 500, 5000])) for s, h in router.homes.items()
                          if h == x and s not in listed and rng.random() < 0.5)
            free = rng.choice([0, 10, 50, 300, 500, 1000])
            hot = rng.random() < 0.4  # steps waiting: a steal from it may be taken
            stats[x] = ReplicaStats(total_blocks=4000, free_blocks=free,
                                    queue_depth=rng.choice([4, 9]) if hot else rng.choice([0, 2]),
                                    running=rng.choice([2, 4]) if hot else rng.choice([0, 1]),
                                    tenant_service={t: rng.choice([1.0, 100.0, 1e4, 1e6])
                                                    for t in tenants},
                                    session_tokens=listed, block_size=16,
                                    busy_s=rng.random() * 10,
                                    # stamped mostly, some before the steals they miss
                                    taken_at=(now[0] - rng.random() * 3
                                              if rng.random() < 0.8 else None))
        action = rng.random()
        if action < 0.55:
            session = rng.choice([None, f"s{rng.randrange(12)}"])
            req = RouteRequest(session, tenant=rng.choice(tenants),
                               context_tokens=rng.choice([0, 800, 8000]))
            live.append(router.route(req, stats))
            if rng.random() < 0.6:  # done at once: its session may be stolen next
                router.finished(live.pop(), ran=rng.choice([True, True, None, False]))
        elif action < 0.85 and live:
            router.finished(live.pop(rng.randrange(len(live))), ran=rng.choice([True, None]))
        elif action < 0.9 and len(router.replicas) > 2:
            gone = rng.choice(router.replicas)
            router.remove_replica(gone)
            live = [r for r in live if r.replica != gone]
        elif action < 0.95:
            router.sync(router.replicas + [rng.choice(names)])
        else:
            s = f"s{rng.randrange(12)}"
            router.session_ended(s)
        _check_turned_round(router)
        idle = [x for x in router.replicas if rng.random() < 0.5]
        for tenant in tenants:
            arriving += any(router._arriving(y, stats[y]) for y in idle if y in stats)
            held = router._held_back(tenant, idle, stats)
            assert held == _reference_held_back(router, tenant, idle, stats)
            answers.append(held)
    assert len(answers) == 300 * len(tenants) and any(answers) and not all(answers)
    assert router.num_stolen > 0 and arriving > 0


def _steal_to_idle(router: KvsagaRouter, now: list[float], session: str, tokens: int,
                   rooms: dict[str, int], service: dict[str, float]) -> Route:
    """Place tenant "big"'s `session` on h, then route its next step while h is loaded and
    the idle replicas show `rooms` (tokens): a real steal, whose `tokens` count in its
    thief's room until the thief's report shows the session (`_arriving`)."""
    first = router.route(RouteRequest(session, tenant="big"), {"h": ReplicaStats()})
    router.finished(first)
    now[0] += 0.01
    stats = {"h": ReplicaStats(total_blocks=4000, free_blocks=0, queue_depth=9, running=4,
                               session_tokens={session: tokens}, tenant_service=service,
                               taken_at=now[0])}
    for y, room in rooms.items():
        stats[y] = ReplicaStats(total_blocks=4000, free_blocks=room // 16, taken_at=now[0])
    return router.route(RouteRequest(session, tenant="big", context_tokens=tokens), stats)


@pytest.mark.parametrize("seed", range(6))
def test_held_back_counts_arrivals_as_the_rule_says(seed):
    """Random fleets where the sessions real steals moved to the idle replicas decide the
    answer: tenant "big" (above its share) has sessions stolen from h for the idle
    replicas y0..y3, whose reports, stamped before or after the steals, then show more
    room than is left; tenants "small" and "mid" (below their share) have sessions of
    random sizes waiting on x1, x2. `_held_back` answers as the rule written out, with the
    room net of what is arriving. The test before it saw no decision that the arrivals
    decided, and passed a router whose idle replicas were ranked by room without them
    (`_most_room`, then `_roomiest`; review s52 diffrouting 2); its reference read the
    router's own room test (`_room_for`), so one that ignored them passed too (routing3)."""
    rng = random.Random(seed)
    idle_names = ["y0", "y1", "y2", "y3"]
    sizes = [100, 500, 2000, 5000, 20000]
    answers, decided, stolen = [], 0, 0
    for trial in range(120):
        router = KvsagaRouter(["h", "x1", "x2", *idle_names])
        now = [1000.0]
        router.clock = functools.partial(operator.itemgetter(0), now)
        service = {"big": 1e6, "small": 10.0, "mid": 100.0}
        steals_at = now[0]
        for k in range(rng.randrange(4)):
            rooms = {y: rng.choice([0, 800, 5200, 21000]) for y in idle_names}
            route = _steal_to_idle(router, now, f"B{k}", rng.choice(sizes[:4]), rooms, service)
            stolen += route.reason == "steal"
            if route.reason == "steal" and rng.random() < 0.5:
                router.finished(route, ran=rng.choice([True, None]))
        now[0] += 0.5
        listed: dict[str, dict[str, int]] = {"x1": {}, "x2": {}}
        for k in range(rng.randrange(1, 5)):
            x = rng.choice(["x1", "x2"])
            router.route(RouteRequest(f"S{k}", tenant=rng.choice(["small", "mid"])),
                         {x: ReplicaStats()})
            if rng.random() < 0.95:  # else unlisted: it could go anywhere
                listed[x][f"S{k}"] = rng.choice(sizes)
        stats = {x: ReplicaStats(total_blocks=4000, free_blocks=0, queue_depth=3, running=1,
                                 session_tokens=listed[x], tenant_service=service)
                 for x in ("x1", "x2")}
        stats["h"] = ReplicaStats(total_blocks=4000, free_blocks=0, queue_depth=9,
                                  running=4, tenant_service=service)
        for y in idle_names:
            if rng.random() < 0.9:  # stamped before the steals (they count) or after
                taken = steals_at - 1.0 if rng.random() < 0.7 else now[0]
                stats[y] = ReplicaStats(total_blocks=4000, taken_at=taken,
                                        free_blocks=rng.choice([0, 10, 40, 130, 320, 1300]))
        router.fair.observe((stats.get(r) for r in router.replicas),
                            router.live_tenants() | {"big"})
        idle = [y for y in idle_names if rng.random() < 0.8]
        held = router._held_back("big", idle, stats)
        assert held == _reference_held_back(router, "big", idle, stats), trial
        answers.append(held)
        decided += held != _reference_held_back(router, "big", idle, stats, arrivals=False)
        _check_turned_round(router)
    assert any(answers) and not all(answers)
    assert stolen > 0 and decided > 0  # the arrivals decided some answers
