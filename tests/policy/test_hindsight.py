"""The `hindsight` reference: belady told an earlier run's admission waits
(kvsaga/sim/hindsight.py)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from kvsaga.sim.exhaustive import TINY, exhaustive_optimum, random_tiny_trace, tiny_session
from kvsaga.sim.hindsight import HindsightOracle, best_offline, record
from kvsaga.sim.simulator import SimConfig, simulate
from kvsaga.sim.trace import Step
from kvsaga.sim.workloads import WORKLOADS


def small_trace():
    spec = WORKLOADS["swe"]
    return spec.generate(6, 3, arrival_rate=spec.arrival_rate / 0.1, scale=0.1)


def pressured(trace, share=0.5):
    base = SimConfig(preset="a100-llama3-8b")
    longest = max(base.cost.kv_spec.num_blocks_for(s.total_tokens) for s in trace)
    total = sum(base.cost.kv_spec.num_blocks_for(s.total_tokens) for s in trace)
    return SimConfig(preset="a100-llama3-8b", num_gpu_blocks=max(int(total * share),
                                                                 longest + 1))


def test_waits_move_a_paused_sessions_next_use_past_its_release():
    s = tiny_session("a", 0.0, [Step(4, 1, "t", 1.0), Step(2, 1)])
    clock = [0.0]
    o = HindsightOracle([s], 4, waits={("a", 1): 5.0})
    o.clock = lambda: clock[0]
    o.released("a")
    o.started("a")
    clock[0] = 2.0
    o.finished("a", 2.0, 1.0)  # released at 3 by the trace; admitted at 8 before
    assert o.next_use("a", None, 0, 2.5) == 8.0
    clock[0] = 3.0
    o.released("a")  # the tool returned: still not needed before 8
    assert o.next_use("a", None, 0, 3.0) == 8.0
    clock[0] = 4.0
    o.started("a")  # admitted earlier than before: needed now
    assert o.next_use("a", None, 0, 4.0) == 4.0
    assert o.recorded_waits() == {("a", 1): 1.0}


def test_without_waits_it_answers_as_the_trace_oracle():
    s = tiny_session("a", 0.0, [Step(4, 1, "t", 1.0), Step(2, 1)])
    o = HindsightOracle([s], 4)
    o.clock = lambda: 3.0
    o.finished("a", 2.0, 1.0)
    assert o.next_use("a", None, 0, 2.5) == 3.0
    o.released("a")
    assert o.next_use("a", None, 0, 3.0) == 3.0 and o.is_waiting("a")


def test_bad_input_is_refused_by_name():
    s = tiny_session("a", 0.0, [Step(4, 1)])
    with pytest.raises(ValueError, match=r"\('a', 1\)"):
        HindsightOracle([s], 4, waits={("a", 1): -1.0})
    with pytest.raises(ValueError, match="finite"):
        HindsightOracle([s], 4, waits={("a", 1): math.inf})
    o = HindsightOracle([s], 4)
    with pytest.raises(RuntimeError, match="clock"):
        o.released("a")
    config = SimConfig(preset=TINY, num_gpu_blocks=8)
    with pytest.raises(ValueError, match="steer the offline policies"):
        record([s], config, "lru", waits={("a", 1): 1.0})
    with pytest.raises(ValueError, match="rounds"):
        best_offline([s], config, rounds=-1)
    with pytest.raises(ValueError, match="'lru'"):
        best_offline([s], config, policies=("lru",))


def test_recording_changes_no_run():
    trace = small_trace()
    config = pressured(trace)
    alone = {}
    for name in ("lru", "graph", "belady"):
        alone[name] = simulate(trace, dataclasses.replace(config, policy=name)).recomputed_tokens
        run = record(trace, config, name)
        assert run.result.recomputed_tokens == alone[name], name
        assert run.waits and all(w >= 0 and k >= 1 for (_, k), w in run.waits.items())
    assert alone["lru"] > 0  # the case is under pressure: the test compares something


def test_best_offline_is_at_most_belady_and_one_of_its_runs():
    trace = small_trace()
    config = pressured(trace)
    lru = record(trace, config, "lru")
    ref = best_offline(trace, config, (lru,), rounds=1)
    belady = simulate(trace, dataclasses.replace(config, policy="belady")).recomputed_tokens
    assert ref.runs[0].source == "belady" and ref.runs[0].result.recomputed_tokens == belady
    assert [r.source for r in ref.runs[:6]] == [
        "belady", "oracle-ttl", "belady<-belady", "oracle-ttl<-belady", "belady<-lru",
        "oracle-ttl<-lru"]
    assert len(ref.runs) == 8
    assert ref.recomputed_tokens == min(r.result.recomputed_tokens for r in ref.runs)
    assert ref.recomputed_tokens <= belady


@pytest.mark.parametrize("seed", range(200, 206))
def test_never_below_the_exact_optimum(seed):
    sessions = random_tiny_trace(seed)
    longest = max(TINY.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    for scheduler in ("fcfs", "workflow"):
        config = SimConfig(preset=TINY, num_gpu_blocks=longest + 1, scheduler=scheduler)
        best = exhaustive_optimum(sessions, config, max_runs=20_000)
        ref = best_offline(sessions, config, (record(sessions, config, "lru"),))
        assert ref.recomputed_tokens >= best.recomputed_tokens
