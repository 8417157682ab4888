"""The exhaustive offline optimum on tiny traces: no policy and no oracle beats it."""

from __future__ import annotations

import dataclasses
from itertools import combinations

import pytest

from kvsaga.sim import exhaustive
from kvsaga.sim.exhaustive import (
    TINY,
    ScriptedPolicy,
    exhaustive_optimum,
    fed_policy,
    random_tiny_trace,
    random_wait_trace,
    tiny_session,
)
from kvsaga.sim.hindsight import record
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


GRAPH_KEEPERS = ("ttl", "saga", "graph", "adaptive", "oracle-ttl")


class FollowPolicy(ScriptedPolicy):
    """Evicts what its inner policy chooses (in id order, as a script does) and records the
    script of those choices: the inner policy's own run, written as a search branch."""

    def choose_victims(self, num_blocks, now):
        victims = sorted(self.inner.choose_victims(num_blocks, now))
        options = list(combinations(sorted(self.cached), num_blocks))
        self.taken.append(options.index(tuple(victims)))
        self.branching.append(len(options))
        return victims


def waits_case() -> tuple[list[Session], SimConfig]:
    """A trace where the graph the workflow scheduler reads changes what can be saved: the
    graph-keeping policies recompute 4 tokens, every graph-less run at least 9."""
    return random_wait_trace(415), SimConfig(preset=TINY, num_gpu_blocks=5,
                                             scheduler="workflow")


def test_the_fed_optimum_bounds_the_policy_whose_graph_it_reads():
    """Session 44: the search's scripted policy kept no graph, so under workflow a policy
    that keeps one ran under admissions it never explored: here ttl recomputes 4 tokens and
    the search's "optimum" was 9. Fed each policy's own graph, the search finds 4."""
    sessions, config = waits_case()
    plain = exhaustive_optimum(sessions, config)
    results = policy_results(sessions, config)
    assert plain.recomputed_tokens == 9 and results["ttl"] == 4  # the old search: no bound
    for p in GRAPH_KEEPERS:
        fed = exhaustive_optimum(sessions, config, fed=p)
        assert fed.recomputed_tokens <= results[p], (p, fed, results)
    assert exhaustive_optimum(sessions, config, fed="ttl").recomputed_tokens == 4


@pytest.mark.parametrize("policy", GRAPH_KEEPERS)
def test_a_policys_own_choices_are_a_branch_of_its_fed_search(policy):
    """The argument that makes the fed optimum a bound: the policy's own choices, taken as a
    script, replay to its own run when the scheduler reads a fresh copy of its graph fed
    the hooks; without the graph (the old scripted policy) they do not."""
    sessions, config = waits_case()
    own = simulate(sessions, dataclasses.replace(config, policy=policy)).recomputed_tokens
    follow = FollowPolicy([], inner=fed_policy(policy, sessions, config))
    assert Simulator(sessions, config, policy=follow).run().recomputed_tokens == own
    replay = ScriptedPolicy(follow.taken, inner=fed_policy(policy, sessions, config))
    assert Simulator(sessions, config, policy=replay).run().recomputed_tokens == own
    assert replay.taken == follow.taken
    graphless = ScriptedPolicy(follow.taken, cost=config.cost)
    try:
        again = Simulator(sessions, config, policy=graphless).run().recomputed_tokens
    except IndexError:  # the run asked other questions: the script does not fit it
        again = None
    assert again != own


@pytest.mark.parametrize("seed", [400, 403])
def test_no_policy_beats_its_fed_optimum_on_wait_traces(seed):
    sessions = random_wait_trace(seed)
    longest = max(TINY.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    config = SimConfig(preset=TINY, num_gpu_blocks=longest + 1, scheduler="workflow")
    results = policy_results(sessions, config)
    for p in GRAPH_KEEPERS:
        fed = exhaustive_optimum(sessions, config, max_runs=5_000, fed=p,
                                 below=results[p] + 1)
        assert fed is not None and fed.recomputed_tokens <= results[p], (p, results)


def test_below_searches_only_under_a_known_figure():
    config = SimConfig(preset=TINY, num_gpu_blocks=7, scheduler="fcfs")
    full = exhaustive_optimum(hand_trace(), config)
    assert exhaustive_optimum(hand_trace(), config, below=full.recomputed_tokens) is None
    cut = exhaustive_optimum(hand_trace(), config, below=full.recomputed_tokens + 1)
    assert cut.recomputed_tokens == full.recomputed_tokens and cut.num_runs <= full.num_runs


def test_wait_traces_make_the_workflow_scheduler_demote_and_queue():
    """`random_wait_trace` exists for what `random_tiny_trace` rarely does: demotions and
    resumed steps that wait for admission, at a capacity still searched exactly."""
    sessions = random_wait_trace(400)
    config = SimConfig(preset=TINY, num_gpu_blocks=6, scheduler="workflow")
    runs = [record(sessions, config, p) for p in ("lru", "ttl")]
    assert all(r.demotions > 0 for r in runs)
    assert any(w > 0 for r in runs for w in r.waits.values())
    assert exhaustive_optimum(sessions, config, max_runs=5_000).recomputed_tokens > 0


def test_fed_policy_names_an_unknown_policy():
    with pytest.raises(ValueError, match="'nope'"):
        fed_policy("nope", hand_trace(), SimConfig(preset=TINY, num_gpu_blocks=8))
