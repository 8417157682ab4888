"""A released step (a session's arrival or its tool's return) is stamped with the end of the
batch step during which it came, not its event's own time, as the engine stamps it:
`LLMEngine.add_request` reads its clock when it runs, and kvsaga-serve runs it between steps
(review s47 simcore #5 proposed the event's time, up to a batch step earlier; that would
start the shared scheduler's waits, deadlines and aging earlier than the engine's, and stamp
an arrival before a demotion the step's end already made). The same on the fast path, the
reference path and a cluster's GPUs."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.base import Scheduler
from kvsaga.sim.cluster import _GPU, ClusterSimulator
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.workloads import generate

TRACE = generate("swe", 12, seed=3, scale=0.05, arrival_rate=4.0)


def _record_adds(monkeypatch) -> list[tuple[object, float]]:
    """(request, the time `Scheduler.add` was given) of every step queued."""
    adds: list[tuple[object, float]] = []
    add = Scheduler.add

    def recording(self, req, now):
        adds.append((req, now))
        add(self, req, now)

    monkeypatch.setattr(Scheduler, "add", recording)
    return adds


def _check(adds, released, clocks) -> None:
    """Every step was stamped with the clock that released it, and many came during a batch
    step (their own event time is earlier: the stamp is not it)."""
    assert adds
    late = 0
    for req, now in adds:
        t = clocks[(req.session_id, req.k)]
        assert req.arrival == now == t
        late += t > released[(req.session_id, req.k)]
    assert late > len(adds) // 4


@pytest.mark.parametrize("reference", [False, True])
@pytest.mark.parametrize("scheduler", ["workflow", "fcfs"])
def test_a_released_step_is_stamped_when_released(monkeypatch, reference, scheduler):
    adds = _record_adds(monkeypatch)
    sim = Simulator(TRACE, SimConfig(num_gpu_blocks=600, scheduler=scheduler),
                    reference=reference)
    released, clocks = {}, {}
    push, release = sim._push_event, sim._release_due_events

    def pushing(t, session, k):
        released[(session.id, k)] = t
        push(t, session, k)

    def releasing():
        for t, _, session, k in sim._events:
            if t <= sim.now:
                clocks[(session.id, k)] = sim.now
        release()

    sim._push_event, sim._release_due_events = pushing, releasing
    for s in TRACE:  # the arrivals were pushed in the constructor
        released[(s.id, 0)] = s.arrival_s
    sim.run()
    assert len(adds) == sum(s.num_steps for s in TRACE)
    _check(adds, released, clocks)


def test_a_cluster_gpu_stamps_a_step_when_it_releases_it(monkeypatch):
    adds = _record_adds(monkeypatch)
    released, clocks = {}, {}
    place, release = _GPU.place, _GPU._release_due_events

    def placing(self, t, session, k):
        released[(session.id, k)] = t  # a refused move's retry is placed again, later
        place(self, t, session, k)

    def releasing(self):
        for t, _, session, k in self._events:
            if t <= self.now:
                clocks[(session.id, k)] = self.now
        release(self)

    monkeypatch.setattr(_GPU, "place", placing)
    monkeypatch.setattr(_GPU, "_release_due_events", releasing)
    ClusterSimulator(TRACE, SimConfig(num_gpu_blocks=600), gpus=2, router="kvsaga").run()
    assert len(adds) == sum(s.num_steps for s in TRACE)
    _check(adds, released, clocks)
