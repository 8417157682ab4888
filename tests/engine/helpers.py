"""Helpers for the engine tests: a greedy loop over a paged KV cache, and the tiny random
model variants (built by the `tiny_model_dir` fixture in conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch

from kvsaga.engine.attn_metadata import AttentionMetadata
from kvsaga.engine.model import LlamaForCausalLM

BLOCK_SIZE = 16


# -- driving our model -----------------------------------------------------------------------


def run_greedy(
    model: LlamaForCausalLM,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    block_size: int = BLOCK_SIZE,
    prefill_chunk: int | None = None,
) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy-decode several prompts as one flat batch through a paged KV cache.

    Each sequence gets its own run of blocks, laid out in reverse order so that block tables
    are not the identity. With `prefill_chunk`, prompts are prefilled in chunks (extend over
    cached context) instead of in one pass.

    Returns:
        (generated ids per prompt, fp32 logits [max_new_tokens, V] per prompt: row j is the
        distribution that chose generated token j).
    """
    total = max(len(p) for p in prompts) + max_new_tokens
    per_seq = -(-total // block_size)
    num_blocks = per_seq * len(prompts)
    kv = torch.zeros(model.kv_cache_shape(num_blocks, block_size), dtype=model.dtype)
    tables = [list(reversed(range(i * per_seq, (i + 1) * per_seq))) for i in range(len(prompts))]
    seqs = [list(p) for p in prompts]
    done = [0] * len(prompts)  # tokens already in the cache
    step_logits: list[list[torch.Tensor]] = [[] for _ in prompts]
    while any(d < len(p) for d, p in zip(done, prompts, strict=True)):  # prefill
        chunk = prefill_chunk or total
        q_lens = [min(chunk, len(p) - d) for d, p in zip(done, prompts, strict=True)]
        live = [i for i, q in enumerate(q_lens) if q > 0]
        meta = AttentionMetadata.build(
            [tables[i] for i in live],
            [done[i] + q_lens[i] for i in live],
            [q_lens[i] for i in live],
            block_size,
        )
        ids = torch.tensor([t for i in live for t in seqs[i][done[i] : done[i] + q_lens[i]]])
        logits = model(ids, meta.positions(), kv, meta)
        for row, i in enumerate(live):
            done[i] += q_lens[i]
            if done[i] == len(prompts[i]):
                seqs[i].append(int(logits[row].argmax()))
                step_logits[i].append(logits[row])
    for _ in range(max_new_tokens - 1):  # decode: one token per sequence
        meta = AttentionMetadata.build(tables, [len(s) for s in seqs], [1] * len(seqs), block_size)
        ids = torch.tensor([s[-1] for s in seqs])
        logits = model(ids, meta.positions(), kv, meta)
        for s, row, history in zip(seqs, logits, step_logits, strict=True):
            s.append(int(row.argmax()))
            history.append(row)
    generated = [s[len(p) :] for s, p in zip(seqs, prompts, strict=True)]
    return generated, [torch.stack(h) for h in step_logits]


# -- tiny random HF checkpoints --------------------------------------------------------------

TINY_VOCAB = 320


def write_byte_tokenizer(directory: Path) -> None:
    """A byte-level tokenizer.json (no merges) with <s>, </s>, and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>"])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "chat_template": template}
    (directory / "tokenizer_config.json").write_text(json.dumps(cfg))


def scale_init(model: torch.nn.Module, seed: int) -> None:
    """Weights big enough that attention is sharp and RoPE errors show in the logits (HF's
    default init of std 0.02 makes every attention map nearly uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                std = 1.0 if "embed" in name else 1.5 / p.shape[1] ** 0.5
                p.copy_(torch.randn(p.shape, generator=g) * std)
            elif "norm" in name:
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            else:  # biases
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


TINY_VARIANTS: dict[str, dict] = {
    # name: (model_type, config overrides)
    "llama_gqa4_untied": {
        "model_type": "llama",
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "head_dim": 16,  # the Triton kernels take head_dim >= 16
        "tie_word_embeddings": False,
    },
    "llama_mha_tied_linear_rope": {
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "tie_word_embeddings": True,
        "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    },
    "llama_mqa_llama3_rope": {
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "max_position_embeddings": 512,
        "rope_parameters": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
            "rope_theta": 500000.0,
        },
    },
    "llama_bias_head_dim": {
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 24,
        "attention_bias": True,
    },
    "qwen2_bias_tied": {
        "model_type": "qwen2",
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "tie_word_embeddings": True,
    },
    "mistral": {
        "model_type": "mistral",
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "sliding_window": None,
    },
}
