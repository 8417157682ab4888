"""bench/policies_decisions.py: one policy's victims against another's at the same pool
state, on fit seeds only, without disturbing the run it reads them from."""

from __future__ import annotations

import itertools
import math

import pytest

from tests.bench.test_policies import load


def test_sooner_pairs_counts_pairs_where_mine_is_read_first():
    mod = load("policies_decisions")
    mine, theirs = [1.0, 5.0, math.inf], [2.0, 5.0, math.inf, 0.5]
    want = sum(1.0 if x < y else 0.5 if x == y else 0.0
               for x, y in itertools.product(mine, theirs))
    assert mod._sooner_pairs(mine, theirs) == (pytest.approx(want), 12)


def test_an_evaluation_seed_is_refused():
    mod = load("policies_decisions")
    with pytest.raises(ValueError, match="not a fit seed"):
        mod.decisions("swe", 931, 1000, "graph", "ttl")
    with pytest.raises(SystemExit):
        mod.main(["--seed", "941"])
    with pytest.raises(SystemExit):
        mod.main(["--pair", "graph,graph"])


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


def test_the_smoothed_goal_is_written_once_per_policy():
    """`--smooth` judges `DEFAULT_POLICY` and `graph`: when they are one policy, one goal."""
    smooth = load("policies_smooth")
    rows = [{"trace": "swe", "seed": 941, "frac": 0.3, "policy": p, "recomputed_tokens": x,
             "hit_rate": 0.9, "num_gpu_blocks": 100}
            for p, x in (("lru", 3), ("saga", 2), ("ttl", 2), ("graph", 1))]
    text = "\n".join(smooth.markdown(rows, ["lru", "saga", "ttl", "graph"], 60.0,
                                     ["graph", "graph"]))
    assert text.count("Smoothed goal for `graph`") == 1
