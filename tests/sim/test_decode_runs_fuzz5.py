"""Decode runs called with bounds they cannot index: a clear ValueError, or (a smaller step
bound than the run could take) a run that stops there and changes nothing.

`_decode_steps` indexed its precomputed step times past their end (IndexError) when its
`limit` was below the steps before the next event; `_step_times` with no step, or
`_decode_run` with nothing running, failed inside (IndexError, `min()` of an empty
sequence)."""

from __future__ import annotations

import math

import pytest

from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.workloads import generate

SESSIONS = generate("swe", 6, seed=2, scale=0.05, arrival_rate=1.0)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y))
        for x, y in ((a[k], b[k]) for k in a))


@pytest.mark.parametrize("host", [None, 2**30])
@pytest.mark.parametrize("cap", [1, 2, 3])
def test_a_smaller_step_bound_ends_the_run_there_and_changes_nothing(cap, host):
    """Each decode run bounded to `cap` steps (below what it could take before the next
    event) stops there, and the simulator's next run goes on: every figure is the one of
    runs as long as they may be."""
    config = SimConfig(kv_memory_bytes=2**30, host_memory_bytes=host, policy="lru",
                       scheduler="workflow")
    full = Simulator(SESSIONS, config).run().to_dict()
    sim = Simulator(SESSIONS, config)
    bounded = sim._steps_before_horizon
    sim._steps_before_horizon = lambda n, ctx, last: min(cap, bounded(n, ctx, last))
    assert same(sim.run().to_dict(), full)
    sim.manager.check_integrity()


@pytest.mark.parametrize(("args", "message"), [
    ((1, 10, 0), "limit=0"),
    ((1, 10, -3), "limit=-3"),
    ((0, 10, 4), "n=0"),
    ((2, -1, 4), "ctx=-1"),
    ((1, 10, 2.0), "limit=2.0"),
    ((True, 10, 4), "n=True"),
])
def test_step_times_refuse_what_a_run_cannot_be(args, message):
    sim = Simulator(SESSIONS, SimConfig(kv_memory_bytes=2**30))
    with pytest.raises(ValueError, match=f"_step_times: need n >= 1 rows.*{message}"):
        sim._step_times(*args)
    assert len(sim._step_times(2, 10, 3)) == 3


@pytest.mark.parametrize(("args", "message"), [((0, 10, 5), "n=0"), ((1, 10, 0), "last=0")])
def test_the_step_bound_refuses_an_empty_run(args, message):
    sim = Simulator(SESSIONS, SimConfig(kv_memory_bytes=2**30))
    with pytest.raises(ValueError, match=f"_steps_before_horizon: .*{message}"):
        sim._steps_before_horizon(*args)


def test_a_decode_run_with_nothing_running_says_so():
    sim = Simulator(SESSIONS, SimConfig(kv_memory_bytes=2**30))
    with pytest.raises(ValueError, match="_decode_run: no request is running"):
        sim._decode_run()
