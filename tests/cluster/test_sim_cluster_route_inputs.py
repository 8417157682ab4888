"""What the cluster simulator hands the router at each routing (review s49 simcluster):

- finding 1: a simulated GPU counted its paused sessions' predicted resumes at its own
  clock, which an idle GPU leaves at its last action, and kept the count until it acted
  again; a Ray replica counts at its report's time. The count depends on the time with
  `hints="oracle"` (a hint's `expected_s`) or a graph policy; now it is the routing's
  (185 of 2826 reads differed on assistant, 3 GPUs, oracle hints).
- finding 2: `RouteRequest.context_tokens` ("the session's context before this step") was
  step k-1's prompt, short by step k-1's output (212 of 212 later steps on swe).
"""

from __future__ import annotations

import pytest

from kvsaga.replica_stats import DEFAULT_RESUME_HORIZON_S, count_predicted_resumes
from kvsaga.sim.cluster import ClusterSimulator
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import generate


def _watch_routes(sim: ClusterSimulator, check) -> None:
    """Call `check(req, stats)` at each routing, before the router decides."""
    route = sim.router.route

    def watched(req, stats):
        check(req, stats)
        return route(req, stats)
    sim.router.route = watched


@pytest.mark.parametrize(("policy", "hints"), [("lru", "oracle"), ("graph", "tool")])
def test_predicted_resumes_are_counted_at_the_routings_time(policy, hints):
    sessions = generate("assistant", 8, seed=3, scale=0.2, arrival_rate=1.0)
    config = SimConfig(kv_memory_bytes=3 * 2**30, scheduler="workflow", policy=policy,
                       hints=hints)
    sim = ClusterSimulator(sessions, config, gpus=2, router="kvsaga")
    reads, wrong = 0, []

    def check(req, stats):
        nonlocal reads
        for g in sim.gpus.active:
            t = max(g.now, sim.now)
            want = count_predicted_resumes(g.manager, t, DEFAULT_RESUME_HORIZON_S)
            reads += 1
            if stats[g.name].predicted_resumes != want:
                wrong.append((sim.now, g.name, g.now, stats[g.name].predicted_resumes, want))
    _watch_routes(sim, check)
    sim.run()
    assert reads > 100
    assert wrong == []


def test_context_tokens_are_the_sessions_context_before_the_step():
    """With live reports the home's `session_tokens` is the session's context when its
    next step is routed: the request must say the same (a stamped report's `_tokens`
    takes the larger of the two, so a short one would size a steal too small)."""
    sessions = generate("swe", 6, seed=3, scale=0.1, arrival_rate=2.0)
    sim = ClusterSimulator(sessions, SimConfig(kv_memory_bytes=2 * 2**30, scheduler="fcfs"),
                           gpus=2, router="kvsaga")
    seen = []

    def check(req, stats):
        home = sim.router.homes.get(req.session)
        if home is not None:
            seen.append((req.context_tokens, stats[home].session_tokens.get(req.session)))
        else:
            assert req.context_tokens == 0  # a new session holds nothing yet
    _watch_routes(sim, check)
    sim.run()
    assert len(seen) > 100
    assert [(c, h) for c, h in seen if c != h] == []
