"""`session_forgotten`: an integration drops a paused session it keeps no block of (vLLM's
offload cache policy bounds its records so), not knowing whether the session ended. Ended
while paused, the execution graph counted it as an abandonment of the tool it waited on;
forgotten, it learns nothing, in every policy that feeds a graph, adaptive's experts and
their shadow caches included."""

from __future__ import annotations

import pytest

from kvsaga.policy import AdaptivePolicy, make_policy

from .helpers import make, run_step, tokens


def _graphs(policy) -> list:
    if isinstance(policy, AdaptivePolicy):
        pols = [e.policy for e in policy.experts] + [sh.policy for sh in policy._shadows]
    else:
        pols = [policy]
    return [p.graph for p in pols if hasattr(p, "graph")]


def _abandoned(graph) -> int:
    return sum(n.abandoned for g in graph.workflows.values() for n in g.nodes.values())


@pytest.mark.parametrize("name", ["ttl", "graph", "saga", "adaptive"])
@pytest.mark.parametrize("hook, abandoned", [("session_forgotten", 0), ("session_ended", 1)])
def test_a_forgotten_paused_session_is_no_abandonment(name, hook, abandoned):
    policy = make_policy(name)
    m = make(policy, num_blocks=16)
    run_step(m, "a", tokens(0, 20), 0.0, tool="search")
    graphs = _graphs(policy)
    assert graphs and all("a" in g._tracks for g in graphs)
    getattr(policy, hook)(m.sessions["a"], 1.0)
    assert [_abandoned(g) for g in graphs] == [abandoned] * len(graphs)
    assert all("a" not in g._tracks for g in graphs)
    assert "a" not in getattr(policy, "views", {})
