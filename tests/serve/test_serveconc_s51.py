"""Session 51 review of kvsaga-serve's concurrency (findings/s51/serveconc.md): the claims it
checked, each as a test, and its one fix (the admission backoff starts afresh after the
engine thread has gone idle).

- a client leaving at any point of its stream, racing the step outputs: nothing leaks,
  each request's end is counted once;
- an abort while a stalled reader's outputs are merged: the merged output, then the abort;
- merged outputs with a stop string (text held back, then cut) and logprobs: the same
  answer as the unmerged stream;
- the snapshot read from another thread while the engine thread publishes: no counter
  goes backwards;
- stop() with streams, submits and scrapes open: each gets its answer, the thread ends;
- after failed steps, a step that works resets the backoff and requests finish.
Tests that count tokens send ignore_eos."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path
from typing import Any

import pytest

from kvsaga.engine.admission_wait import AdmissionBackoff
from kvsaga.engine.sampling import SamplingParams
from kvsaga.serve.async_engine import AsyncEngine, EngineStopped, RequestAborted

from .conftest import MODEL, make_engine
from .test_admission_wait import IdleEngine
from .test_disconnect_release import _post_until_gone
from .test_failed_step_backoff import _RecordingEvent
from .test_session_race import _idle, _run, _sessions

PROMPT = [5, 6, 7, 8, 9]


def _counting_steps(engine: Any) -> list[int]:
    """Count `engine`'s steps (on the engine thread) in the returned one-item list."""
    real, steps = engine.step, [0]

    def step() -> Any:
        out = real()
        steps[0] += 1
        return out

    engine.step = step
    return steps


async def _after_steps(aengine: AsyncEngine, steps: list[int], n: int) -> None:
    """Until the engine thread has run `n` more steps (or nothing is left to step)."""
    start = await aengine.call(lambda e: steps[0])
    while await aengine.call(lambda e: steps[0] < start + n and e.has_unfinished()):
        await asyncio.sleep(0.001)


