"""AsyncEngine.busy_s: the seconds the engine thread spends in steps, which a Ray replica
reports for routing (kvsaga.routing's balance steal)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

from kvsaga.serve import async_engine
from kvsaga.serve.async_engine import AsyncEngine


class FakeEngine:
    """Three steps of work, the second of which fails; idle afterwards."""

    device = SimpleNamespace(type="fake")  # no thread governor (cpu_threads.governor_for)
    last_step_idle = False  # each step did work (no wait for admission after it)

    def __init__(self) -> None:
        self.steps = 0

    def has_unfinished(self) -> bool:
        return self.steps < 3

    def step(self) -> list:
        self.steps += 1
        if self.steps == 2:
            raise RuntimeError("a bug below the server")
        return []

    def tick(self) -> None:
        pass

    def stats(self) -> None:
        return None


def test_busy_time_counts_steps_only_failed_ones_too(monkeypatch):
    # A clock that moves 0.25 s per reading: each step (start and end read) costs 0.25 s.
    ticks = itertools.count()
    monkeypatch.setattr(async_engine, "time",
                        SimpleNamespace(perf_counter=lambda: 0.25 * next(ticks)))
    fake = FakeEngine()
    aengine = AsyncEngine(lambda: fake, idle_wait_s=0.01)
    assert aengine.busy_s == 0.0
    aengine.start()
    try:
        assert aengine.wait_ready(10)
        # A command runs between steps: once it sees the steps done, all three are counted
        # (the idle waits read the clock too, but only between steps: each step still
        # spans exactly one tick).
        for _ in range(1000):
            if aengine.call_sync(lambda e: e.steps) == 3:
                break
        assert aengine.call_sync(lambda e: aengine.busy_s) == 0.75
        # Idle waits are counted apart from the steps, one tick each.
        idle = aengine.call_sync(lambda e: aengine.idle_s)
        assert idle > 0 and idle == 0.25 * round(idle / 0.25)
    finally:
        aengine.stop()
