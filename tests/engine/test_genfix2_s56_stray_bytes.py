"""Session 56 lane genfix2 (findings/s56/diffgen.md LOW-2): a step whose output ends in a
run of invalid bytes (stray UTF-8 continuation bytes, more than an incomplete character's 3)
returns text without them (the detokenizer holds every trailing U+FFFD back), and the next
raw step's context must not hold them either: it kept them when the run was longer than 3
ids. Tiny random model (byte-level vocabulary), scripted sampler."""

from __future__ import annotations

import pytest

from kvsaga.engine.sampling import SamplingParams

from .test_stop_semantics import ids, scripted_llm


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


@pytest.mark.parametrize("how", ["stop_token", "length"])
@pytest.mark.parametrize("stray", [1, 4, 9])
def test_stray_bytes_ending_a_step_are_not_in_the_next_context(model_dir, how, stray):
    probe = scripted_llm(model_dir, [])
    tok = probe.tokenizer
    cont = ids(probe, "é")[1]  # a UTF-8 continuation byte: alone, an invalid byte
    assert tok.token_bytes(cont) == b"\xa9"
    end = ids(probe, "b")
    step1 = ids(probe, "xa") + [cont] * stray + (end if how == "stop_token" else [])
    llm = scripted_llm(model_dir, [step1, ids(probe, "yz")])
    s = llm.session()
    a = s.generate("Q:", SamplingParams(max_tokens=len(step1), temperature=0,
                                        stop_token_ids=end if how == "stop_token" else []))
    assert a.text == "xa" and list(a.token_ids) == step1
    held = s.context_ids
    b = s.generate(" more", SamplingParams(max_tokens=2, temperature=0))
    prompt = s.context_ids[: b.num_prompt_tokens]
    assert tok.decode(prompt, skip_special_tokens=False) == "<s>Q:xa more"
    assert prompt[: len(held) - len(step1) + 2] == held[: len(held) - len(step1) + 2]
    s.end()
    llm.engine.manager.check_integrity()
