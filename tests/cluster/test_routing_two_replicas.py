"""The kvsaga router on 2 replicas: a lone agent session after the other replica has done
some work (docs/cluster.md, "How a step is routed", the quiet fleet's floor).

With 2 replicas the quiet test (`busy_balance_quiet` = 1: the home leads the mean by at
least the mean) holds only while the other replica's busy time is 0. Once the other has
done any work (an earlier session, a one-shot request), a lone session whose home pulls
ahead of the mean by `busy_balance` (5%) is moved, with its KV, by `balance`, although
nothing contends; `busy_balance_quiet=0` (the floor on every lone home) keeps it home
until its lead is `busy_balance_min_s` (10 s) of work.

`python tests/cluster/test_routing_two_replicas.py` prints the moves of both settings.
"""

from __future__ import annotations

import pytest

from kvsaga.routing import ReplicaStats, RouteRequest, RoutingConfig, make_router


def lone_session(config: RoutingConfig | None, *, replicas: int = 2, earlier_steps: int = 2,
                 steps: int = 40, step_s: float = 0.5, tokens_per_step: int = 500,
                 company: dict[str, int] | None = None) -> list:
    """On `replicas` replicas, route an earlier session's `earlier_steps` steps, end it,
    then a lone session's `steps` sequential steps, each `step_s` seconds of work on the
    replica that ran it. Stats are what a replica reports between steps (nothing running;
    the lone session paused on its home, with its context); `company` adds to the last
    replica's report other work that stays there throughout ({"paused": 1}: another
    session paused; {"running": 1}: a step of another router's running). Returns the lone
    session's routes."""
    REPLICAS = [chr(ord("a") + i) for i in range(replicas)]  # noqa: N806
    router = make_router("kvsaga", REPLICAS, config=config)
    busy = dict.fromkeys(REPLICAS, 0.0)
    held: dict[str, dict[str, int]] = {r: {} for r in REPLICAS}  # replica -> session tokens

    extra = {REPLICAS[-1]: company or {}}

    def stats() -> dict[str, ReplicaStats]:
        out = {}
        for r in REPLICAS:
            add = extra.get(r, {})
            out[r] = ReplicaStats(total_blocks=4096, free_blocks=4096, busy_s=busy[r],
                                  paused=len(held[r]) + add.get("paused", 0),
                                  running=add.get("running", 0),
                                  session_tokens=dict(held[r]))
        return out

    def step(session: str, tokens: int):
        route = router.route(RouteRequest(session=session, tenant="t",
                                          context_tokens=tokens), stats())
        for r in REPLICAS:  # the session lives where its step ran
            held[r].pop(session, None)
        held[route.replica][session] = tokens + tokens_per_step
        busy[route.replica] += step_s
        router.finished(route)
        return route

    for i in range(earlier_steps):
        step("earlier", i * tokens_per_step)
    for r in REPLICAS:
        held[r].pop("earlier", None)
    router.session_ended("earlier")
    return [step("lone", i * tokens_per_step) for i in range(steps)]


def moves(routes: list) -> list[tuple[int, str, str, bool]]:
    """(step, from, to, KV migrated) of each move."""
    return [(i, r.moved_from, r.replica, r.migrate) for i, r in enumerate(routes)
            if r.moved_from is not None]


def test_the_other_replica_has_worked_the_default_moves_a_lone_session():
    routes = lone_session(None)
    assert routes[0].reason == "new"
    moved = moves(routes)
    # Nothing contends, yet the session moves again and again, its KV with it.
    assert len(moved) >= 5
    assert all(r.reason == "balance" for r in routes if r.moved_from is not None)
    assert any(m[3] for m in moved)


def test_busy_balance_quiet_0_keeps_it_home_until_the_floor():
    routes = lone_session(RoutingConfig(busy_balance_quiet=0))
    assert not moves(routes)  # 40 steps x 0.5 s: the lead stays under 10 s
    assert {r.replica for r in routes} == {routes[0].replica}
    # Past the floor (a lead over busy_balance_min_s of work) it moves once, by balance.
    longer = moves(lone_session(RoutingConfig(busy_balance_quiet=0), steps=60))
    assert len(longer) == 1


def test_an_idle_other_replica_keeps_it_home_under_the_default_too():
    """The quiet test as the default fitted it: the other replica has done nothing."""
    assert not moves(lone_session(None, earlier_steps=0))


ALONE = RoutingConfig(busy_balance_alone=True)


def test_busy_balance_alone_keeps_a_session_alone_in_the_fleet_home_until_the_floor():
    """Nothing else is served anywhere: the floor holds whatever the quiet test says."""
    assert not moves(lone_session(ALONE))
    longer = moves(lone_session(ALONE, steps=60))  # past the floor: one move, by balance
    assert len(longer) == 1 and longer[0][3]
    for n in (3, 4):
        assert len(moves(lone_session(ALONE, replicas=n, steps=60))) == 1, n


@pytest.mark.parametrize("replicas,company", [(2, {"paused": 1}), (3, {"paused": 2}),
                                              (3, {"running": 1})])
def test_busy_balance_alone_leaves_a_session_with_company_to_the_quiet_test(replicas, company):
    """Another session paused on, or a step running on, another replica: the session is
    not alone (a drain's lone homes), and `busy_balance_alone` changes no move."""
    default = moves(lone_session(None, replicas=replicas, company=company, steps=60))
    assert len(default) >= 5  # the case moves, so the comparison below can fail
    assert moves(lone_session(ALONE, replicas=replicas, company=company, steps=60)) == default


@pytest.mark.parametrize("bad", [0, 1, "yes", None, 1.0])
def test_busy_balance_alone_must_be_a_bool(bad):
    with pytest.raises(ValueError, match=r"RoutingConfig\.busy_balance_alone must be a bool"):
        RoutingConfig(busy_balance_alone=bad)


if __name__ == "__main__":
    print("moves of a lone session's 60 steps of 0.5 s (all with its KV): the quiet test "
          "only (busy_balance_quiet=1, busy_balance_alone=False) vs busy_balance_quiet=0 vs "
          "busy_balance_alone=True")
    for n in (2, 3, 4, 8, 64):
        for earlier in (2, 0):
            row = []
            for cfg in (RoutingConfig(busy_balance_alone=False), RoutingConfig(busy_balance_quiet=0),
                        ALONE):
                moved = moves(lone_session(cfg, replicas=n, earlier_steps=earlier, steps=60))
                assert all(m[3] for m in moved)
                row.append(f"{len(moved):2d} moves at steps {[m[0] for m in moved]}")
            other = "after 1 s of other work" if earlier else "on an idle fleet"
            print(f"{n:2d} replicas, {other:23s}: quiet test only {row[0]}; quiet=0 {row[1]}; "
                  f"alone {row[2]}")
