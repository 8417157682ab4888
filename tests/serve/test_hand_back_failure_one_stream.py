"""One session's hand-back hook failing once fails only that session's request in
kvsaga-serve (review s50 diff-engine2, finding 2): `step()` raised once and `_fail_all`
aborted every stream, though the engine had kept the step's other rows; a healthy session
lost its request mid-decode. A step error that names no request still fails them all."""

from __future__ import annotations

import asyncio

from kvsaga.engine.sampling import SamplingParams
from kvsaga.policy import make_policy
from kvsaga.serve.async_engine import AsyncEngine

from .conftest import make_engine

PROMPT = [(7 + 13 * i) % 250 + 3 for i in range(50)]


def greedy(n: int) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)


def run(tiny_dir, arm, n1=3):
    p = make_policy("lru")
    engine = make_engine(tiny_dir, policy=p)
    arm(engine, p)
    aengine = AsyncEngine(engine, idle_wait_s=0.01)
    aengine.start()

    async def consume(handle):
        outs = []
        try:
            async for o in handle.outputs():
                outs.append(o)
        except RuntimeError as e:
            return e, outs
        return None, outs

    async def main():
        h1 = await aengine.submit(PROMPT[:20], greedy(n1), request_id="r1", session_id="s1")
        h2 = await aengine.submit(PROMPT[:30], greedy(12), request_id="r2", session_id="s2")
        got = await asyncio.gather(consume(h1), consume(h2))
        left = await aengine.call(
            lambda e: (list(e._ended), e.manager.check_integrity(), e.requests))
        return got, left

    try:
        assert aengine.wait_ready(60)
        return asyncio.run(main())
    finally:
        aengine.stop()


def test_a_hand_back_failure_fails_only_its_request(tiny_dir):
    def arm(engine, p):
        real, left = p.step_finished, [1]

        def step_finished(s, *a, **k):
            if s.session_id == "s1" and left[0]:
                left[0] -= 1
                raise RuntimeError("step_finished failed once for s1 (simulated)")
            return real(s, *a, **k)
        p.step_finished = step_finished

    ((err1, _), (err2, outs2)), (ended, _, requests) = run(tiny_dir, arm)
    assert isinstance(err1, RuntimeError) and "s1 (simulated)" in str(err1)
    assert err2 is None, err2  # before the fix: s1's error
    assert outs2[-1].finish_reason == "length" and len(outs2[-1].token_ids) == 12
    # every token of r2 arrived once, in order (none lost with the failed step)
    assert [t for o in outs2 for t in o.new_token_ids] == outs2[-1].token_ids
    assert not ended and not requests  # r1's hand-back was retried by the engine


def test_a_step_error_that_names_no_request_still_fails_every_stream(tiny_dir):
    """The forward pass fails once, at the first step with both requests in flight (was:
    the third step, which on a loaded machine could come before r2 was added: r1 failed
    alone and r2 then ran to its end, session 56's CI); r1 asks for as many tokens as r2,
    so it is still running when r2 joins."""
    def arm(engine, p):
        real, armed = engine.runner.run, [True]

        def run_(chunks):
            if armed[0] and {"r1", "r2"} <= engine.requests.keys():
                armed[0] = False
                raise RuntimeError("forward pass failed (simulated)")
            return real(chunks)
        engine.runner.run = run_

    ((err1, _), (err2, _)), (ended, _, requests) = run(tiny_dir, arm, n1=12)
    assert isinstance(err1, RuntimeError) and isinstance(err2, RuntimeError)
    assert "forward pass failed" in str(err2)
    assert not ended and not requests
