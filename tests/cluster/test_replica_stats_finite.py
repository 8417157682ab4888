"""A replica's report must hold finite busy time and service (review s52 routing 2): an
infinite `busy_s` passed the check (`not busy_s >= 0`), made the fleet's mean busy time inf
and the replica's lead nan, which passed the balance tests: the replica gave every session
it held away. An infinite service made every tenant's share ratio nan or 0. Refused, the
report is read as no report (Ray Serve's `stats_of`)."""

from __future__ import annotations

import math

import pytest

from kvsaga.routing import ReplicaStats


@pytest.mark.parametrize("bad", [math.inf, float("nan"), -1.0])
def test_busy_s_must_be_finite(bad):
    with pytest.raises(ValueError, match=r"ReplicaStats.busy_s must be a finite number >= 0"):
        ReplicaStats(busy_s=bad)


@pytest.mark.parametrize("bad", [math.inf, float("nan"), -1.0])
def test_tenant_service_must_be_finite(bad):
    with pytest.raises(ValueError, match=r"tenant_service\['t'\] must be a finite number"):
        ReplicaStats(tenant_service={"t": bad})


def test_the_ray_router_reads_an_infinite_report_as_none():
    ray_router = pytest.importorskip("kvsaga.integrations.ray.router")

    class _Replica:
        routing_stats = {"total_blocks": 100, "free_blocks": 100, "busy_s": math.inf}

    assert ray_router.stats_of(_Replica()) is None

