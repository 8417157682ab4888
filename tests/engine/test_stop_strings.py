"""Several stop strings: when two complete in the same step, the earliest one cuts the text."""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplerOutput, SamplingParams


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


@pytest.mark.parametrize("stop", [["b", "ab"], ["ab", "b"]])
def test_the_earliest_of_two_stop_strings_completing_together_wins(model_dir, stop):
    """A scripted sampler says "x", "a", "b": the "b" completes both "b" (at 2) and "ab"
    (at 1) in one step. The text ends before the earlier one, "x", in either order of the
    list, and the streamed deltas say the same (review s50 tests 5: cutting at the latest
    hit left "xa")."""
    eng = LLM(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20).engine
    script = eng.tokenizer.encode("xab", add_special_tokens=False)
    assert [eng.tokenizer.decode([t]) for t in script] == ["x", "a", "b"]
    eng.runner.sampler = lambda logits, params, gens=None: SamplerOutput(
        torch.tensor([script[len(req.output_ids)]]), torch.zeros(1))
    req = eng.add_request([5, 6, 7], SamplingParams(max_tokens=10, temperature=0, stop=stop))
    deltas = []
    while not req.finished:
        deltas += [o.delta for o in eng.step() if o.request_id == req.request_id]
    assert req.output_ids == script and req.finish_reason == "stop"
    assert req.text == "".join(deltas) == "x"
    eng.manager.check_integrity()