def test_merged_outputs_with_a_stop_string_and_logprobs_add_up_to_the_unmerged_stream(
        tiny_dir: Path):
    engine = make_engine(tiny_dir)
    steps = _counting_steps(engine)
    aengine = AsyncEngine(engine)
    aengine.start()
    rng = random.Random(51)

    async def main() -> None:
        assert await asyncio.to_thread(aengine.wait_ready, 30)
        free = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)
        h = await aengine.submit(PROMPT, free, request_id="free")
        outs = [o async for o in h.outputs()]
        # The text's last two characters at a middle step: a stop string that this
        # greedy answer meets by then (its text is the same up to there).
        stop = next(o.text[-2:] for o in outs[len(outs) // 2:] if len(o.text) >= 2)
        params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True, logprobs=2,
                                stop=[stop, "never in this text \x00"])
        h = await aengine.submit(PROMPT, params, request_id="eager")
        eager = [o async for o in h.outputs()]
        assert eager[-1].finish_reason == "stop"
        want_text = "".join(o.delta for o in eager)
        assert want_text == eager[-1].text and stop not in want_text
        for trial in range(4):
            h = await aengine.submit(PROMPT, params, request_id=f"merged{trial}")
            got = []
            async for o in h.outputs():
                got.append(o)
                await _after_steps(aengine, steps, rng.randint(0, 3))  # reads lag behind
            assert "".join(o.delta for o in got) == want_text == got[-1].text
            assert sum((o.new_token_ids for o in got), []) == \
                sum((o.new_token_ids for o in eager), []) == list(got[-1].token_ids)
            assert [o.finish_reason for o in got] == [None] * (len(got) - 1) + ["stop"]
            assert list(got[-1].logprobs) == list(eager[-1].logprobs)
            assert list(got[-1].top_logprobs) == list(eager[-1].top_logprobs)
            for a, b in zip(got, got[1:], strict=False):  # each extends the one before
                assert list(b.token_ids[:len(a.token_ids)]) == list(a.token_ids)
        assert aengine.num_in_flight == 0

    try:
        asyncio.run(main())
    finally:
        aengine.stop()


def test_an_abort_while_outputs_are_merged_gives_them_then_the_abort(tiny_dir: Path):
    engine = make_engine(tiny_dir)
    steps = _counting_steps(engine)
    aengine = AsyncEngine(engine)
    aengine.start()

    async def main() -> None:
        assert await asyncio.to_thread(aengine.wait_ready, 30)
        params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
        handle = await aengine.submit(PROMPT, params, request_id="r")
        outs = handle.outputs()
        first = await anext(outs)
        await _after_steps(aengine, steps, 3)  # three more outputs, merged in the stream
        handle.abort()  # (the client left: queued behind those steps)
        second = await anext(outs)
        n = len(first.token_ids)
        assert second.finish_reason is None and len(second.new_token_ids) >= 3
        assert list(second.token_ids[:n]) == list(first.token_ids)
        assert second.new_token_ids == list(second.token_ids[n:])
        # The abort is a command the engine thread takes between steps: a step that ran after
        # `second` was taken and before the abort may still deliver (merged) output, never a
        # finished one; then the abort ends the stream.
        with pytest.raises(RequestAborted):
            for _ in range(200):
                late = await anext(outs)
                assert late.finish_reason is None, late
                assert list(late.token_ids[:len(second.token_ids)]) == list(second.token_ids)
        assert aengine.num_in_flight == 0
        await _idle(aengine)  # no block held, the pool consistent

    try:
        asyncio.run(main())
    finally:
        aengine.stop()


def test_snapshot_counters_never_go_backwards_while_it_steps(tiny_dir: Path):
    aengine = AsyncEngine(make_engine(tiny_dir, max_num_seqs=4))
    aengine.snapshot_every_s = 0.0  # a publish after every step: as many as can be
    published: list[Any] = []
    publish = aengine._publish

    def recording_publish(engine: Any) -> None:
        publish(engine)
        published.append(aengine.snapshot)

    aengine._publish = recording_publish  # type: ignore[method-assign]
    aengine.start()
    seen: list[Any] = []
    done = threading.Event()

    def watch() -> None:  # another thread, as a scrape's collector thread would be
        while not done.is_set():
            snap = aengine.snapshot
            if not seen or snap is not seen[-1]:
                seen.append(snap)

    def figures(snap: Any) -> list[int]:
        st, t = snap.cache, snap.step_times
        return [st.queried_tokens, st.hit_tokens, st.num_evicted_blocks, st.offloaded_blocks,
                st.loaded_blocks, snap.num_preemptions, *t.steps.values(), *t.tokens.values()]

    async def main() -> None:
        assert await asyncio.to_thread(aengine.wait_ready, 30)
        params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)

        async def run(i: int) -> int:
            h = await aengine.submit([5 + i % 3, *PROMPT], params, request_id=f"r{i}")
            return sum([len(o.new_token_ids) async for o in h.outputs()])

        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            tasks = [asyncio.ensure_future(run(i)) for i in range(8)]
            while not all(t.done() for t in tasks):
                await aengine.fresh_snapshot()
                await asyncio.sleep(0)
            assert [t.result() for t in tasks] == [40] * 8
        finally:
            done.set()
            watcher.join()

    try:
        asyncio.run(main())
    finally:
        aengine.stop()
    assert len(published) > 40  # a snapshot after each step
    assert figures(published[-1]) != figures(published[0])
    for run in (published, seen):  # what was published, and what the other thread read
        for a, b in zip(run, run[1:], strict=False):
            assert all(x <= y for x, y in zip(figures(a), figures(b), strict=True))
    ids = [id(p) for p in published]
    assert [ids.index(id(s)) for s in seen] == sorted(ids.index(id(s)) for s in seen)


