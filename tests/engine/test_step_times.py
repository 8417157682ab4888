"""Where LLMEngine.step() spends its time: steps, batches and tokens by kind of step, wall
seconds by phase (kvsaga.engine.step_times), as the engine counts them."""

from __future__ import annotations

import pytest

from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
from kvsaga.engine.step_times import KINDS, PHASES, StepClock, step_kind


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def test_step_kind_by_chunks():
    assert step_kind(3, 0) == "decode"
    assert step_kind(0, 2) == "prefill"
    assert step_kind(1, 1) == "mixed"
    assert step_kind(0, 0) == "empty"
    with pytest.raises(ValueError, match="chunk counts"):
        step_kind(-1, 0)


def test_clock_accumulates_and_intervals_subtract():
    clock = StepClock()
    clock.record("decode", 2, 2, 0.1, 0.0, 0.5, 0.05)
    before = clock.read()
    clock.record("decode", 4, 4, 0.2, 0.0, 1.0, 0.1)
    clock.record("prefill", 1, 30, 0.1, 0.2, 2.0, 0.0)
    after = clock.read()
    assert before.steps["decode"] == 1  # a reading is a copy, not a view
    d = after.minus(before)
    assert d.steps == {"decode": 1, "prefill": 1, "mixed": 0, "empty": 0}
    assert d.seqs["decode"] == 4 and d.tokens["prefill"] == 30
    assert d.seconds["decode"]["forward"] == pytest.approx(1.0)
    assert d.total_seconds("prefill") == pytest.approx(2.3)
    assert d.total_seconds() == pytest.approx(3.6)
    with pytest.raises(ValueError, match="unknown step kind 'idle'"):
        clock.record("idle", 0, 0, 0.0, 0.0, 0.0, 0.0)
    assert clock.read() == after  # the bad record changed nothing


def test_engine_counts_one_prefill_then_decodes(model_dir):
    engine = LLMEngine(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)
    prompt = list(range(5, 45))  # 40 tokens: one prefill chunk (max_num_batched_tokens 1024)
    req = engine.add_request(prompt, SamplingParams(max_tokens=6, temperature=0.0,
                                                    ignore_eos=True))
    while not req.finished:
        engine.step()
    t = engine.stats().step_times
    # The prefill samples the first token; each of the other five is one decode step.
    assert t.steps == {"prefill": 1, "decode": 5, "mixed": 0, "empty": 0}
    assert t.seqs == {"prefill": 1, "decode": 5, "mixed": 0, "empty": 0}
    assert t.tokens["prefill"] == 40 and t.tokens["decode"] == 5
    assert t.seconds["prefill"]["forward"] > 0 and t.seconds["decode"]["forward"] > 0
    assert all(t.seconds[k][p] >= 0 for k in KINDS for p in PHASES)
    assert t.total_seconds("mixed") == 0.0


def test_engine_counts_mixed_batches(model_dir):
    engine = LLMEngine(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    first = engine.add_request(list(range(5, 25)), params)
    engine.step()  # first's prefill
    second = engine.add_request(list(range(30, 50)), params)
    while not (first.finished and second.finished):
        engine.step()
    t = engine.stats().step_times
    # second's prefill ran beside first's decode: one mixed step of two sequences.
    assert t.steps["mixed"] == 1 and t.seqs["mixed"] == 2
    assert t.tokens["mixed"] == 21
    assert sum(t.tokens.values()) == 20 + 20 + 3 + 3
