"""The fair-share check of a steal (`KvsagaRouter._held_back`) reads each session in flight
once a decision (review s52 routing 1): it walked every session in flight for each replica
with work waiting, and tested each session's room on every idle replica, so a decision on a
loaded fleet cost replicas x sessions x idle replicas (64 replicas, 4,000 sessions in flight:
38 ms). Its answer is unchanged (`test_held_back_answers_as_the_rule_says`), and
`Router.replica_sessions`, which it reads, stays `session_steps` turned round."""

from __future__ import annotations

import random

import pytest

from kvsaga._validate import is_int
from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest

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


def _reference_held_back(router: KvsagaRouter, tenant: str, idle: list[str], stats) -> bool:
    """The rule as written before session 52: a tenant but `tenant` has work waiting that
    an idle replica could take when, on a replica with steps waiting, it has a one-shot
    step, a session not listed (or not an int) in that replica's report, or one that some
    idle replica has room for."""
    def could_go(t, x, steps):
        st = stats.get(x)
        for s, where in router.session_steps.items():
            if x not in where or router._session_tenant.get(s) != t:
                continue
            steps -= where[x]
            tokens = st.session_tokens.get(s) if st is not None else None
            if not is_int(tokens) or any(router._room_for(y, tokens, stats) for y in idle):
                return True
        return steps > 0

    waiting = [t for t, where in router.tenant_steps.items()
               if t != tenant and any(router.waiting(x, stats) > 0 and could_go(t, x, n)
                                      for x, n in where.items() if x in router.in_flight)]
    return router.fair.holds_back(tenant, waiting, router.config.steal_max_share)


def _check_turned_round(router: KvsagaRouter) -> None:
    turned: dict[str, dict[str, int]] = {}
    for s, where in router.session_steps.items():
        for x, n in where.items():
            turned.setdefault(x, {})[s] = n
    assert router.replica_sessions == turned


@pytest.mark.parametrize("seed", range(6))
def test_held_back_answers_as_the_rule_says(seed):
    """Random fleets and steps in flight (sessions of three tenants, one-shot steps,
    sessions a report lists or not, idle replicas with and without room, replicas added
    and removed): `_held_back` answers as the rule written out, and `replica_sessions`
    matches `session_steps` throughout."""
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(6)]
    router = KvsagaRouter(names)
    tenants = ["A", "B", "C"]
    live: list = []
    answers = []
    for _ in range(300):
        stats = {}
        for x in router.replicas:
            if rng.random() < 0.1:
                continue  # no report
            listed = {s: rng.choice([500, 5000, 50000]) for s, where in
                      router.session_steps.items() if x in where and rng.random() < 0.8}
            free = rng.choice([0, 50, 500, 4000])
            stats[x] = ReplicaStats(total_blocks=4000, free_blocks=free,
                                    queue_depth=rng.choice([0, 0, 2]), running=1,
                                    tenant_service={t: rng.choice([1.0, 100.0, 1e4])
                                                    for t in tenants},
                                    session_tokens=listed, block_size=16)
        action = rng.random()
        if action < 0.55:
            session = rng.choice([None, f"s{rng.randrange(40)}"])
            req = RouteRequest(session, tenant=rng.choice(tenants),
                               context_tokens=rng.choice([0, 800, 30000]))
            live.append(router.route(req, stats))
        elif action < 0.85 and live:
            router.finished(live.pop(rng.randrange(len(live))), ran=rng.choice([True, None]))
        elif action < 0.9 and len(router.replicas) > 2:
            gone = rng.choice(router.replicas)
            router.remove_replica(gone)
            live = [r for r in live if r.replica != gone]
        elif action < 0.95:
            router.sync(router.replicas + [rng.choice(names)])
        else:
            s = f"s{rng.randrange(40)}"
            router.session_ended(s)
        _check_turned_round(router)
        idle = [x for x in router.replicas if rng.random() < 0.5]
        for tenant in tenants:
            held = router._held_back(tenant, idle, stats)
            assert held == _reference_held_back(router, tenant, idle, stats)
            answers.append(held)
    assert len(answers) == 900 and any(answers) and not all(answers)
