"""`RouteRequest` refuses a field of the wrong kind at construction, naming it (review s52
routing 4): `context_tokens=-5` or `1.5` went into the steal's room test and a move's size,
and `tenant=None` into the fleet's fair share, without a word. What the callers pass (str
ids, an int count >= 0, bools) is taken as before."""

from __future__ import annotations

import pytest

from kvsaga.routing import KvsagaRouter, ReplicaStats, RouteRequest


@pytest.mark.parametrize("kwargs,field", [
    ({"context_tokens": -5}, "context_tokens"),
    ({"context_tokens": 1.5}, "context_tokens"),
    ({"context_tokens": 4.0}, "context_tokens"),
    ({"context_tokens": True}, "context_tokens"),
    ({"context_tokens": "800"}, "context_tokens"),
    ({"tenant": None}, "tenant"),
    ({"tenant": 3}, "tenant"),
    ({"session": 7}, "session"),
    ({"session": b"s1"}, "session"),
    ({"prefix_key": 1}, "prefix_key"),
    ({"stay": 1}, "stay"),
    ({"stay": None}, "stay"),
    ({"affinity_only": "yes"}, "affinity_only"),
])
def test_a_bad_field_is_refused_by_name(kwargs, field):
    with pytest.raises(ValueError, match=rf"RouteRequest\.{field} must be"):
        RouteRequest(**{"session": "s1", **kwargs})


def test_the_first_bad_field_is_named_when_several_are():
    with pytest.raises(ValueError, match=r"RouteRequest\.session must be"):
        RouteRequest(session=1, tenant=None, context_tokens=-1)
    with pytest.raises(ValueError, match=r"RouteRequest\.tenant must be"):
        RouteRequest(session="s", tenant=None, context_tokens=-1)


class _Tenant(str):
    """A str subclass: a str all the same."""


@pytest.mark.parametrize("kwargs", [
    {},
    {"session": "s1", "tenant": "t", "prefix_key": "p", "context_tokens": 0},
    {"session": "s1", "context_tokens": 10**9, "stay": True, "affinity_only": False},
    {"session": None, "tenant": "", "prefix_key": None},
    {"session": "", "tenant": _Tenant("t")},
])
def test_what_the_callers_pass_is_taken(kwargs):
    req = RouteRequest(**kwargs)
    for k, v in kwargs.items():
        assert getattr(req, k) == v


def test_a_refused_request_leaves_the_router_as_it_was():
    """The request is refused before the router reads it: nothing is routed or counted."""
    router = KvsagaRouter(["a", "b"])
    stats = {x: ReplicaStats(total_blocks=100, free_blocks=100) for x in ("a", "b")}
    with pytest.raises(ValueError, match="context_tokens"):
        router.route(RouteRequest("s1", tenant="t", context_tokens=-5), stats)
    assert router.in_flight == {"a": 0, "b": 0} and not router.homes
    assert not router.session_steps and not router.tenant_steps
    route = router.route(RouteRequest("s1", tenant="t", context_tokens=5), stats)
    assert router.homes == {"s1": route.replica}
