"""The whole engine (scheduler, manager, pool, kernels) on the real SmolLM2 weights gives
transformers' greedy tokens, batched, after prefix-cache hits and across a session pause."""

from __future__ import annotations

import pytest

from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplingParams

from .helpers import hf_greedy

pytestmark = pytest.mark.slow
NEW = 32
GREEDY = SamplingParams(max_tokens=NEW, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(gguf_path):
    return LLM(str(gguf_path), device="cpu", progress=False, max_num_batched_tokens=48)


def test_engine_matches_hf_greedy_batched_and_cached(llm, hf_smollm):
    tok = llm.tokenizer
    questions = ["What is the capital of France?", "Name three prime numbers.", "Say hi."]
    prompts = [
        tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]), False)
        for q in questions
    ]
    expected = [hf_greedy(hf_smollm, p, NEW) for p in prompts]
    outs = llm.generate(prompts, GREEDY)  # one batch, chunked prefill (48-token budget)
    assert [o.token_ids for o in outs] == expected
    assert "Paris" in outs[0].text
    again = llm.generate(prompts[0], GREEDY)[0]  # shares the system prompt's blocks
    assert again.num_cached_tokens >= 16
    assert again.token_ids == expected[0]
    llm.engine.manager.check_integrity()


def test_session_resume_matches_hf_on_the_full_context(llm, hf_smollm):
    s = llm.session()
    s.chat("Pick a colour.", GREEDY)
    s.tool_call("lookup", expected_s=0.1)
    b = s.chat("Why that one?", GREEDY)
    assert b.num_cached_tokens > 0
    assert b.token_ids == hf_greedy(hf_smollm, s.context_ids[: b.num_prompt_tokens], NEW)
    s.end()
