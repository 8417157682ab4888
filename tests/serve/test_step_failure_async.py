"""A step whose forward pass fails, through AsyncEngine: its requests get the error, and the
next request with the same prompt is computed afresh, not served from blocks the failed pass
never wrote (before the fix it hit them and silently got other tokens)."""

from __future__ import annotations

import asyncio

from kvsaga.engine.sampling import SamplingParams
from kvsaga.serve.async_engine import AsyncEngine

from .conftest import make_engine

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
PROMPT = [(11 + 5 * i) % 250 + 2 for i in range(40)]  # 2 full blocks of 16 and 8 tokens


def _greedy_alone(tiny_dir) -> list[int]:
    engine = make_engine(tiny_dir)
    req = engine.add_request(PROMPT, GREEDY)
    while engine.has_unfinished():
        engine.step()
    return req.output_ids


def test_failed_step_errors_its_request_and_caches_nothing_unwritten(tiny_dir):
    reference = _greedy_alone(tiny_dir)
    engine = make_engine(tiny_dir)
    real, calls = engine.runner.run, [0]

    def run(chunks):
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("CUDA error: out of memory (simulated)")
        return real(chunks)

    engine.runner.run = run
    aengine = AsyncEngine(engine, idle_wait_s=0.01)
    aengine.start()

    async def one(rid: str):
        handle = await aengine.submit(PROMPT, GREEDY, request_id=rid)
        last = None
        try:
            async for out in handle.outputs():
                last = out
        except RuntimeError as e:
            return e
        return last

    async def main():
        return await one("failed"), await one("next")

    try:
        assert aengine.wait_ready(30)
        failed, after = asyncio.run(main())
        assert isinstance(failed, RuntimeError) and "out of memory" in str(failed)
        assert after.finish_reason == "length"
        assert after.num_cached_tokens == 0  # before the fix: 32, unwritten blocks
        assert after.token_ids == reference

        def idle(e):
            e.manager.check_integrity()
            return e.has_unfinished(), e.manager.stats().num_used_blocks

        assert aengine.call_sync(idle) == (False, 0)
    finally:
        aengine.stop()
