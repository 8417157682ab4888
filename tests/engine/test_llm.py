"""The engine end to end on a tiny random Llama: batching, prefix hits, preemption and
agent sessions must never change greedy output."""

from __future__ import annotations

import pytest

from kvsaga.engine.llm import LLM
from kvsaga.engine.sampling import SamplingParams
from kvsaga.errors import InvalidRequest

GREEDY = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
PROMPTS = [
    [5, 17, 33, 2, 9],
    list(range(40, 77)),
    [100 + (i * 7) % 150 for i in range(23)],
    [3],
    list(range(200, 250)),
]


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def make_llm(model_dir, **kw) -> LLM:
    kw.setdefault("kv_memory_bytes", 4 * 2**20)
    return LLM(str(model_dir), device="cpu", progress=False, **kw)


@pytest.fixture(scope="module")
def alone(model_dir):
    """Greedy tokens of each prompt run by itself in a fresh engine."""
    out = []
    for p in PROMPTS:
        llm = make_llm(model_dir)
        out.append(llm.generate(p, GREEDY)[0].token_ids)
    return out


def test_batch_matches_each_prompt_alone(model_dir, alone):
    llm = make_llm(model_dir, max_num_batched_tokens=32)  # forces chunked prefill too
    outs = llm.generate(PROMPTS, GREEDY)
    assert [o.token_ids for o in outs] == alone
    assert all(o.finish_reason == "length" and len(o.token_ids) == 12 for o in outs)
    llm.engine.manager.check_integrity()
    assert llm.engine.manager.stats().num_used_blocks == 0


def test_prefix_cache_hit_gives_cold_tokens(model_dir, alone):
    llm = make_llm(model_dir)
    first = llm.generate(PROMPTS[4], GREEDY)[0]
    again = llm.generate(PROMPTS[4], GREEDY)[0]
    assert first.num_cached_tokens == 0
    assert again.num_cached_tokens == 48  # 3 full blocks of the 50-token prompt
    assert again.token_ids == first.token_ids == alone[4]


def test_preemption_under_a_tiny_pool_gives_same_tokens(model_dir, alone):
    llm = make_llm(model_dir, kv_memory_bytes=None)
    spec = llm.engine.spec
    # Room for 7 blocks: the first four prompts fill it, and decoding must preempt.
    llm = make_llm(model_dir, kv_memory_bytes=7 * spec.bytes_per_block)
    outs = llm.generate(PROMPTS, GREEDY)
    assert llm.engine.scheduler.num_preemptions > 0
    assert [o.token_ids for o in outs] == alone
    llm.engine.manager.check_integrity()


def test_session_steps_hit_their_own_context(model_dir):
    llm = make_llm(model_dir)
    s = llm.session()
    a = s.generate("hello agent", GREEDY)
    s.tool_call("grep", expected_s=0.05)
    b = s.generate(" tool result: 42.", GREEDY)
    assert b.num_cached_tokens >= len(s.context_ids) - len(b.token_ids) - 20
    assert b.num_cached_tokens > a.num_prompt_tokens
    # The same full context, cold, gives the same tokens.
    cold = make_llm(model_dir).generate(s.context_ids[: b.num_prompt_tokens], GREEDY)[0]
    assert cold.token_ids == b.token_ids
    s.end()
    assert llm.engine.manager.stats().num_paused_sessions == 0
    llm.engine.manager.check_integrity()


def test_requests_that_can_never_fit_are_rejected(model_dir):
    llm = make_llm(model_dir)
    with pytest.raises(InvalidRequest, match="context limit"):
        llm.generate(list(range(300)) * 2, GREEDY)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        llm.generate([10**6], GREEDY)
    with pytest.raises(InvalidRequest, match="empty"):
        llm.generate([[]], GREEDY)
    s = llm.session(salt="tenant-a")
    s.generate("hi", GREEDY)
    with pytest.raises(InvalidRequest, match="another salt"):
        llm.engine.add_request([5, 6], GREEDY, session_id=s.session_id, salt="tenant-b")
    assert llm.engine.manager.stats().num_used_blocks == 0


def test_stop_strings_and_max_tokens(model_dir, alone):
    llm = make_llm(model_dir)
    full = llm.generate(PROMPTS[1], GREEDY)[0]
    assert len(full.text) > 2
    stop = full.text[2:4]
    cut = llm.generate(PROMPTS[1], SamplingParams(max_tokens=12, temperature=0, stop=[stop]))[0]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert full.text.startswith(cut.text)


def test_session_offloaded_during_pause_resumes_with_identical_output(model_dir):
    import random
    import time

    probe = make_llm(model_dir)
    bpb = probe.engine.spec.bytes_per_block
    rng = random.Random(0)
    llm = make_llm(
        model_dir,
        kv_memory_bytes=8 * bpb,
        host_memory_bytes=16 * bpb,
        transfer_delay=lambda: time.sleep(rng.random() / 1000),
    )
    s = llm.session()
    s.generate(" ".join(["agent"] * 8), GREEDY)  # ~50 tokens: 3 full blocks
    s.tool_call("run_tests", expected_s=30.0)
    # Another session needs the whole GPU tier: the paused session's blocks go to host.
    other = llm.generate(
        list(range(60, 180)), SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)
    )
    assert other[0].finish_reason == "length"
    stats = llm.engine.manager.stats()
    assert stats.offloaded_blocks >= 3
    b = s.generate(" result ok.", GREEDY)
    stats = llm.engine.manager.stats()
    assert stats.loaded_blocks >= 3 and stats.host_hit_tokens >= 48
    assert b.num_cached_tokens >= 48
    cold = make_llm(model_dir).generate(s.context_ids[: b.num_prompt_tokens], GREEDY)[0]
    assert cold.token_ids == b.token_ids
    llm.engine.manager.check_integrity()


def test_streamed_deltas_never_show_a_stop_string(model_dir):
    llm = make_llm(model_dir)
    full = llm.generate(PROMPTS[1], GREEDY)[0]
    stop = full.text[3:6]
    eng = llm.engine
    req = eng.add_request(PROMPTS[1], SamplingParams(max_tokens=12, temperature=0, stop=[stop]))
    deltas = []
    while not req.finished:
        deltas += [o.delta for o in eng.step() if o.request_id == req.request_id]
    streamed = "".join(deltas)
    assert streamed == req.text and stop not in streamed
    assert full.text.startswith(streamed)
