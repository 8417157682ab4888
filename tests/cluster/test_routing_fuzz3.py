"""The router's configuration with bad values: each is a ValueError naming the field when
the router is built, not an error (or a silent misroute) at the first route."""

from __future__ import annotations

import pytest

from kvsaga.routing import ROUTERS, RouteRequest, make_router
from kvsaga.routing_config import RoutingConfig


def _route_a_few(router) -> list[str]:
    return [router.route(RouteRequest(session=f"s{i}", prefix_key=f"p{i % 2}",
                                      context_tokens=100), {}).replica for i in range(4)]


@pytest.mark.parametrize("field,value", [
    ("prefix_memory", -1),  # emptied the prefix table, then KeyError on every route
    ("prefix_memory", 1.5),
    ("prefix_memory", True),
    ("bytes_per_token", -1),  # a negative migration time: every context "should migrate"
    ("bytes_per_token", 0),
    ("bytes_per_token", float("nan")),
    ("cost", None),  # AttributeError at the first should_migrate
    ("cost", "a100"),
])
def test_bad_routing_config_fields_are_refused_naming_them(field, value):
    with pytest.raises(ValueError, match=f"RoutingConfig.{field} must be"):
        RoutingConfig(**{field: value})


def test_prefix_memory_zero_still_routes():
    """0 remembers no prefix (valid); the router routes and keeps no prefix homes."""
    router = make_router("kvsaga", ["r0", "r1"], config=RoutingConfig(prefix_memory=0))
    assert set(_route_a_few(router)) <= {"r0", "r1"}
    assert not router._prefix_homes


@pytest.mark.parametrize("name", sorted(ROUTERS))
def test_one_replica_name_as_a_str_is_refused(name):
    """`make_router(name, "gpu0")` made replicas "g", "p", "u", "0"; `sync("gpu0")` too."""
    with pytest.raises(ValueError, match="replicas must be a list of replica names"):
        make_router(name, "gpu0")
    router = make_router(name, ["gpu0", "gpu1"])
    with pytest.raises(ValueError, match="replicas must be a list"):
        router.sync("gpu0")
    assert router.replicas == ["gpu0", "gpu1"]  # the refused sync changed nothing
    assert set(_route_a_few(router)) <= {"gpu0", "gpu1"}
