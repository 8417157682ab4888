"""Every policy names the victims it named when the fixture was recorded, on both cores: a
change made for speed must not change a decision (tests/policy/victim_record.py)."""

from __future__ import annotations

import json

import pytest

from tests.policy.victim_record import FIXTURE, POOLS, SPECS, WORKLOADS, digest, record

RECORDED = json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_the_fixture_covers_every_run():
    assert set(RECORDED) == {f"{w}/{p}/{s}" for w in WORKLOADS for p in POOLS for s in SPECS}


@pytest.mark.parametrize("workload", sorted(WORKLOADS))
@pytest.mark.parametrize("pool", sorted(POOLS))
@pytest.mark.parametrize("spec", sorted(SPECS))
def test_victims_are_the_recorded_ones(spec, pool, workload):
    got = digest(record(spec, pool, workload))
    assert got == RECORDED[f"{workload}/{pool}/{spec}"], (
        f"{spec} in {pool} on {workload}: its victims or offload choices changed. A ranking "
        "changed on purpose: `python -m tests.policy.victim_record --write`, said in the commit")
