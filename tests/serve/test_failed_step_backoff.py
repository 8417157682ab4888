"""kvsaga-serve after failures (review s50 diff-engine, findings 2 and 4).

2: a step that raised at every try (a policy hook failing for one session) was retried at
once, with a traceback logged each time: the engine thread spun at ~46k steps/s. It now
waits, doubling from FAILED_STEP_WAIT_S to FAILED_STEP_MAX_WAIT_S (a command wakes it), and
logs a failure in a row at its 1st, 2nd, 4th... time only.
4: a client that left while its abort's hand-back raised once left the request decoding to
max_tokens for nobody, and its session's next step was refused. The abort now stops the
request at once and the engine retries the hand-back."""

from __future__ import annotations

import asyncio
import logging
import threading

from kvsaga.engine.sampling import SamplingParams
from kvsaga.policy import make_policy
from kvsaga.serve import async_engine as ae_mod
from kvsaga.serve.async_engine import AsyncEngine

from .conftest import make_engine

PROMPT = [(7 + 13 * i) % 250 + 3 for i in range(50)]


class _RecordingEvent(threading.Event):
    """`AsyncEngine._wake` that records each timeout it is asked to wait (and waits at
    most 1 ms of it, so the test runs fast)."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float | None] = []

    def wait(self, timeout: float | None = None) -> bool:
        self.timeouts.append(timeout)
        return super().wait(0.001)


def test_a_step_that_keeps_failing_is_retried_after_a_doubling_wait_and_logged_sparsely(
        tiny_dir, caplog):
    engine = make_engine(tiny_dir)
    calls = [0]
    done = threading.Event()

    def step():
        calls[0] += 1
        if calls[0] >= 12:
            done.set()
        raise RuntimeError("a hook fails at every step (simulated)")

    engine.step = step
    engine.has_unfinished = lambda: True
    aengine = AsyncEngine(engine, idle_wait_s=0.01)
    wake = aengine._wake = _RecordingEvent()
    with caplog.at_level(logging.WARNING, logger="kvsaga.serve"):
        aengine.start()
        try:
            assert aengine.wait_ready(30)
            assert done.wait(60)
        finally:
            aengine.stop()
    # A wait after each failure (before: none, the next step at once) ...
    assert len(wake.timeouts) >= 11 and all(t and t > 0 for t in wake.timeouts)
    # ... after the k-th failure in a row: FAILED_STEP_WAIT_S * 2**(k-1), capped.
    waits = wake.timeouts[:11]
    assert waits == [min(ae_mod.FAILED_STEP_WAIT_S * 2 ** k, ae_mod.FAILED_STEP_MAX_WAIT_S)
                     for k in range(11)]
    failures = [r for r in caplog.records if "engine step failed" in r.getMessage()]
    n = calls[0]
    assert 1 < len(failures) <= n.bit_length() + 1  # 1st, 2nd, 4th, 8th...: not each
    assert any("in a row" in r.getMessage() for r in failures)


def test_a_client_leaving_while_its_abort_hook_fails_once_stops_its_request(tiny_dir):
    policy = make_policy("lru")
    engine = make_engine(tiny_dir, policy=policy)
    real, left = policy.step_finished, [0]

    def step_finished(session, *a, **k):
        if session.session_id == "s1" and left[0]:
            left[0] -= 1
            raise RuntimeError("step_finished failed (simulated)")
        return real(session, *a, **k)
    policy.step_finished = step_finished
    aengine = AsyncEngine(engine, idle_wait_s=0.01)
    aengine.start()
    long = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def main():
        h = await aengine.submit(PROMPT, long, request_id="r1", session_id="s1")
        n = 0
        async for _ in h.outputs():
            n += 1
            if n == 3:
                left[0] = 1  # the abort's hand-back fails once
                h.abort()  # the client left (what the disconnect watcher does)
                break
        # (the abort command has run once this one has: commands run in order)
        state = await aengine.call(lambda e: (dict(e.requests), list(e.scheduler.running)))
        assert state == ({}, [])  # stopped, not decoding on for nobody
        h2 = await aengine.submit(PROMPT + [5], SamplingParams(max_tokens=2, temperature=0.0,
                                                               ignore_eos=True),
                                  request_id="r2", session_id="s1")
        outs = [o async for o in h2.outputs()]
        assert outs[-1].finish_reason == "length"
        return await aengine.call(lambda e: (len(e.requests), e._ended, e.manager.sessions))

    try:
        assert aengine.wait_ready(30)
        n_requests, ended, sessions = asyncio.run(main())
        assert n_requests == 0 and not ended and not sessions["s1"].is_running
        aengine.call_sync(lambda e: e.manager.check_integrity())
    finally:
        aengine.stop()
