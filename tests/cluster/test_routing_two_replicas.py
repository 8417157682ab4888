"""The kvsaga router on 2 replicas: a lone agent session after the other replica has done
some work (docs/cluster.md, "How a step is routed", the quiet fleet's floor, "Small fleets").

With 2 replicas the quiet test (`busy_balance_quiet` = 1: the home leads the mean by at
least the mean) holds only while the other replica's busy time is 0. Once the other has
done any work (an earlier session, a one-shot request), the quiet test alone
(`busy_balance_alone=False`, the rule before) moved a lone session whose home pulls ahead
of the mean by `busy_balance` (5%), with its KV, by `balance`, although nothing contends.
The default `busy_balance_alone=True` applies the floor (`busy_balance_min_s`, 10 s of
work) to a session alone in the fleet, as `busy_balance_quiet=0` does to every lone home:
it stays home until its lead passes the floor. A session with company elsewhere (a drain's
lone homes) is left to the quiet test.

`python tests/cluster/test_routing_two_replicas.py` prints the moves of the three settings.
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
    session paused; {"running": 1}: a step of another router's running; {"busy_s": 5}:
    5 s of work done there before). Returns the lone session's routes."""
    REPLICAS = [chr(ord("a") + i) for i in range(replicas)]  # noqa: N806
    router = make_router("kvsaga", REPLICAS, config=config)
    busy = dict.fromkeys(REPLICAS, 0.0)
    held: dict[str, dict[str, int]] = {r: {} for r in REPLICAS}  # replica -> session tokens

    extra = {REPLICAS[-1]: company or {}}

    def stats() -> dict[str, ReplicaStats]:
        out = {}
        for r in REPLICAS:
            add = extra.get(r, {})
            out[r] = ReplicaStats(total_blocks=4096, free_blocks=4096,
                                  busy_s=busy[r] + add.get("busy_s", 0.0),
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


QUIET_ONLY = RoutingConfig(busy_balance_alone=False)  # the rule before busy_balance_alone


def test_the_other_replica_has_worked_the_quiet_test_alone_moves_a_lone_session():
    routes = lone_session(QUIET_ONLY)
    assert routes[0].reason == "new"
    moved = moves(routes)
    # Nothing contends, yet the session moves again and again, its KV with it.
    assert len(moved) >= 5
    assert all(r.reason == "balance" for r in routes if r.moved_from is not None)
    assert any(m[3] for m in moved)


@pytest.mark.parametrize("config", [None, RoutingConfig(busy_balance_quiet=0)],
                         ids=["default", "quiet=0"])
def test_the_default_and_quiet_0_keep_it_home_until_the_floor(config):
    routes = lone_session(config)
    assert routes[0].reason == "new"
    assert not moves(routes)  # 40 steps x 0.5 s: the lead stays under 10 s
    assert {r.replica for r in routes} == {routes[0].replica}
    # Past the floor (a lead over busy_balance_min_s of work) it moves once, by balance,
    # with its KV.
    longer = moves(lone_session(config, steps=60))
    assert len(longer) == 1 and longer[0][3]
    for n in (3, 4):
        assert len(moves(lone_session(config, replicas=n, steps=60))) == 1, n


@pytest.mark.parametrize("config", [None, QUIET_ONLY], ids=["default", "quiet test only"])
def test_an_idle_other_replica_keeps_it_home(config):
    """The quiet test as the fit chose it: the other replica has done nothing."""
    assert not moves(lone_session(config, earlier_steps=0))


def test_on_64_replicas_the_default_moves_it_at_the_floor_only():
    """The quiet test alone lost the home once the floor's first move spread the work over
    two replicas, and moved the session at every step after its second move; the default
    moves it each time its home's lead passes the floor."""
    for earlier in (0, 2):
        quiet = moves(lone_session(QUIET_ONLY, replicas=64, earlier_steps=earlier, steps=60))
        assert len(quiet) >= 10, earlier
        assert len(moves(lone_session(None, replicas=64, earlier_steps=earlier,
                                      steps=60))) == 2, earlier


@pytest.mark.parametrize("replicas,company", [(2, {"paused": 1, "busy_s": 5.0}),
                                              (3, {"paused": 2, "busy_s": 5.0}),
                                              (3, {"running": 1, "busy_s": 5.0})])
def test_busy_balance_alone_leaves_a_session_with_company_to_the_quiet_test(replicas, company):
    """Another session paused on, or a step running on, another replica: the session is
    not alone (a drain's lone homes), and `busy_balance_alone` changes no move."""
    quiet = moves(lone_session(QUIET_ONLY, replicas=replicas, company=company, steps=60))
    assert len(quiet) >= 5  # the case moves, so the comparison below can fail
    assert moves(lone_session(None, replicas=replicas, company=company, steps=60)) == quiet


@pytest.mark.parametrize("bad", [0, 1, "yes", None, 1.0])
def test_busy_balance_alone_must_be_a_bool(bad):
    with pytest.raises(ValueError, match=r"RoutingConfig\.busy_balance_alone must be a bool"):
        RoutingConfig(busy_balance_alone=bad)


if __name__ == "__main__":
    print("moves of a lone session's 60 steps of 0.5 s (all with its KV): the quiet test "
          "only (busy_balance_quiet=1, busy_balance_alone=False) vs busy_balance_quiet=0 vs "
          "the default (busy_balance_alone=True)")
    for n in (2, 3, 4, 8, 64):
        for earlier in (2, 0):
            row = []
            for cfg in (QUIET_ONLY, RoutingConfig(busy_balance_quiet=0), None):
                moved = moves(lone_session(cfg, replicas=n, earlier_steps=earlier, steps=60))
                assert all(m[3] for m in moved)
                row.append(f"{len(moved):2d} moves at steps {[m[0] for m in moved]}")
            other = "after 1 s of other work" if earlier else "on an idle fleet"
            print(f"{n:2d} replicas, {other:23s}: quiet test only {row[0]}; quiet=0 {row[1]}; "
                  f"default {row[2]}")