def test_stop_with_streams_submits_and_scrapes_open_answers_each_and_ends_the_thread(
        tiny_dir: Path):
    engine = make_engine(tiny_dir, max_num_seqs=2)
    real, moved = engine.step, set()

    def step() -> Any:  # once two have a token, the requests never move again: none ends
        if len(moved) >= 2:
            engine.last_step_idle = True
            return []
        outs = real()
        moved.update(o.request_id for o in outs)
        return outs

    engine.step = step
    aengine = AsyncEngine(engine, idle_wait_s=0.05)
    aengine.start()
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)

    async def read(h: Any, got: list[int]) -> str:
        try:
            async for _ in h.outputs():
                got.append(1)
        except BaseException as e:
            return type(e).__name__
        return "finished"

    async def main() -> None:
        assert await asyncio.to_thread(aengine.wait_ready, 30)
        handles = [await aengine.submit([5 + i, *PROMPT], params, request_id=f"r{i}")
                   for i in range(4)]  # two run, two wait for room
        counts: list[list[int]] = [[] for _ in handles]
        readers = [asyncio.ensure_future(read(h, c)) for h, c in zip(handles, counts,
                                                                        strict=True)]
        while sum(map(bool, counts)) < 2:  # the two running have their first tokens
            # (and no more steps will run)
            await asyncio.sleep(0.001)
        late = [await aengine.submit([9, *PROMPT], params, request_id=f"late{i}")
                for i in range(2)]
        readers += [asyncio.ensure_future(read(h, [])) for h in late]
        scrapes = [asyncio.ensure_future(aengine.fresh_snapshot()) for _ in range(3)]
        await asyncio.to_thread(aengine.stop)
        assert await asyncio.wait_for(asyncio.gather(*readers), 10) == ["EngineStopped"] * 6
        snaps = await asyncio.wait_for(asyncio.gather(*scrapes), 10)
        assert all(s is not None for s in snaps)  # each answered, none left waiting
        with pytest.raises(EngineStopped):
            await aengine.submit(PROMPT, params, request_id="after")
        assert aengine.num_in_flight == 0

    asyncio.run(main())
    assert aengine._thread is not None and not aengine._thread.is_alive()
    assert not engine.has_unfinished()  # every request aborted: no block held
    assert engine.manager.stats().num_used_blocks == 0
    engine.manager.check_integrity()


def test_after_failed_steps_a_working_step_resets_the_backoff_and_requests_finish(
        tiny_dir: Path):
    engine = make_engine(tiny_dir)
    real, fail = engine.step, [0]

    def step() -> Any:
        if fail[0]:
            fail[0] -= 1
            raise RuntimeError("a step failed (simulated)")
        return real()

    engine.step = step
    aengine = AsyncEngine(engine, idle_wait_s=0.05)
    streaks: list[int] = []  # the failures in a row at each wait after a failed step
    back_off = aengine._back_off

    def recording_back_off() -> None:
        streaks.append(aengine._step_failures)
        back_off()

    aengine._back_off = recording_back_off  # type: ignore[method-assign]
    aengine.start()
    params = SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)

    async def run(rid: str) -> int:
        h = await aengine.submit(PROMPT, params, request_id=rid)
        return sum([len(o.new_token_ids) async for o in h.outputs()])

    async def main() -> None:
        assert await asyncio.to_thread(aengine.wait_ready, 30)
        for i in range(3):
            fail[0] = 1
            with pytest.raises(RuntimeError, match="simulated"):
                await run(f"failed{i}")
        await aengine.call(lambda e: None)  # (runs once the thread's wait is over)
        assert streaks == [1, 2, 3]  # waits of 10, 20, 40 ms
        assert await run("healthy") == 8  # the engine works again: every token
        assert aengine._step_failures == 0
        fail[0] = 1
        with pytest.raises(RuntimeError, match="simulated"):
            await run("failed-again")
        await aengine.call(lambda e: None)
        assert streaks == [1, 2, 3, 1]  # the first wait again, not the fourth
        assert await run("healthy2") == 8
        await _idle(aengine)

    try:
        asyncio.run(main())
    finally:
        aengine.stop()


