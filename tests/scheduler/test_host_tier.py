"""Issue 10 (session 57): a host tier made the `workflow` scheduler recompute more. Its gate
counted the host tier's blocks as room for the admitted working sets (GPU + host), so with
a tier it admitted sessions whose running steps the GPU could not hold beside the paused
contexts: they evicted each other, the host tier (fed every GPU victim, in LRU order) lost
the swapped-out contexts before they came back, and they were recomputed. The room now
counts the host tier's blocks beyond the GPU's only (`host_room` "beyond_gpu", the
default: kvsaga/scheduler/block_room.py, `tiers_room`, says why); the tier still serves hits.

The trace: swe, 12 sessions, seed 1, scale 0.05, twice the family's arrival rate, on 376
GPU blocks (the longest session's need + 1) and 188 host blocks; with lru the old rule
recomputed 152,130 tokens with the tier against 45,523 without it (graph: 103,601 against
45,332). The same with a tier twice the GPU's (752 blocks), where the tier adds room."""

from __future__ import annotations

import pytest

from kvsaga.scheduler import make_scheduler
from kvsaga.scheduler.block_room import HOST_ROOM, HOST_ROOMS, tiers_room
from kvsaga.sim.config import SimConfig
from kvsaga.sim.simulator import Simulator
from kvsaga.sim.workloads import WORKLOADS, generate
from tests.scheduler.helpers import manager, scheduler_state

GPU, HOST = 376, 188


def _sessions():
    rate = WORKLOADS["swe"].arrival_rate * 2 / 0.05
    return generate("swe", 12, seed=1, scale=0.05, arrival_rate=rate)


def _recomputed(host: int, policy: str = "lru", **params) -> int:
    cfg = SimConfig(num_gpu_blocks=GPU, num_host_blocks=host or None, policy=policy,
                    scheduler="workflow", scheduler_params=params or None)
    return Simulator(_sessions(), cfg).run().recomputed_tokens


@pytest.mark.parametrize("host", [HOST, 2 * GPU])
@pytest.mark.parametrize("policy", ["lru", "graph"])
def test_host_tier_does_not_make_workflow_recompute_more(policy, host):
    without = _recomputed(0, policy)
    assert without > 0  # the trace thrashes without the tier: there is something to lose
    assert _recomputed(host, policy) <= without


def test_counting_the_host_as_room_recomputes_more_here():
    """The diagnosis, pinned: the old rule (`host_room` "all") on the same trace is the loss."""
    assert _recomputed(HOST, host_room="all") > _recomputed(0)


def test_tiers_room_counts_what_the_rule_adds():
    small, large = manager(16, num_host_blocks=10), manager(16, num_host_blocks=40)
    assert HOST_ROOM == "beyond_gpu"
    assert [tiers_room(small, r) for r in HOST_ROOMS] == [16, 16, 26]
    assert [tiers_room(large, r) for r in HOST_ROOMS] == [16, 40, 56]
    assert make_scheduler("workflow", small).capacity == 16
    assert make_scheduler("workflow", large).capacity == 40
    assert make_scheduler("workflow", large, host_room="none").capacity == 16
    assert make_scheduler("workflow", large, host_room="all").capacity == 56
    assert make_scheduler("workflow", manager(16), host_room="all").capacity == 16  # no tier


@pytest.mark.parametrize("bad", ["All", "half", 1.0, None, True])
def test_bad_host_room_is_refused_by_name(bad):
    m = manager(16, num_host_blocks=10)
    before = scheduler_state(make_scheduler("workflow", m))
    with pytest.raises(ValueError, match="host_room"):
        make_scheduler("workflow", m, host_room=bad)
    assert scheduler_state(make_scheduler("workflow", m)) == before
    assert m.pool.num_available == 16
