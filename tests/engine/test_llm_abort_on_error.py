"""`LLM` calls that raise mid-generation (an `on_output` callback, a failed step, an
interrupt) abort every request of the call: none stays in the engine holding blocks, running
inside later calls, or keeping its agent session busy. Before the fix they all stayed."""

from __future__ import annotations

import pytest

from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplingParams

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [[5, 17, 33, 2, 9], list(range(40, 77))]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def make_llm(model_dir) -> LLM:
    return LLM(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)


def boom_at(n: int):
    def on_output(out):
        if len(out.token_ids) == n:
            raise RuntimeError("client callback failed")

    return on_output


def assert_clean(llm: LLM) -> None:
    engine = llm.engine
    assert engine.requests == {}
    assert not engine.has_unfinished()
    engine.manager.check_integrity()
    assert engine.manager.stats().num_used_blocks == 0


def test_a_raising_callback_aborts_every_request_of_the_call(model_dir):
    llm = make_llm(model_dir)
    alone = [llm.generate(p, GREEDY)[0].token_ids for p in PROMPTS]
    with pytest.raises(RuntimeError, match="client callback failed"):
        llm.generate(PROMPTS, GREEDY, on_output=boom_at(3))
    assert_clean(llm)
    # A later call runs only its own requests, and gets what it would have alone.
    steps = []
    real = llm.engine.step
    llm.engine.step = lambda: steps.append(1) or real()
    assert llm.generate(PROMPTS[0], GREEDY)[0].token_ids == alone[0]
    assert len(steps) == GREEDY.max_tokens  # one prefill step, then a decode per token
    assert_clean(llm)


def test_a_session_step_that_raises_leaves_the_session_usable(model_dir):
    llm = make_llm(model_dir)
    session = llm.session("agent")
    with pytest.raises(RuntimeError, match="client callback failed"):
        session.generate("a story", GREEDY, on_output=boom_at(3))
    assert_clean(llm)
    # Before the fix: InvalidRequest, the session still had a request in flight.
    out = session.generate("again", GREEDY)
    assert out.finish_reason == "length" and len(out.token_ids) == 12
    assert_clean(llm)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_an_interrupt_or_a_failed_step_aborts_the_call(model_dir, error):
    llm = make_llm(model_dir)
    real, calls = llm.engine.step, [0]

    def step():
        calls[0] += 1
        if calls[0] == 3:
            raise error("stopped mid-generation")
        return real()

    llm.engine.step = step
    with pytest.raises(error, match="stopped mid-generation"):
        llm.generate(PROMPTS, GREEDY)
    assert_clean(llm)
    assert [len(o.token_ids) for o in llm.generate(PROMPTS, GREEDY)] == [12, 12]
    assert_clean(llm)
