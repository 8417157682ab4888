"""A steal's fair-share check (`KvsagaRouter._held_back`) with many tenants (routing3): each
tenant's share ratio summed every live tenant's service and weight (`FairShare.share_ratio`),
64 x 64 services at 64 tenants, and each (tenant, replica) pair that reached the room test
walked the roomiest idle replica's arrivals again (`_arriving`): 12.7 ms a decision at 64
replicas x 4,000 sessions in flight. The sums are taken once a decision
(`FairShare.share_ratios`, bit for bit `share_ratio`'s) and the idle replicas' room once
(`_most_room`); the answers are the rule's (tests/cluster/test_held_back_cost.py)."""

from __future__ import annotations

import random

import pytest

from kvsaga.fair_share import FairShare
from kvsaga.routing import KvsagaRouter
from tests.cluster.test_held_back_cost import _tenants_fleet


@pytest.mark.parametrize("seed", range(8))
def test_share_ratios_are_share_ratio_bit_for_bit(seed):
    """Random weights, usage, credits (tenants entering the live set) and live sets, with
    tenants outside it and unknown ones: `share_ratios` equals `share_ratio` exactly."""
    rng = random.Random(seed)
    names = [f"t{i}" for i in range(rng.randrange(1, 40))]
    fs = FairShare(weights={t: rng.choice([0.25, 1.0, 3.0, 7.5]) for t in names
                            if rng.random() < 0.5})
    for _ in range(30):
        for t in names:
            if rng.random() < 0.6:
                fs.record(t, rng.choice([0.0, 0.1, 1.0, 1e3, 1e9]) * rng.random())
        asked = [t for t in names if rng.random() < 0.7] + ["unknown"]
        if rng.random() < 0.8:
            fs.enter([t for t in names if rng.random() < 0.6])
        got = fs.share_ratios(asked)
        assert list(got) == asked
        for t in asked:
            assert got[t] == fs.share_ratio(t), t  # exactly: the decision compares with 1.0
    assert FairShare().share_ratios(["a"]) == {"a": 0.0}


def test_share_ratios_when_no_live_set_is_given():
    fs = FairShare(usage={"a": 1.0, "b": 3.0})
    assert fs.share_ratios(["a", "b", "c"]) == {t: fs.share_ratio(t) for t in "abc"}


@pytest.mark.parametrize("tenants", [16, 64])
def test_a_decision_sums_the_fleet_service_once(tenants, monkeypatch):
    """`tenants` tenants below their share with sessions waiting that no idle replica has
    room for: the answer needs every one's share ratio, and reads each tenant's service
    a few times, not once per tenant per tenant (before: (tenants + 2) x tenants)."""
    router, stats, _ = _tenants_fleet(tenants, 0)
    reads = []
    service = FairShare._service
    monkeypatch.setattr(FairShare, "_service", lambda self, t: reads.append(t) or service(self, t))
    assert router._held_back("big", ["r7"], stats) is False
    assert len(reads) <= 3 * (tenants + 2)


def test_a_decision_reads_the_idle_replicas_arrivals_once(monkeypatch):
    """Idle r7 shows room for none of the sessions waiting: each (tenant, replica) pair
    reaches the room test, which read r7's arrivals (`_arriving`) again each time (before:
    1 + 48 reads at 8 tenants x 6 replicas); now once a decision for each idle replica."""
    router, stats, _ = _tenants_fleet(8, 0)
    read = []
    arriving = KvsagaRouter._arriving
    monkeypatch.setattr(KvsagaRouter, "_arriving",
                        lambda self, x, st: read.append(x) or arriving(self, x, st))
    assert router._held_back("big", ["r7"], stats) is False
    assert read == ["r7"]
    read.clear()
    assert router._held_back("big", ["r7", "r0"], stats) is False
    assert sorted(read) == ["r0", "r7"]
