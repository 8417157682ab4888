"""An abort that fails in the engine (a policy or manager hook raising) still wakes the
request's reader, with that error, and is logged: before, the reader's stream was dropped
before the abort ran and the command's failure went unseen, so the request hung for good."""

from __future__ import annotations

import asyncio
import logging

import pytest

from kvsaga.engine.sampling import SamplingParams
from kvsaga.serve.async_engine import AsyncEngine

from .conftest import make_engine

LONG = SamplingParams(max_tokens=200, temperature=0.0, ignore_eos=True)


def test_a_failed_abort_wakes_the_reader_with_its_error_and_is_logged(tiny_dir, caplog):
    engine = make_engine(tiny_dir)

    def broken_abort(request_id: str) -> None:
        raise RuntimeError("policy hook failed during abort")

    engine.abort = broken_abort
    aengine = AsyncEngine(engine, idle_wait_s=0.01)
    aengine.start()

    async def main():
        handle = await aengine.submit([5, 6, 7, 8], LONG, request_id="r")
        outputs = handle.outputs()
        await outputs.__anext__()  # it runs
        handle.abort()  # what the disconnect watcher does
        with pytest.raises(RuntimeError, match="policy hook failed during abort"):
            # (before the fix this waited for good: the bound only keeps the test finite)
            await asyncio.wait_for(_drain(outputs), 60)

    async def _drain(outputs):
        async for _ in outputs:
            pass

    try:
        assert aengine.wait_ready(30)
        with caplog.at_level(logging.ERROR, logger="kvsaga.serve"):
            asyncio.run(main())
            aengine.call_sync(lambda e: None)  # the abort command has run and been logged
        assert any("engine command failed" in r.getMessage() for r in caplog.records)
        assert aengine.num_in_flight == 0
    finally:
        aengine.stop()
