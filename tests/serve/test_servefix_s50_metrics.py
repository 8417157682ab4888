"""Session 50 serve review (findings/s50/serve.md, item 3): the engine thread rebuilt the
/metrics snapshot after every step, and `engine.stats()` counts the manager's sessions,
paused ones included: milliseconds per step with thousands of paused sessions. Now no step
pays for it: the engine thread takes it when it goes idle, at most once a second while it
steps, and for a reader that finds it between steps (then exact when read); a reader never
waits for a step (review s50 diff-serve 1: tests/serve/test_serve2_snapshot.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from kvsaga.serve.async_engine import AsyncEngine
from tests.serve.conftest import MODEL, make_engine
from tests.serve.test_metrics import _value
from tests.serve.test_session_race import _Hold, _run, _until


def _count_stats(engine) -> list[int]:
    calls = [0]
    real = engine.stats

    def counted():
        calls[0] += 1
        return real()

    engine.stats = counted
    return calls


def _paused(engine, n: int) -> None:
    """`n` paused sessions of one step each, straight in the manager (engine thread)."""
    mgr = engine.manager
    for i in range(n):
        sid = f"paused-{i}"
        start = mgr.begin_step(sid, [i + 2, i + 3, i + 4])
        mgr.allocate_slots(sid, 3 - start.num_cached_tokens)
        mgr.finish_step(sid)


def test_steps_take_no_snapshot_and_a_scrape_reads_the_figures_of_now(tiny_dir: Path):
    engine = make_engine(tiny_dir)
    calls = _count_stats(engine)
    body = {"model": MODEL, "prompt": "count the steps", "max_tokens": 40, "ignore_eos": True,
            "session_id": "s"}

    async def scenario(app, aengine, client) -> None:
        aengine.snapshot_every_s = float("inf")  # only the idle and the readers' ones
        before = calls[0]
        r = await client.post("/v1/completions", json=body)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 40
        # One when the engine thread went idle after the 40 steps.
        await _until(lambda: calls[0] > before, "published on going idle")
        assert calls[0] == before + 1, f"{calls[0] - before} snapshots over 40 decode steps"
        # Sessions paused by a command, no step since: a scrape shows them at once, and
        # every figure is the manager's at the time of the scrape.
        await aengine.call(lambda e: _paused(e, 25))
        text = (await client.get("/metrics")).text
        assert calls[0] == before + 2
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        st = await aengine.call(lambda e: e.manager.stats())
        assert st.num_paused_sessions == 26 and st.num_running_sessions == 0
        assert _value(fams, "kvsaga:sessions", state="paused") == 26
        assert _value(fams, "kvsaga:sessions", state="running") == 0
        assert _value(fams, "kvsaga:prefix_cache_queries_total") == st.queried_tokens
        assert _value(fams, "kvsaga:kv_blocks_used") == st.num_used_blocks
        assert _value(fams, "kvsaga:kv_blocks_evictable") == st.num_evictable_blocks

    _run(engine, scenario)


def test_readers_share_one_snapshot_and_a_held_thread_gives_the_last(tiny_dir: Path):
    """Two readers while the engine thread is held in a command ask one refresh, and each
    gets the last snapshot after its wait rather than hanging with the thread; a later
    reader does not wait again for the refresh they waited out (before: each scrape waited
    its full wait again, 2 s a scrape behind a stuck replica: review s50 diff-serve 1c);
    the refresh is still answered once the thread is free."""
    engine = make_engine(tiny_dir)
    calls = _count_stats(engine)

    async def scenario(app, aengine: AsyncEngine, client) -> None:
        last = aengine.snapshot
        assert last is not None
        hold = _Hold(aengine)
        await hold.wait()
        try:
            got = await asyncio.gather(aengine.fresh_snapshot(0.05),
                                       aengine.fresh_snapshot(0.05))
            assert got == [last, last]
            asked = aengine._refresh
            assert asked is not None
            # Waited out already: a third reader reads the last one without a wait, however
            # long it would wait for a new refresh (a deadline only against hanging).
            third = await asyncio.wait_for(aengine.fresh_snapshot(600), 30)
            assert third is last and aengine._refresh is asked
            first = calls[0]
        finally:
            hold.release.set()
        await _until(lambda: calls[0] == first + 1, "took the snapshot")
        await _until(lambda: aengine.snapshot is not last, "published it")
        assert (await aengine.fresh_snapshot()) is not last

    _run(engine, scenario)
