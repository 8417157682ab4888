"""While requests wait for admission and none runs, the engine thread waits between steps
(for a command, the scheduler's wake time, or a doubling backoff) instead of stepping
again at once: before the fix it spun at full CPU, ~25,000 empty steps in 4 s (review
repro t26). Counted in steps, not timed."""

from __future__ import annotations

import asyncio
import math
import threading
from types import SimpleNamespace

from kvsaga.engine.admission_wait import AdmissionBackoff
from kvsaga.engine.sampling import SamplingParams
from kvsaga.serve.async_engine import AsyncEngine

from .conftest import make_engine

GREEDY = SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True)


def test_a_request_waiting_for_admission_does_not_spin_the_engine_thread(tiny_dir):
    bytes_per_block = make_engine(tiny_dir).spec.bytes_per_block
    # 20 blocks: once the first session pauses, the workflow scheduler holds the second
    # back for it (`idle_admit_s`, here long: only its end lets the second in).
    engine = make_engine(tiny_dir, kv_memory_bytes=20 * bytes_per_block, max_num_seqs=8,
                         scheduler_params={"idle_admit_s": 1000.0})
    real, steps = engine.step, {"all": 0, "empty": 0}

    def step():
        out = real()
        steps["all"] += 1
        steps["empty"] += not out
        return out

    engine.step = step
    aengine = AsyncEngine(engine, idle_wait_s=0.05)
    aengine.start()

    async def run(prompt, sid):
        handle = await aengine.submit(prompt, GREEDY, request_id=sid, session_id=sid)
        return [out async for out in handle.outputs()][-1]

    async def main():
        second = asyncio.ensure_future(run(list(range(50, 90)), "s1"))
        first = await run(list(range(3, 40)), "s0")
        state = await aengine.call(lambda e: (e.stats().num_running, e.stats().num_waiting))
        before = await aengine.call(lambda e: dict(steps))
        await asyncio.sleep(0.5)
        after = await aengine.call(lambda e: dict(steps))
        assert not second.done()
        await aengine.end_session("s0")  # its room goes: the second is admitted
        return first, await second, state, before, after

    try:
        assert aengine.wait_ready(30)
        first, second, state, before, after = asyncio.run(main())
        assert state == (0, 1)  # nothing running, the second waiting
        # Half a second of waiting: a doubling backoff from 1 ms to 50 ms takes ~15 steps
        # (before the fix: thousands, each returning nothing).
        waited = after["empty"] - before["empty"]
        assert after["all"] - before["all"] == waited < 100
        assert aengine.num_admission_waits > 0
        assert first.finish_reason == second.finish_reason == "length"
        assert len(second.token_ids) == 30

        def idle(e):
            e.manager.check_integrity()
            return e.has_unfinished()

        assert aengine.call_sync(idle) is False
    finally:
        aengine.stop()


class IdleEngine:
    """Requests that never get admitted, with a scheduler wake time already passed (acted on
    by each step): nothing but the backoff may pace the steps. `stepped` is set at the
    STEPS-th step."""

    device = SimpleNamespace(type="fake")  # no thread governor
    wake_time = 5.0
    STEPS = 12  # waits of 1, 2, 4 ... ms between them, the cap (50 ms) from the 7th on

    def __init__(self) -> None:
        self.steps = 0
        self.stepped = threading.Event()
        self.last_step_idle = False
        self.last_step_time = -math.inf

    def clock(self) -> float:
        return 10.0

    def has_unfinished(self) -> bool:
        return True

    def step(self) -> list:
        self.steps += 1
        if self.steps >= self.STEPS:
            self.stepped.set()
        self.last_step_idle, self.last_step_time = True, self.clock()
        return []

    def abort(self, request_id: str) -> None:
        pass

    def tick(self) -> None:
        pass

    def stats(self) -> None:
        return None


class _FullWaits(threading.Event):
    """`AsyncEngine._wake` that records each wait of the engine thread: the timeout it asked
    for, and whether something woke it before that timeout ran out (the wait's result)."""

    def __init__(self) -> None:
        super().__init__()
        self.waits: list[tuple[float | None, bool]] = []

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self.waits.append((timeout, woken))
        return woken


def test_a_wake_time_already_passed_does_not_spin_either():
    """Before the fix, the wait after an idle step was cut to the wake time, here already
    passed: no wait at all, ~400,000 steps in half a second. Checked by the waits themselves
    rather than by the steps counted in a window of wall time (which a loaded machine that
    ran no step in the window failed): after each idle step the thread waits out the whole
    backoff, 1 ms doubling to the cap, before the next, so it steps no faster than that
    however fast the machine."""
    fake = IdleEngine()
    aengine = AsyncEngine(lambda: fake, idle_wait_s=0.05)  # type: ignore[arg-type,return-value]
    wake = aengine._wake = _FullWaits()
    aengine.start()
    try:
        assert aengine.wait_ready(60)
        # No command is sent until then, so nothing but stop() below wakes the thread.
        assert fake.stepped.wait(60), f"{fake.steps} steps"  # ~0.3 s of waits
    finally:
        aengine.stop()
    n = IdleEngine.STEPS - 1  # the waits between the first STEPS steps
    first = AdmissionBackoff.FIRST_WAIT_S
    assert wake.waits[:n] == [(min(first * 2 ** k, 0.05), False) for k in range(n)]
    assert aengine.num_admission_waits >= n
