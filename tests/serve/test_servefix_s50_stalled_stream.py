"""Session 50 serve review (findings/s50/serve.md, item 1): a stream whose reader stops
reading (a client that does not read its SSE holds up `Run.sse`) queued one RequestOutput
per step, each holding the whole answer so far: memory quadratic in the answer. Now the
request's stream holds at most one output not taken, the later ones merged into it, and
what the reader gets adds up to the same answer."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kvsaga.engine.sampling import SamplingParams
from kvsaga.serve.async_engine import AsyncEngine

from .conftest import MODEL, asgi_post_scope, make_engine
from .test_metrics import _value
from .test_session_race import _run

N = 48  # tokens generated


def _params() -> SamplingParams:
    return SamplingParams(max_tokens=N, temperature=0, ignore_eos=True, logprobs=2)


async def _idle(aengine: AsyncEngine) -> None:
    while await aengine.call(lambda e: e.has_unfinished()):
        await asyncio.sleep(0.01)


def test_a_stalled_reader_holds_one_output_and_reads_the_same_answer(tiny_dir: Path):
    aengine = AsyncEngine(make_engine(tiny_dir))
    aengine.start()

    async def main() -> None:
        assert await asyncio.to_thread(aengine.wait_ready, 30)
        prompt = [5, 6, 7, 8, 9]
        eager = await aengine.submit(prompt, _params(), request_id="eager")
        read = [o async for o in eager.outputs()]
        assert sum(len(o.new_token_ids) for o in read) == N

        stalled = await aengine.submit(prompt, _params(), request_id="stalled")
        stream = stalled._stream
        held: list[int] = []
        put = stream.put

        def counting_put(item: Any) -> None:
            put(item)
            held.append(stream.num_pending)

        stream.put = counting_put  # type: ignore[method-assign]
        await _idle(aengine)  # the whole answer generated, nothing read
        assert len(held) == N and max(held) == 1, held
        got = [o async for o in stalled.outputs()]
        assert len(got) == 1  # before: N outputs, the k-th holding k tokens and its text
        final, want = got[0], read[-1]
        assert final.finish_reason == want.finish_reason == "length"
        assert final.delta == "".join(o.delta for o in read) == final.text == want.text
        assert final.new_token_ids == list(final.token_ids) == list(want.token_ids)
        assert len(final.token_ids) == N
        assert list(final.logprobs) == pytest.approx(list(want.logprobs), abs=1e-4)
        assert [[t for t, _ in row] for row in final.top_logprobs] == \
            [[t for t, _ in row] for row in want.top_logprobs]
        assert aengine.num_in_flight == 0

    try:
        asyncio.run(main())
    finally:
        aengine.stop()


def test_an_error_after_a_held_output_comes_after_it(tiny_dir: Path):
    """An exception ends the stream after the output held: the reader gets both, in order,
    and nothing put later."""
    aengine = AsyncEngine(make_engine(tiny_dir))
    aengine.start()

    async def main() -> None:
        assert await asyncio.to_thread(aengine.wait_ready, 30)
        handle = await aengine.submit([5, 6, 7], SamplingParams(max_tokens=N, temperature=0,
                                                                ignore_eos=True),
                                      request_id="r")
        outs = handle.outputs()
        first = await anext(outs)
        assert first.new_token_ids and first.finish_reason is None
        # Held at the next step's output: end it with an error, as stop() does.
        await aengine.call(lambda e: None)  # (at least one more step has run)
        while handle._stream.num_pending == 0:
            await asyncio.sleep(0.001)
        handle._stream.put(RuntimeError("ended"))
        handle._stream.put(RuntimeError("dropped"))
        assert handle._stream.num_pending == 2
        second = await anext(outs)
        assert second.token_ids[:len(first.token_ids)] == first.token_ids
        assert len(second.token_ids) > len(first.token_ids) and second.finish_reason is None
        with pytest.raises(RuntimeError, match="ended"):
            await anext(outs)
        await _idle(aengine)

    try:
        asyncio.run(main())
    finally:
        aengine.stop()


async def _stalled_sse(app: Any, aengine: AsyncEngine, body: dict) -> str:
    """POST `body` (stream: true) through the ASGI app with a client that reads nothing
    until the engine has generated the whole answer; the SSE text it then reads."""
    data = json.dumps(body).encode()
    scope = asgi_post_scope("/v1/completions", data)
    pending = [{"type": "http.request", "body": data, "more_body": False}]
    never = asyncio.Event()
    release = asyncio.Event()
    chunks: list[bytes] = []

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body":
            await release.wait()  # the socket does not drain
            chunks.append(message.get("body", b""))

    call = asyncio.create_task(app(scope, receive, send))
    while aengine.num_in_flight == 0:
        await asyncio.sleep(0.001)
    await _idle(aengine)
    release.set()
    await call
    return b"".join(chunks).decode()


def _events(text: str) -> list[dict]:
    return [json.loads(line[6:]) for line in text.split("\n")
            if line.startswith("data: {")]


def test_a_stalled_sse_client_reads_the_answer_of_one_that_keeps_up(tiny_dir: Path):
    body = {"model": MODEL, "prompt": "a stream nobody reads", "max_tokens": N,
            "temperature": 0, "ignore_eos": True, "logprobs": 2, "stream": True,
            "stream_options": {"include_usage": True}}

    async def scenario(app: Any, aengine: AsyncEngine, client: httpx.AsyncClient) -> None:
        r = await client.post("/v1/completions", json=body)
        want = _events(r.text)

        def gen_and_itl() -> tuple[float, float]:
            fams = {f.name: f for f in text_string_to_metric_families(
                app.state.server.metrics.render().decode())}
            itl = [s.value for s in fams["kvsaga:inter_token_latency_seconds"].samples
                   if s.name.endswith("_count")]
            return _value(fams, "kvsaga:generation_tokens_total"), itl[0]

        gen0, itl0 = gen_and_itl()
        got = _events(await _stalled_sse(app, aengine, body))
        gen1, itl1 = gen_and_itl()
        assert gen1 - gen0 == N and itl1 - itl0 == N - 1  # one per token, merged or not
        # The chunk taken before the client stalled, then the rest merged into one (before:
        # one chunk per token).
        assert len([e for e in got if e["choices"]]) <= 2

        def answer(events: list[dict]) -> tuple:
            choices = [e["choices"][0] for e in events if e["choices"]]
            lps = [c["logprobs"] for c in choices if c["logprobs"]]
            return ("".join(c["text"] for c in choices),
                    [t for lp in lps for t in lp["tokens"]],
                    [o for lp in lps for o in lp["text_offset"]],
                    [c["finish_reason"] for c in choices if c["finish_reason"]],
                    [e["usage"] for e in events if e.get("usage")])

        text, tokens, offsets, finish, usage = answer(got)
        assert (text, tokens, offsets, finish) == answer(want)[:4]
        assert len(tokens) == N and finish == ["length"]
        assert [u["completion_tokens"] for u in usage] == [N]
        lp_got = [x for e in got if e["choices"] and e["choices"][0]["logprobs"]
                  for x in e["choices"][0]["logprobs"]["token_logprobs"]]
        lp_want = [x for e in want if e["choices"] and e["choices"][0]["logprobs"]
                   for x in e["choices"][0]["logprobs"]["token_logprobs"]]
        assert lp_got == pytest.approx(lp_want, abs=1e-4)

    _run(make_engine(tiny_dir), scenario)
