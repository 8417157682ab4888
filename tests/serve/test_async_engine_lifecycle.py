"""AsyncEngine's lifecycle at its edges: the thread count its governor leaves behind, a
`stop()` that outlasts a hung step or a model load, `wait_ready()` once nothing will load,
and `start()` after `stop()`.

Engines here are fakes held on `threading.Event`s (a step or a load that does not return
until the test says so), except where the thread governor needs a real CPU engine; every
wait is bounded and waits on an event, not on time passing.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from kvsaga.engine import cpu_threads
from kvsaga.engine.sampling import SamplingParams
from kvsaga.serve.async_engine import AsyncEngine, EngineStopped

from .conftest import make_engine


class HungEngine:
    """An engine whose first step does not return until `release` is set; it then finishes
    every request it holds."""

    device = SimpleNamespace(type="fake")  # no thread governor
    last_step_idle = False

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.in_step = threading.Event()
        self.release = threading.Event()

    def add_request(self, prompt_ids: list[int], params: Any, *, request_id: str) -> None:
        self.requests.append(request_id)

    def abort(self, request_id: str) -> None:
        if request_id in self.requests:
            self.requests.remove(request_id)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    def step(self) -> list:
        self.in_step.set()
        assert self.release.wait(30), "the test never released the step"
        done, self.requests = self.requests, []
        return [SimpleNamespace(request_id=rid, finished=True) for rid in done]

    def tick(self) -> None:
        pass

    def stats(self) -> None:
        return None


def test_stop_during_a_hung_step_fails_what_waits_and_ends_each_stream_once():
    """stop() returned while a step hung, and the command queued behind the step and the
    request's reader stayed pending (for ever, with a step that never returns), though its
    docstring promises EngineStopped. Once the step returns, its output and the thread's
    own EngineStopped are not delivered a second time."""
    engine = HungEngine()
    aengine = AsyncEngine(lambda: engine, idle_wait_s=0.01)
    aengine.start()

    async def main() -> None:
        handle = await aengine.submit([1, 2], SamplingParams(max_tokens=2),
                                      request_id="r1")
        assert await asyncio.to_thread(engine.in_step.wait, 30)
        queued = aengine._submit(lambda e: "ran")
        reader = asyncio.ensure_future(anext(handle.outputs()))
        await asyncio.to_thread(aengine.stop, 0.05)  # the step outlasts the timeout
        assert aengine._thread.is_alive()
        with pytest.raises(EngineStopped):
            await asyncio.wait_for(reader, 10)
        assert isinstance(queued.exception(10), EngineStopped)
        assert aengine.num_in_flight == 0
        engine.release.set()  # the step returns: its output finds the stream ended
        await asyncio.to_thread(aengine._thread.join, 30)
        assert not aengine._thread.is_alive()
        for _ in range(3):  # what the thread put went through the loop's ready queue
            await asyncio.sleep(0)
        assert handle._stream.num_pending == 0
        assert engine.requests == [] and aengine._streams == {}

    try:
        asyncio.run(main())
    finally:
        engine.release.set()
        aengine.stop()


def _wait_ready_unbounded(aengine: AsyncEngine) -> list[bool]:
    """wait_ready() with its default timeout, from a thread that is given 10 s."""
    result: list[bool] = []
    waiter = threading.Thread(target=lambda: result.append(aengine.wait_ready()), daemon=True)
    waiter.start()
    waiter.join(10)
    return result


def test_wait_ready_returns_false_once_nothing_will_load():
    def bad() -> Any:
        raise OSError("no such model")

    failed = AsyncEngine(bad)
    failed.start()
    assert _wait_ready_unbounded(failed) == [False]
    assert isinstance(failed.load_error, OSError)
    never_started = AsyncEngine(bad)
    never_started.stop()
    assert _wait_ready_unbounded(never_started) == [False]


class SlowLoad:
    """A factory whose load does not return until `release` is set."""

    def __init__(self) -> None:
        self.loading = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self) -> HungEngine:
        self.calls += 1
        self.loading.set()
        assert self.release.wait(30), "the test never released the load"
        return HungEngine()


def test_stop_during_the_load_keeps_the_engine_from_serving():
    """A stop() that outlasted the model's load left the engine to become ready once the
    load returned, stopped as it was; wait_ready() does not wait for that load."""
    load = SlowLoad()
    aengine = AsyncEngine(load, idle_wait_s=0.01)
    aengine.start()
    try:
        assert load.loading.wait(30)
        aengine.stop(timeout=0.05)
        assert _wait_ready_unbounded(aengine) == [False]
        load.release.set()
        aengine._thread.join(30)
        assert not aengine._thread.is_alive()
        assert not aengine.ready and aengine.stopped
        assert isinstance(aengine._submit(lambda e: None).exception(1), EngineStopped)
    finally:
        load.release.set()


def test_start_after_stop_loads_nothing():
    load = SlowLoad()
    load.release.set()
    aengine = AsyncEngine(load, idle_wait_s=0.01)
    aengine.stop()
    aengine.start()
    if aengine._thread is not None:
        aengine._thread.join(30)
    assert load.calls == 0 and not aengine.ready and aengine.stopped


# -- the thread count the governor leaves -------------------------------------------------


class Neighbour:
    """A load reader: another process on one of two cores at every window."""

    cpus = frozenset({0, 1})
    window_s = 1.0
    foreign = 1.0

    def sample(self) -> float:
        return self.foreign


def _new_thread_count() -> int:
    """The count a thread started now begins with (torch.set_num_threads sets it too)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(torch.get_num_threads).result()


def _serve_until(aengine: AsyncEngine, threads: int) -> None:
    """Start the engine with a window at every poll, and wait (bounded) for its governor
    to reach `threads`."""
    aengine.start()
    assert aengine.wait_ready(60)

    def every_poll_a_window(engine: Any) -> None:
        aengine.governor._period_s = 1e-9  # (1 s for real)
        aengine.governor._next = 0.0

    aengine.call_sync(every_poll_a_window)
    for _ in range(10_000):
        if aengine.call_sync(lambda e: aengine.governor.threads) == threads:
            return
    raise AssertionError(f"the governor never reached {threads} threads")


def test_stop_gives_the_count_back_and_the_next_engine_its_ceiling(
        tiny_dir: Path, monkeypatch: pytest.MonkeyPatch):
    """The governor's torch.set_num_threads on the engine thread also set the count later
    threads begin with; stop() left it lowered, and the next engine of the process took
    the lowered count as its ceiling for good, even on a host now free."""
    load = Neighbour()
    monkeypatch.setattr(cpu_threads.ForeignLoad, "open", classmethod(lambda cls: load))
    monkeypatch.setattr(cpu_threads.CpuQuota, "read", lambda self: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("KVSAGA_CPU_THREADS", "adaptive")
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        busy = AsyncEngine(make_engine(tiny_dir), idle_wait_s=0.01)
        try:
            _serve_until(busy, 1)
        finally:
            busy.stop()
        assert _new_thread_count() == 2
        load.foreign = 0.0  # the neighbour has gone
        free = AsyncEngine(make_engine(tiny_dir), idle_wait_s=0.01)
        try:
            _serve_until(free, 2)
            assert free.governor.max_threads == max(2, cpu_threads.team_ceiling())
        finally:
            free.stop()
    finally:
        torch.set_num_threads(before)
