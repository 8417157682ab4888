"""Architecture parity on tiny random HF checkpoints: our model, loaded from the saved HF
directory, against transformers' own model on the same directory, fp32 on CPU."""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.attn_metadata import AttentionMetadata
from kvsaga.engine.loader import load_model

from .helpers import TINY_VARIANTS, TINY_VOCAB, kv_cache, run_greedy

# Logits of these models are O(10); fp32 rounding differences stay near 1e-5.
ATOL = 2e-4


def _prompts(seed: int, lengths: list[int]) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, TINY_VOCAB, (n,), generator=g).tolist() for n in lengths]


def _hf(directory):
    transformers = pytest.importorskip("transformers")
    return transformers.AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()


@torch.no_grad()
def _hf_logits(hf, ids: list[int]) -> torch.Tensor:
    return hf(torch.tensor([ids])).logits[0].float()  # [len, V]


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_prefill_logits_match_hf(variant, tiny_model_dir):
    """One flat batch of mixed-length prompts, logits at every position."""
    d = tiny_model_dir(variant)
    ours = load_model(d, dtype=torch.float32, device="cpu", progress=False)
    hf = _hf(d)
    prompts = _prompts(1, [5, 37, 1, 20])  # 37 > 16: past llama3's original context
    block_size = 4
    per_seq = 10
    tables = [list(range(i * per_seq, (i + 1) * per_seq))[::-1] for i in range(len(prompts))]
    lens = [len(p) for p in prompts]
    meta = AttentionMetadata.build(tables, lens, lens, block_size, logits_indices=None)
    meta.logits_indices = None  # every row
    kv = kv_cache(ours.model, per_seq * len(prompts), block_size)
    flat = torch.tensor([t for p in prompts for t in p])
    logits = ours.model(flat, meta.positions(), kv, meta)  # [T, V]
    start = 0
    for p in prompts:
        ref = _hf_logits(hf, p)
        got = logits[start : start + len(p)]
        start += len(p)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("variant", sorted(TINY_VARIANTS))
def test_chunked_prefill_and_decode_match_hf(variant, tiny_model_dir):
    """Prefill in chunks of 7 over cached context, then decode; every step's logits agree
    with HF's full forward over the final sequence."""
    d = tiny_model_dir(variant)
    ours = load_model(d, dtype=torch.float32, device="cpu", progress=False)
    hf = _hf(d)
    prompts = _prompts(2, [3, 19, 11])
    generated, step_logits = run_greedy(ours.model, prompts, 10, block_size=4, prefill_chunk=7)
    for p, gen, got in zip(prompts, generated, step_logits, strict=True):
        ref = _hf_logits(hf, p + gen[:-1])[len(p) - 1 :]
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)


def test_config_fields_read_from_hf(tiny_model_dir):
    cfg = load_model(tiny_model_dir("llama_mqa_llama3_rope"), progress=False).config
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (4, 1, 16)
    assert cfg.rope_scaling.rope_type == "llama3"
    assert cfg.rope_scaling.original_max_position_embeddings == 16
    assert cfg.rope_theta == 500000.0
    assert cfg.eos_token_ids == (1,)
    qwen = load_model(tiny_model_dir("qwen2_bias_tied"), progress=False).config
    assert qwen.attention_bias and not qwen.attention_out_bias and qwen.tie_word_embeddings
    bias = load_model(tiny_model_dir("llama_bias_head_dim"), progress=False).config
    assert bias.attention_bias and bias.attention_out_bias and bias.head_dim == 24


def test_hf_dir_tokenizer_roundtrip(tiny_model_dir):
    tok = load_model(tiny_model_dir("mistral"), progress=False).tokenizer
    ids = tok.encode("héllo wörld 👋")
    assert ids[0] == tok.bos_token_id == 0
    assert tok.decode(ids) == "héllo wörld 👋"
    assert tok.eos_token_ids == (1,)
    prompt = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert prompt == "<s>user: hi</s>"


def test_triton_kernels_under_interpreter(tiny_model_dir, monkeypatch):
    """The same tiny model with KVSAGA_KERNELS=triton: Triton's interpreter on CPU."""
    d = tiny_model_dir("llama_gqa4_untied")
    ours = load_model(d, dtype=torch.float32, device="cpu", progress=False)
    prompts = _prompts(3, [6, 13])
    reference_run = run_greedy(ours.model, prompts, 4, block_size=4, prefill_chunk=5)
    monkeypatch.setenv("KVSAGA_KERNELS", "triton")
    triton_run = run_greedy(ours.model, prompts, 4, block_size=4, prefill_chunk=5)
    assert triton_run[0] == reference_run[0]
    for got, ref in zip(triton_run[1], reference_run[1], strict=True):
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
    hf = _hf(d)
    for p, gen, got in zip(prompts, *triton_run, strict=True):
        ref = _hf_logits(hf, p + gen[:-1])[len(p) - 1 :]
        torch.testing.assert_close(got, ref, atol=ATOL, rtol=0)
