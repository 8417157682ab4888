"""Several stop strings: the one that completes first in the text cuts it, and is the
request's `stop_reason`; two completing at the same character go by the request's list
order. That is vLLM 0.32's rule (measured against its server: findings/s57/servestop.md)."""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplerOutput, SamplingParams
from kvsaga.engine.step_output import find_stop


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


@pytest.mark.parametrize(("stop", "text"), [(["b", "ab"], "xa"), (["ab", "b"], "x")])
def test_two_stop_strings_completing_together_go_by_list_order(model_dir, stop, text):
    """A scripted sampler says "x", "a", "b": the "b" completes both "b" and "ab" at the same
    character. The one listed first cuts the text and is the stop reason, and the streamed
    deltas say the same (review s50 cut at the earliest start, "x", whatever the order;
    vLLM's list order gives "xa" for ["b", "ab"], with stop_reason "b")."""
    eng = LLM(str(model_dir), device="cpu", progress=False, kv_memory_bytes=4 * 2**20).engine
    script = eng.tokenizer.encode("xab", add_special_tokens=False)
    assert [eng.tokenizer.decode([t]) for t in script] == ["x", "a", "b"]
    eng.runner.sampler = lambda logits, params, gens=None: SamplerOutput(
        torch.tensor([script[len(req.output_ids)]]), torch.zeros(1))
    req = eng.add_request([5, 6, 7], SamplingParams(max_tokens=10, temperature=0, stop=stop))
    outs = []
    while not req.finished:
        outs += [o for o in eng.step() if o.request_id == req.request_id]
    assert req.output_ids == script and req.finish_reason == "stop"
    assert req.text == "".join(o.delta for o in outs) == text
    assert [o.stop_reason for o in outs] == [None, None, stop[0]]
    assert eng.final_output(req).stop_reason == stop[0]
    eng.manager.check_integrity()


@pytest.mark.parametrize(("text", "prev", "stop", "want"), [
    # One new token's text " answer" holds both: "swe" completes first (vLLM: " Paris.\n\n
    # The an", stop_reason "swe", in either list order; the old rule cut at " answer").
    (" answer", 0, (" answer", "swe"), (3, "swe")),
    (" answer", 0, ("swe", " answer"), (3, "swe")),
    # Both end at the same character: the first listed ("wer": "...The ans"; "er": "answ").
    (" answer", 0, ("wer", "er"), (4, "wer")),
    (" answer", 0, ("er", "wer"), (5, "er")),
    # A stop string spanning the old text and the new.
    ("Paris.\n", 5, ("s.\n", "x"), (4, "s.\n")),
    # None ends in the new text.
    ("Paris", 3, ("Pa", "q"), None),
    ("Paris", 5, ("is",), None),
])
def test_find_stop_takes_the_match_that_completes_first(text, prev, stop, want):
    assert find_stop(text, prev, stop) == want
