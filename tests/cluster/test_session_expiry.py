"""The router forgets a session not routed for longer than the session idle limit (the
replicas' own, after which they end it too), and remembers at most `max_sessions`: its
tables no longer grow with every session ever seen (review repro r5_leak: 100,000
entries for 100,000 sessions that never sent a last step)."""

from __future__ import annotations

import pytest

from kvsaga.routing import ROUTERS, ReplicaStats, RouteRequest, make_router
from kvsaga.session import DEFAULT_SESSION_IDLE_S

IDLE = ReplicaStats(total_blocks=1000, free_blocks=1000)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def router(name: str = "kvsaga", **kwargs):
    r = make_router(name, ["a", "b"], **kwargs)
    r.clock = Clock()
    return r


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_an_idle_session_is_forgotten(name):
    r = router(name, session_idle_s=60.0)
    stats = {"a": IDLE, "b": IDLE}
    r.finished(r.route(RouteRequest(session="old"), stats))
    r.clock.t += 61.0
    r.finished(r.route(RouteRequest(session="new"), stats))
    assert "old" not in r.homes and "new" in r.homes


def test_a_session_routed_within_the_limit_stays():
    r = router(session_idle_s=60.0)
    stats = {"a": IDLE, "b": IDLE}
    for _ in range(5):  # every 40 s: never idle for 60
        r.finished(r.route(RouteRequest(session="s"), stats))
        r.clock.t += 40.0
    r.finished(r.route(RouteRequest(session="other"), stats))
    assert "s" in r.homes


def test_a_session_with_a_step_in_flight_is_kept():
    r = router(session_idle_s=60.0)
    stats = {"a": IDLE, "b": IDLE}
    long_step = r.route(RouteRequest(session="s"), stats)
    r.clock.t += 120.0
    r.finished(r.route(RouteRequest(session="other"), stats))
    assert r.homes.get("s") == long_step.replica


def test_lost_entries_expire_too():
    r = router(session_idle_s=60.0)
    r.finished(r.route(RouteRequest(session="s"), {"a": IDLE, "b": IDLE}))
    r.remove_replica(r.homes["s"])
    assert "s" in r.lost
    r.clock.t += 61.0
    r.route(RouteRequest(session="other"), {x: IDLE for x in r.replicas})
    assert "s" not in r.lost


def test_at_most_max_sessions_are_remembered():
    r = router(session_idle_s=None)
    r.max_sessions = 3
    stats = {"a": IDLE, "b": IDLE}
    for i in range(6):
        r.finished(r.route(RouteRequest(session=f"s{i}"), stats))
    assert sorted(r.homes) == ["s3", "s4", "s5"]


def test_the_default_is_the_session_idle_limit_and_bad_values_are_refused():
    assert make_router("kvsaga").session_idle_s == DEFAULT_SESSION_IDLE_S
    for bad in (0, -1.0, float("nan"), "60"):
        with pytest.raises(ValueError, match="session_idle_s"):
            make_router("affinity", session_idle_s=bad)


def test_the_ray_router_takes_the_servers_idle_limit():
    pytest.importorskip("ray.serve")
    from kvsaga.integrations.ray.deployment import _router_config, build_application
    from kvsaga.serve.settings import ServerSettings

    assert _router_config("kvsaga", None, 0.5, 90.0).request_router_kwargs == {
        "router": "kvsaga", "session_idle_s": 90.0}
    app = build_application(ServerSettings(device="cpu", session_idle_s=90.0), 2)
    engine = app._bound_deployment.init_args[0]._bound_deployment
    kwargs = engine._deployment_config.request_router_config.request_router_kwargs
    assert kwargs["session_idle_s"] == 90.0


def test_max_sessions_keeps_a_session_with_a_step_in_flight():
    """Review s47 routingcore 8: over `max_sessions` the least recently routed session was
    forgotten with a step in flight, and its concurrent next step was placed afresh on
    another replica while the first still ran there (the session on two replicas)."""
    r = router(session_idle_s=None)
    r.max_sessions = 2
    stats = {"a": IDLE, "b": IDLE}
    first = r.route(RouteRequest(session="s0"), stats)  # in flight
    for i in (1, 2, 3):
        r.finished(r.route(RouteRequest(session=f"s{i}"), stats))
    assert r.homes.get("s0") == first.replica
    assert r.route(RouteRequest(session="s0"), stats).replica == first.replica
    assert len(r.homes) <= 3  # the others still go: bounded by the steps in flight


def test_every_session_in_flight_over_max_sessions_is_kept():
    r = router(session_idle_s=None)
    r.max_sessions = 1
    stats = {"a": IDLE, "b": IDLE}
    steps = [r.route(RouteRequest(session=f"s{i}"), stats) for i in range(3)]
    assert sorted(r.homes) == ["s0", "s1", "s2"]
    for step in steps:
        r.finished(step)
    r.finished(r.route(RouteRequest(session="s3"), stats))
    assert sorted(r.homes) == ["s3"]


@pytest.mark.parametrize("gone", ["ended", "expired"])
def test_a_refusal_after_the_session_is_gone_does_not_home_it(gone):
    """Review s47 routingcore 7: a move's refusal (the gateway answers it apart from the
    end) that came after the session ended or expired homed it again with no
    `_last_routed` entry: nothing ever dropped it (1000 ended sessions: 1000 homes)."""
    r = router(session_idle_s=10.0)
    stats = {"a": IDLE, "b": IDLE}
    step = r.route(RouteRequest(session="s"), stats)
    r.finished(step)
    if gone == "ended":
        r.session_ended("s")
    else:
        r.clock.t += 100.0
        r.finished(r.route(RouteRequest(session="other"), stats))
    other = "b" if step.replica == "a" else "a"
    r.move_refused("s", step.replica, other)
    r.move_taken("s", other, step.replica)
    assert "s" not in r.homes and "s" not in r._voided
