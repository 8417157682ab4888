"""bench/policies_decisions.py: one policy's victims against another's at the same pool
state, on fit seeds only, without disturbing the run it reads them from."""

from __future__ import annotations

import itertools
import math

import pytest

from tests.bench.test_policies import load
from tests.exits import usage_error


def test_sooner_pairs_counts_pairs_where_mine_is_read_first():
    mod = load("policies_decisions")
    mine, theirs = [1.0, 5.0, math.inf], [2.0, 5.0, math.inf, 0.5]
    want = sum(1.0 if x < y else 0.5 if x == y else 0.0
               for x, y in itertools.product(mine, theirs))
    assert mod._sooner_pairs(mine, theirs) == (pytest.approx(want), 12)


def test_median_is_the_mean_of_the_middle_two_for_an_even_count():
    mod = load("policies_decisions")
    assert mod._median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert mod._median([5.0, 1.0, 3.0]) == 3.0
    assert mod._median([7.0]) == 7.0
    assert math.isnan(mod._median([]))


def test_an_evaluation_seed_is_refused(capsys):
    mod = load("policies_decisions")
    with pytest.raises(ValueError, match="not a fit seed"):
        mod.decisions("swe", 931, 1000, "graph", "ttl")
    with pytest.raises(SystemExit) as e:
        mod.main(["--seed", "941"])
    assert "seed 941 is not a fit seed" in usage_error(e, capsys)
    with pytest.raises(SystemExit) as e:
        mod.main(["--pair", "graph,graph"])
    assert "--pair must name two different policies, got 'graph,graph'" in usage_error(e, capsys)


def test_the_shadow_leaves_the_leaders_run_as_it_is_alone():
    """The leader's recomputation with the shadow naming victims beside it is its solo
    run's; the counts add up (leader-only victims by class, kept blocks read at most once)."""
    mod = load("policies_decisions")
    P = load()
    peak, longest = P._peak("swe+bfcl", 402)
    blocks = P._blocks(peak, longest, 0.6)
    r = mod.decisions("swe+bfcl", 402, blocks, "graph", "ttl")
    assert r["recomputed"] == mod.solo("swe+bfcl", 402, blocks, "graph")
    assert 0 < r["differ"] < r["searches"]
    assert sum(v for k, v in r.items() if k.startswith("mine:")) == r["only"]
    assert 0 <= r["earned"] <= r["kept"]
    assert r["lost"] <= r["only"]
    assert r["worse_step"] + r["better_step"] <= r["differ"]


def test_crossed_admission_reads_the_named_experts_graph():
    """`--admission`: the ranking is the first expert's, the scheduler's graph the second's
    (lru has none)."""
    mod = load("policies_decisions")
    pol = mod._Crossed(experts=("graph", "ttl"), shadow_cache=False, realized=True,
                       epoch_pools=mod.ENDLESS)
    pol.admitted_by = 1
    assert pol.graph is pol.experts[1].policy.graph is not pol.experts[0].policy.graph
    pol = mod._Crossed(experts=("graph", "lru"), shadow_cache=False, realized=True,
                       epoch_pools=mod.ENDLESS)
    pol.admitted_by = 1
    assert pol.graph is None
    with pytest.raises(ValueError, match="not a fit seed"):
        mod.crossed("swe", 941, 1000, "graph", "lru")


def test_a_spec_is_registered_as_a_policy_with_its_constants(monkeypatch):
    """bench/policies_check.py: `graph[demoted_mean=0]` becomes a name whose policy has
    that constant; a bad constant or name is refused and nothing is registered."""
    from kvsaga.policy import POLICIES, make_policy
    check = load("policies_check")
    monkeypatch.setattr("kvsaga.policy.POLICIES", dict(POLICIES))
    import kvsaga.policy as kp
    monkeypatch.setattr(check, "POLICIES", kp.POLICIES)
    assert check.register("graph") == "graph"
    name = check.register("graph[demoted_mean=0]")
    pol = make_policy(name)
    assert pol.returns.demoted_mean is False and pol.name == name
    assert make_policy(name, demoted_mean=True).returns.demoted_mean is True
    with pytest.raises(TypeError):
        check.register("graph[no_such=1]")
    with pytest.raises(ValueError, match="unknown policy"):
        check.register("nope[a=1]")
    assert "graph[no_such=1]" not in kp.POLICIES


def test_a_registered_spec_is_priced_by_the_runs_cost_model(monkeypatch):
    """A registered spec keeps its base's signature, so the simulator builds it with the
    run's cost model (`Simulator._make_policy` passes `cost` only where the signature takes
    it). Until session 33 it did not: a spec ran on the policy's default `PrefillCost`, and
    `graph[demoted_release=1]`, today's `graph`, moved the AFS ratios against it."""
    import inspect

    from kvsaga.policy import POLICIES
    from kvsaga.sim.simulator import SimConfig, Simulator
    from kvsaga.sim.workloads import generate
    check = load("policies_check")
    import kvsaga.policy as kp
    monkeypatch.setattr("kvsaga.policy.POLICIES", dict(POLICIES))
    monkeypatch.setattr(check, "POLICIES", kp.POLICIES)
    import kvsaga.sim.simulator as sim_mod
    monkeypatch.setattr(sim_mod, "POLICIES", kp.POLICIES)
    name = check.register("graph[demoted_release=1]")
    params = inspect.signature(kp.POLICIES[name]).parameters
    assert list(params) == list(inspect.signature(kp.POLICIES["graph"]).parameters)
    sessions = generate("swe", 3, seed=1)
    for policy in ("graph", name):
        sim = Simulator(sessions, SimConfig(num_gpu_blocks=100_000, policy=policy))
        assert sim.manager.policy.cost is sim.cost
        assert sim.manager.policy.demoted_release is True
    assert kp.POLICIES[name]().name == name


