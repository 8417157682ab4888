"""An idle simulated GPU with steps waiting (its scheduler admits none) jumps no further
than the other GPUs' next action. It jumped to its scheduler's wake-up (up to
`idle_admit_s`, 1 s, ahead) while another GPU still ran steps: a step that GPU finished
then released a session's next step before the jump's end, and the router read the jumped
GPU's stats as of its later clock, or sent the step there to wait for that clock (review
s46 simcluster, finding 2; repro idle_late.py: 5 steps late under round-robin, up to
0.45 s). Capped at the others' next action alone, a jump livelocked (idle_fix.py): a GPU
cut at its own clock, as long as another acts at that time, stays the earliest GPU."""

from __future__ import annotations

import pytest

from kvsaga.sim.cluster import _GPU, ClusterSimulator
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import generate

SESSIONS = generate("swe", 24, seed=1, scale=0.1, arrival_rate=4.0)
CONFIG = SimConfig(kv_memory_bytes=int(1.6 * 2**30), scheduler="workflow")


# The most GPU actions (batch steps and idle jumps) a run of this trace may take: it takes
# about 11,000 under either router; a livelock (the simple cap's) never ends, and this turns
# it into a failure rather than a hung test run (pytest-timeout is not a dependency).
MAX_ACTIONS = 200_000


class _Watched(_GPU):
    """Remembers whether its last action was an idle jump, counts the jumps cut short at
    its own clock (another GPU acts at that very time), and fails a run that acts more
    than `MAX_ACTIONS` times."""

    jumped = False

    def _act(self):
        self.cluster.actions += 1
        if self.cluster.actions > MAX_ACTIONS:
            raise AssertionError(f"over {MAX_ACTIONS} GPU actions: the run does not end "
                                 f"(at t={self.now:.6f} on {self.name})")

    def _idle(self):
        self._act()
        before = self.now
        super()._idle()
        self.jumped = True
        self.cluster.cut_at_clock += getattr(self, "_held", False) and self.now == before

    def step(self):
        self._act()
        self.jumped = False
        return super().step()  # (an idle jump inside it sets `jumped` again)


def _run(router):
    sim = ClusterSimulator(SESSIONS, CONFIG, gpus=3, router=router)
    sim.gpu_class = _Watched
    sim.cut_at_clock = sim.actions = 0
    sim.ahead = []
    route = sim._route

    def routed(t, session, k):
        sim.ahead += [(g.name, g.now - t) for g in sim.gpus.active if g.jumped and g.now > t]
        route(t, session, k)
    sim._route = routed
    return sim, sim.run()


@pytest.mark.parametrize("router", ["round-robin", "affinity"])
def test_no_gpu_idles_past_a_step_it_may_be_routed(router):
    sim, res = _run(router)
    assert sim.ahead == []
    assert res.num_sessions == len(SESSIONS)


def test_jumps_cut_at_the_gpus_own_clock_move_on():
    """Where the simple cap livelocked: the run ends although some jumps could not move
    at all (another GPU acted at the same time)."""
    cut = sum(_run(router)[0].cut_at_clock for router in ("round-robin", "affinity"))
    assert cut > 0
