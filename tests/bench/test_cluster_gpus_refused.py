"""bench/cluster_gpus.py's `WatchedCluster` with a refused move (review s46 simholddiff,
finding 1): since a refused import keeps the session home and retries its step
(kvsaga/sim/cluster.py), a refused route leaves no `_routes` entry and `_move` returns None.
The watcher read the entry (KeyError with `--timeline` when the home was ahead) and counted
every refused move as a steal. (The simulator's reports are live, and a steal needs the
thief's report to show room for the session, `KvsagaRouter._has_room`: the test makes every
GPU look roomy, as a report taken before it filled would, so that the move is tried.)"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from cluster_gpus import WatchedCluster  # noqa: E402

from kvsaga.routing import KvsagaRouter, RoutingConfig  # noqa: E402
from kvsaga.sim.config import SimConfig  # noqa: E402
from kvsaga.sim.trace import Session, SharedPrefix, Step  # noqa: E402

CONFIG = SimConfig(num_gpu_blocks=320, scheduler="fcfs", policy="lru")


def _session(sid: str, arrival: float, group: str, steps) -> Session:
    st = [Step(i, o, "t", pause) for i, o, pause in steps]
    st[-1] = Step(st[-1].input_tokens, st[-1].output_tokens, None, 0.0)
    return Session(id=sid, workflow="w", arrival_s=arrival,
                   shared_prefix=SharedPrefix(group, 0), steps=tuple(st))


def _trace(big_at: float) -> list[Session]:
    """S's second step is stolen for gpu0, which B has filled: its import is refused (the
    trace of tests/cluster/test_sim_cluster_refused_move.py, B arriving later so that S's
    home is ahead in busy time when the step is routed)."""
    return [_session("D", 0.0, "g", [(300, 1000, 0)]),
            _session("B", big_at, "big", [(4500, 500, 0)]),
            _session("S2", 0.001, "g", [(300, 1000, 0)]),
            _session("S3", 0.002, "g", [(300, 1000, 0)]),
            _session("S", 0.003, "g", [(1000, 10, 0.5), (50, 10, 0)])]


@pytest.mark.parametrize("big_at", [0.1, 0.3])
def test_a_refused_move_is_watched_as_no_steal(big_at, monkeypatch):
    monkeypatch.setattr(KvsagaRouter, "_has_room", staticmethod(lambda x, tokens, stats: True))
    routing = RoutingConfig(bytes_per_token=CONFIG.cost.kv_spec.bytes_per_token,
                            cost=CONFIG.cost, steal_margin=1.0, prefix_slack=100.0)
    sim = WatchedCluster(_trace(big_at), CONFIG, 2, "kvsaga", routing, last_arrival=big_at)
    sim.timeline_s = 0.5
    res = sim.run()
    assert sim.num_refused == 1  # the case this test is about
    assert res.num_moved == 0
    assert sum(sim.stolen_out.values()) == sum(sim.stolen_in.values()) == 0
    assert sum(sim.placed.values()) == len(_trace(big_at))