def test_the_smoothed_goal_is_written_once_per_policy():
    """`--smooth` judges `DEFAULT_POLICY` and `graph`: when they are one policy, one goal."""
    smooth = load("policies_smooth")
    rows = [{"trace": "swe", "seed": 941, "frac": 0.3, "policy": p, "recomputed_tokens": x,
             "hit_rate": 0.9, "num_gpu_blocks": 100}
            for p, x in (("lru", 3), ("saga", 2), ("ttl", 2), ("graph", 1))]
    text = "\n".join(smooth.markdown(rows, ["lru", "saga", "ttl", "graph"], 60.0,
                                     ["graph", "graph"]))
    assert text.count("Smoothed goal for `graph`") == 1


def _afs_row(family, seed, frac, policy, ratio, scheduler="workflow"):
    return {"family": family, "seed": seed, "frac": frac, "policy": policy,
            "scheduler": scheduler, "afs_max_slowdown_ratio": ratio}


def test_the_afs_veto_rejects_a_worse_ratio_and_names_a_met_goal_missed():
    """bench/policies_check.py's AFS veto: a candidate fails on any default row whose ratio
    is higher than the incumbent's as printed (two decimals), and the rows that crossed the
    goal (<= 1.5) from met to missed are counted; fcfs+lru's rows are not the default's."""
    check = load("policies_check")
    rows = [_afs_row("mix", 2, 0.5, "old", 1.44), _afs_row("mix", 2, 1.0, "old", 2.12),
            _afs_row("noisy", 8, 0.25, "old", 2.26), _afs_row("noisy", 8, 0.25, "lru", 1.0,
                                                               scheduler="fcfs")]
    same = [{**r, "policy": "new"} for r in rows if r["scheduler"] == "workflow"]
    assert check.afs_veto(rows + same, "new", "old") == ([], 0)
    noise = [{**r, "afs_max_slowdown_ratio": r["afs_max_slowdown_ratio"] + 0.004}
             for r in same]  # equal as printed: not worse
    assert check.afs_veto(rows + noise, "new", "old") == ([], 0)
    better = [{**r, "afs_max_slowdown_ratio": 1.0} for r in same]
    assert check.afs_veto(rows + better, "new", "old") == ([], 0)
    dm = [_afs_row("mix", 2, 0.5, "new", 1.59), _afs_row("mix", 2, 1.0, "new", 2.0),
          _afs_row("noisy", 8, 0.25, "new", 2.79)]
    worse, crossed = check.afs_veto(rows + dm, "new", "old")
    assert crossed == 1 and worse == ["mix seed 2 50% 1.44 -> 1.59 (the goal <= 1.5 met -> "
                                      "missed)", "noisy seed 8 25% 2.26 -> 2.79"]
    with pytest.raises(ValueError, match="differ in their cases"):
        check.afs_veto(rows + dm[:2], "new", "old")


def test_the_afs_veto_runs_the_reports_default_rows_with_each_policy():
    """Each arm is the report's default rows with its policy as the default policy; the
    fcfs+lru rows beside them run once; the probe and compute-share arms are left out."""
    check = load("policies_check")
    import scheduling_mix
    sched, policy = scheduling_mix.DEFAULT.split("+")
    tasks = check.afs_tasks(["a", "b"])
    assert len(tasks) == len(set(tasks)) and all(t[6] is None for t in tasks)
    by = {p: {t[:4] for t in tasks if t[4:6] == (sched, p)} for p in ("a", "b", "lru")}
    assert by["a"] == by["b"] and by["a"] and not any(t[4:6] == (sched, policy) for t in tasks)
    assert {t[:4] for t in tasks if t[4] == "fcfs"} == by["a"]
    assert {t[0] for t in tasks} == set(scheduling_mix.MIXES)


def test_split_demoted_classes_add_up_to_the_demoted_ones(monkeypatch):
    """`--split-demoted` (session 32) only splits the demoted class by whether the tool had
    returned: the two parts add up to the unsplit count, on both sides, and nothing else
    moves."""
    mod = load("policies_decisions")
    P = load()
    # a case where both sides evict demoted blocks under today's defaults (swe+bfcl 402
    # at 60% until the scheduler's round-41 default, session 33: no demoted victim there)
    peak, longest = P._peak("swe+bfcl", 951)
    blocks = P._blocks(peak, longest, 0.6)
    whole = mod.decisions("swe+bfcl", 951, blocks, "graph", "ttl")
    monkeypatch.setattr(mod, "SPLIT_DEMOTED", True)
    split = mod.decisions("swe+bfcl", 951, blocks, "graph", "ttl")
    assert split["recomputed"] == whole["recomputed"]
    for side in ("mine", "theirs"):
        parts = [split.get(f"{side}:demoted, tool {x}", 0) for x in ("out", "back")]
        assert f"{side}:demoted" not in split
        assert sum(parts) == whole.get(f"{side}:demoted", 0)
        for c in ("queued", "paused", "plain", "dead"):
            assert split.get(f"{side}:{c}", 0) == whole.get(f"{side}:{c}", 0)
    assert any(split.get(f"mine:demoted, tool {x}") for x in ("out", "back"))
