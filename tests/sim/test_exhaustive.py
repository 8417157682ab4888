"""The exhaustive offline optimum on tiny traces: no policy and no oracle beats it."""

from __future__ import annotations

import dataclasses

import pytest

from kvsaga.sim import exhaustive
from kvsaga.sim.exhaustive import (
    TINY,
    ScriptedPolicy,
    exhaustive_optimum,
    random_tiny_trace,
    tiny_session,
)
from kvsaga.sim.simulator import SimConfig, Simulator, simulate
from kvsaga.sim.trace import Session, Step

POLICIES = ("lru", "ttl", "graph", "saga", "adaptive", "belady", "oracle-ttl")


def hand_trace() -> list[Session]:
    return [tiny_session("A", 0.0, [Step(4, 2, "read", 0.5), Step(5, 2, "test", 0.05),
                                    Step(3, 1)]),
            tiny_session("B", 0.02, [Step(6, 2, "read", 0.3), Step(4, 1)]),
            tiny_session("C", 0.04, [Step(5, 2, "read", 0.01), Step(2, 1)])]


def policy_results(sessions, config) -> dict[str, int]:
    return {p: simulate(sessions, dataclasses.replace(config, policy=p)).recomputed_tokens
            for p in POLICIES}


@pytest.mark.parametrize(("num_blocks", "optimum", "belady"), [(7, 4, 5), (8, 1, 1), (9, 0, 0)])
def test_hand_trace_optimum_and_belady_gap(num_blocks, optimum, belady):
    # Under request-level fcfs: workflow admission serves this trace recomputing nothing.
    config = SimConfig(preset=TINY, num_gpu_blocks=num_blocks, scheduler="fcfs")
    best = exhaustive_optimum(hand_trace(), config)
    assert best.recomputed_tokens == optimum
    results = policy_results(hand_trace(), config)
    assert all(v >= best.recomputed_tokens for v in results.values()), results
    # Belady's gap: at 7 blocks it recomputes 5 tokens where 4 suffice (1.25x): it keeps
    # the block used soonest, not the set of blocks whose loss costs least.
    assert results["belady"] == belady
    # The optimal script replays to the optimum.
    policy = ScriptedPolicy(best.script, cost=config.cost)
    r = Simulator(hand_trace(), config, policy=policy).run()
    assert r.recomputed_tokens == optimum and policy.taken == list(best.script)


@pytest.mark.parametrize("seed", range(6))
def test_no_policy_beats_the_optimum_on_random_tiny_traces(seed):
    sessions = random_tiny_trace(seed)
    longest = max(TINY.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    config = SimConfig(preset=TINY, num_gpu_blocks=longest + 1)
    best = exhaustive_optimum(sessions, config, max_runs=20_000)
    results = policy_results(sessions, config)
    assert all(v >= best.recomputed_tokens for v in results.values()), (best, results)


def test_the_search_runs_under_the_runs_cost_model(monkeypatch):
    """Session 43: the search's policy had no `cost`, so the schedulers that price swaps
    and churn by `manager.policy.cost` used the default PrefillCost for it and the run's
    cost model for belady: the two were not scheduled alike."""
    seen = []
    real = exhaustive.Simulator

    def spy(sessions, config, policy):
        seen.append(getattr(policy, "cost", None))
        return real(sessions, config, policy=policy)

    monkeypatch.setattr(exhaustive, "Simulator", spy)
    config = SimConfig(preset=TINY, num_gpu_blocks=8)
    exhaustive.exhaustive_optimum(hand_trace(), config)
    assert seen and all(c == config.cost for c in seen)
