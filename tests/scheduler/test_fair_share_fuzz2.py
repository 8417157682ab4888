"""Agent Fair Share at extreme tenant weights (fuzz2 lane): weights outside
[`MIN_TENANT_WEIGHT`, `MAX_TENANT_WEIGHT`] are refused by name and bound (at 1e308 the
compute cap overflowed inside `schedule`), and within them every session of every tenant
runs to its end in the simulator, however lopsided the weights."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvsaga.scheduler.fair_share import MAX_TENANT_WEIGHT, MIN_TENANT_WEIGHT
from kvsaga.sim.compare import peak_prompt_working_set
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.workloads import generate

PRESET = "a100-llama3-8b"


def _three_tenants():
    """A busy tenant (a, 4x the family's rate) and two lighter ones, web sessions, scaled
    down (AFS fit seed 102)."""
    out = []
    for tenant, n, rate in (("a", 12, 2.0), ("b", 4, 0.5), ("c", 4, 0.5)):
        for s in generate("web", n, 102, arrival_rate=rate, scale=0.15):
            out.append(dataclasses.replace(s, id=f"{tenant}-{s.id}", tenant=tenant))
    return sorted(out, key=lambda s: (s.arrival_s, s.id))


def _config(sessions, weights) -> SimConfig:
    base = SimConfig(preset=PRESET)
    longest = max(base.cost.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    blocks = max(int(peak_prompt_working_set(sessions, base) * 0.5), 3 * (longest + 1))
    return SimConfig(preset=PRESET, num_gpu_blocks=blocks, scheduler="workflow",
                     scheduler_params={"tenant_weights": weights})


@pytest.mark.parametrize("weights", [
    {"a": MAX_TENANT_WEIGHT, "b": MAX_TENANT_WEIGHT, "c": MIN_TENANT_WEIGHT},
    {"a": MAX_TENANT_WEIGHT, "b": 1.0, "c": MIN_TENANT_WEIGHT},
    {"a": MIN_TENANT_WEIGHT, "b": MIN_TENANT_WEIGHT, "c": MAX_TENANT_WEIGHT},
    {"a": MAX_TENANT_WEIGHT, "b": MIN_TENANT_WEIGHT},  # c weighs 1
])
def test_every_session_of_every_tenant_finishes_at_extreme_weights(weights):
    sessions = _three_tenants()
    sim = Simulator(sessions, _config(sessions, weights))
    result = sim.run().to_dict()
    per_tenant = {t: sum(s.tenant == t for s in sessions) for t in "abc"}
    assert {t: e["tasks"] for t, e in result["tenants"].items()} == per_tenant
    assert all(math.isfinite(e["tct_mean_s"]) for e in result["tenants"].values())
    assert not sim.scheduler.has_work and not sim.scheduler.running
    sim.manager.check_integrity()
    assert sim.manager.stats().num_used_blocks == 0


@pytest.mark.parametrize("weight", [1e308, 1e7, MAX_TENANT_WEIGHT * 1.0000001, 9e-7,
                                    5e-324, 1e-300])
def test_weights_beyond_the_bounds_are_refused_naming_the_bound(weight):
    # 1e308 (with another tenant as heavy) overflowed a compute cap: int(inf) raised
    # OverflowError from `schedule`, mid-run.
    sessions = _three_tenants()
    with pytest.raises(ValueError, match=r"tenant_weights\['a'\] must be from 1e-06 to "
                                         r"1e\+06 .*got " + repr(weight).replace("+", r"\+")):
        Simulator(sessions, _config(sessions, {"a": weight, "b": weight}))


def test_the_bounds_themselves_are_accepted():
    sessions = _three_tenants()[:4]
    for w in (MIN_TENANT_WEIGHT, MAX_TENANT_WEIGHT):
        Simulator(sessions, _config(sessions, {"a": w, None: w}))