class _Waiting(IdleEngine):
    """Requests that wait for admission while `waiting` (every step schedules nothing, and
    the scheduler's wake time has passed: the backoff alone paces the steps)."""

    def __init__(self, waits: _RecordingEvent) -> None:
        super().__init__()
        self.waits = waits
        self.waiting = False
        self.steps: list[int] = []  # at each step: the waits recorded before it (not a count)

    def has_unfinished(self) -> bool:
        return self.waiting

    def step(self) -> list:
        self.steps.append(len(self.waits.timeouts))
        self.last_step_idle, self.last_step_time = True, self.clock()
        return []


def test_the_admission_backoff_starts_again_after_an_idle_period():
    """Requests that waited for admission until the backoff reached its cap, then left
    (aborted): the next wait for admission, after the thread went idle, starts at the
    first wait again. Before the fix it went on from the cap (idle_wait_s)."""
    waits = _RecordingEvent()
    fake = _Waiting(waits)
    aengine = AsyncEngine(lambda: fake, idle_wait_s=0.05)  # type: ignore[arg-type,return-value]
    aengine._wake = waits
    aengine.start()

    def set_waiting(flag: bool) -> None:
        aengine.call_sync(lambda e: setattr(e, "waiting", flag))

    def until_steps(n: int) -> None:
        while aengine.call_sync(lambda e: len(e.steps)) < n:
            pass

    try:
        assert aengine.wait_ready(10)
        set_waiting(True)
        until_steps(12)  # 1, 2, 4 ... ms: the cap (50 ms) from the 7th on
        set_waiting(False)  # they left: the thread goes idle (in the same round)
        mark = aengine.call_sync(lambda e: len(e.steps))
        set_waiting(True)  # new requests, that wait for admission too
        until_steps(mark + 3)
        after = [waits.timeouts[i] for i in fake.steps[mark:mark + 3]]
        first = AdmissionBackoff.FIRST_WAIT_S
        assert after == [first, 2 * first, 4 * first]  # before: [0.05, 0.05, 0.05]
    finally:
        aengine.stop()


async def _stream_and_leave(app: Any, body: dict, leave_after: int) -> None:
    """POST a streamed `body` through the ASGI app; the client disconnects once it has been
    sent `leave_after` body chunks, or reads to the end."""
    gone = asyncio.Event()
    sent = [0]

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            sent[0] += 1
            if sent[0] >= leave_after:
                gone.set()
        await asyncio.sleep(0)

    await _post_until_gone(app, "/v1/completions", body, gone, send)


def test_clients_leaving_at_random_points_leak_nothing_and_count_once(tiny_dir: Path):
    rng = random.Random(7)
    n_req, lanes, n_tok = 24, 6, 10

    async def scenario(app: Any, aengine: Any, client: Any) -> None:
        async def lane(k: int) -> None:  # a session's steps one after the other
            for i in range(k, n_req, lanes):
                body = {"model": MODEL, "prompt": f"agent {i} ", "max_tokens": n_tok,
                        "ignore_eos": True, "stream": True, "session_id": f"s{k}",
                        "logprobs": 1}
                # (after its first chunk at the earliest: the request was queued)
                await _stream_and_leave(app, body, rng.randint(1, n_tok + 2))

        async def scrape() -> None:
            while True:
                assert (await client.get("/metrics")).status_code == 200
                await asyncio.sleep(0.002)

        scraper = asyncio.ensure_future(scrape())
        await asyncio.gather(*(lane(k) for k in range(lanes)))
        scraper.cancel()
        await _idle(aengine)
        ended = dict(app.state.server.metrics.counts.ended)
        assert sum(ended.values()) == n_req and ended["error"] == 0, ended
        assert aengine.num_in_flight == 0
        sessions = _sessions(app)
        assert all(ctx is None or ctx.in_flight is None
                   for ctx in (sessions.get(f"anon/s{k}") for k in range(lanes)))

    _run(make_engine(tiny_dir, max_num_seqs=4), scenario)
