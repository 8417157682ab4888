"""Session 51 mutation testing of kvsaga-serve (findings/s51/mutserve.md): `OutputStream`
(kvsaga/serve/output_stream.py) driven directly, which the suite reached only through live
streams: outputs put before the reader takes them are read as one, joined; the stream ends
once; an error comes after the output held before it."""

from __future__ import annotations

import asyncio
import threading

from kvsaga.engine.request import RequestOutput
from kvsaga.serve.output_stream import OutputStream


def _out(i: int, finished: bool = False) -> RequestOutput:
    """The i-th step's output of a request generating one token (id 100 + k) a step."""
    ids = [100 + k for k in range(i + 1)]
    return RequestOutput(request_id="r", session_id="", text="".join(f"t{k}" for k in ids),
                         delta=f"t{100 + i}", token_ids=ids,
                         finish_reason="length" if finished else None, num_prompt_tokens=3,
                         num_cached_tokens=0, new_token_ids=[100 + i])


def _run(body):
    async def main():
        return await body(OutputStream(asyncio.get_running_loop()))
    return asyncio.run(main())


def test_outputs_not_taken_are_read_as_one_with_every_delta_joined():
    """Killed mutants: the held output's own delta and ids left out of the join (the first
    step's text lost from the stream), and the newest output read without the join."""
    async def body(stream: OutputStream):
        for i in range(3):
            stream.put(_out(i))
        assert stream.num_pending == 1
        got = await stream.get()
        assert (got.delta, got.new_token_ids) == ("t100t101t102", [100, 101, 102])
        assert got.token_ids == [100, 101, 102] and got.text == "t100t101t102"
        stream.put(_out(3))  # one output alone is read as it is
        got = await stream.get()
        assert (got.delta, got.new_token_ids) == ("t103", [103])
        assert stream.num_pending == 0
    _run(body)


def test_the_stream_ends_with_its_finished_output_and_drops_what_follows():
    """Killed mutant: only an exception ended the stream (a late output, or stop()'s error,
    after the finished one was read as more of the answer)."""
    async def body(stream: OutputStream):
        stream.put(_out(0))
        stream.put(_out(1, finished=True))
        stream.put(_out(2))
        stream.put(RuntimeError("late"))
        got = await stream.get()
        assert got.finished and got.new_token_ids == [100, 101]
        assert stream.num_pending == 0
    _run(body)


def test_an_error_comes_after_the_output_held_before_it_and_ends_the_stream():
    async def body(stream: OutputStream):
        stream.put(_out(0))
        err = RuntimeError("engine failed")
        stream.put(err)
        stream.put(_out(1))
        assert stream.num_pending == 2
        assert (await stream.get()).new_token_ids == [100]
        assert await stream.get() is err
        assert stream.num_pending == 0
    _run(body)


def test_a_waiting_reader_is_woken_by_a_put_from_another_thread():
    async def body(stream: OutputStream):
        reader = asyncio.ensure_future(stream.get())
        await asyncio.sleep(0)
        assert not reader.done()
        t = threading.Thread(target=stream.put, args=(_out(0),))
        t.start()
        got = await asyncio.wait_for(reader, 30)
        t.join()
        assert got.new_token_ids == [100]
    _run(body)
