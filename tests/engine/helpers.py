"""Helpers for the engine tests: a greedy loop over a paged KV cache, and the tiny random
model variants (built by the `tiny_model_dir` fixture in conftest.py)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from kvsaga.engine.attn_metadata import AttentionMetadata
from kvsaga.engine.model import LlamaForCausalLM
from kvsaga.policy import Action, LRUPolicy

BLOCK_SIZE = 16


# -- driving our model -----------------------------------------------------------------------


def kv_cache(model: LlamaForCausalLM, num_blocks: int, block_size: int) -> torch.Tensor:
    """A zeroed tier tensor for `model`, block-major like kvsaga.storage.KVStorage's."""
    c = model.config
    shape = (num_blocks, c.num_layers, 2, block_size, c.num_kv_heads, c.head_dim)
    return torch.zeros(shape, dtype=model.dtype)


def forward_all(model: LlamaForCausalLM, ids: list[int]) -> torch.Tensor:
    """Logits at every position of one sequence (up to 128 tokens) prefilled in one pass."""
    meta = AttentionMetadata.build([list(range(8))], [len(ids)], [len(ids)], 16)
    meta.logits_indices = None
    return model(torch.tensor(ids), meta.positions(), kv_cache(model, 8, 16), meta)


def hf_greedy(hf, ids: list[int], max_new_tokens: int, pad_token_id: int | None = 0) -> list[int]:
    """transformers' greedy continuation of `ids` (EOS ignored): the oracle for ours."""
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=pad_token_id,
        )
    return out[0, len(ids) :].tolist()


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
    kv = kv_cache(model, num_blocks, block_size)
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


def write_llama_gguf(
    hf_dir: Path, out: Path, qtype: str = "F32", extra: dict | None = None,
    end_ids: dict[str, int] | None = None, metadata: dict[str, float | str] | None = None,
) -> Path:
    """Convert a tiny HF Llama directory to GGUF the way llama.cpp's converter does: its
    tensor names, Q/K rows permuted for interleaved RoPE, 2-D weights quantized to `qtype`.
    `extra`: more fp32 tensors to store, by GGUF name. No tokenizer metadata (the weights
    path is what this exercises) unless `end_ids` is given: then the byte-level vocabulary
    of `write_byte_tokenizer` (filled with control tokens up to the model's vocabulary) and
    the end-of-generation ids it names ({"eot": id, "eom": id}, llama.cpp's
    `tokenizer.ggml.<name>_token_id`) beside the EOS id. `metadata`: more keys, by full
    name (numbers stored as float32, e.g. "llama.rope.scale_linear"), as a converter of
    another time may have written them."""
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "ffn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }

    def permute(w: np.ndarray, n: int) -> np.ndarray:
        return w.reshape(n, 2, w.shape[0] // n // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_key_length(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    writer.add_rope_freq_base(cfg["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_eos_token_id(cfg["eos_token_id"])
    if end_ids is not None:
        _add_byte_level_vocab(writer, cfg["vocab_size"])
        for name, token_id in end_ids.items():
            writer.add_uint32(f"tokenizer.ggml.{name}_token_id", token_id)
    for key, value in (metadata or {}).items():
        if isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_float32(key, value)
    rope = cfg["rope_parameters"]
    if rope.get("rope_type") == "llama3":
        # llama.cpp stores Llama 3.1 scaling as per-frequency divisors, not as metadata.
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
        inv_freq = 1.0 / rope["rope_theta"] ** (np.arange(0, head_dim, 2) / head_dim)
        old_len = rope["original_max_position_embeddings"]
        lo, hi, factor = rope["low_freq_factor"], rope["high_freq_factor"], rope["factor"]
        factors = []
        for wavelen in 2 * np.pi / inv_freq:
            if wavelen < old_len / hi:
                factors.append(1.0)
            elif wavelen > old_len / lo:
                factors.append(factor)
            else:
                smooth = (old_len / wavelen - lo) / (hi - lo)
                factors.append(1 / ((1 - smooth) / factor + smooth))
        writer.add_tensor("rope_freqs.weight", np.array(factors, dtype=np.float32))
    for gname, w in (extra or {}).items():
        writer.add_tensor(gname, np.asarray(w, dtype=np.float32))
    quant = gguf.GGMLQuantizationType[qtype]
    for name, w in load_file(str(hf_dir / "model.safetensors")).items():
        w = w.astype(np.float32)
        if name == "model.embed_tokens.weight":
            gname = "token_embd.weight"
        elif name == "model.norm.weight":
            gname = "output_norm.weight"
        elif name == "lm_head.weight":
            gname = "output.weight"
        else:
            _, _, layer, *rest = name.split(".")
            module, kind = ".".join(rest[:-1]), rest[-1]
            gname = f"blk.{layer}.{names[module]}.{kind}"
            if module == "self_attn.q_proj":
                w = permute(w, heads)
            elif module == "self_attn.k_proj":
                w = permute(w, kv_heads)
        if w.ndim == 2 and quant != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gname, gguf.quants.quantize(w, quant), raw_dtype=quant)
        else:
            writer.add_tensor(gname, w)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def _add_byte_level_vocab(writer, vocab_size: int) -> None:
    """GGUF tokenizer metadata for `write_byte_tokenizer`'s vocabulary (<s>, </s>, then the
    byte alphabet), with one merge ("Ġt", as "gpt2" vocabularies need merges) and control
    tokens up to `vocab_size`, so that every id a tiny model samples has a token."""
    from tokenizers import pre_tokenizers

    tokens = ["<s>", "</s>", *sorted(pre_tokenizers.ByteLevel.alphabet()), "\u0120t"]
    types = [3, 3] + [1] * (len(tokens) - 2)
    fill = vocab_size - len(tokens)
    tokens += [f"<|reserved_{i}|>" for i in range(fill)]
    types += [3] * fill
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(["\u0120 t"])
    writer.add_bos_token_id(0)


def write_sentencepiece_gguf(
    out: Path, corpus: Sequence[str], chat_template: str | list[dict] | None = None
) -> Path:
    """A GGUF whose tokenizer is SentencePiece-style BPE (`tokenizer.ggml.model == "llama"`,
    as in Llama 2 / TinyLlama files): <unk>, <s>, </s>, 256 byte-fallback tokens, then pieces
    trained on `corpus`, scored by merge rank and without stored merges. `chat_template`:
    stored as llama.cpp's converter stores it (named ones as tokenizer.chat_template.<name>)."""
    import gguf
    import numpy as np
    from tokenizers import SentencePieceBPETokenizer

    specials = ["<unk>", "<s>", "</s>"]
    trainer = SentencePieceBPETokenizer()
    trainer.train_from_iterator(
        corpus, vocab_size=400, min_frequency=1, special_tokens=specials, show_progress=False
    )
    trained = sorted(trainer.get_vocab().items(), key=lambda kv: kv[1])
    pieces = [tok for tok, _ in trained if tok not in specials]
    tokens = specials + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)  # unknown, control, byte, normal
    scores = [0.0] * (3 + 256) + [-float(i) for i in range(len(pieces))]
    writer = gguf.GGUFWriter(str(out), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(16)
    writer.add_feed_forward_length(32)
    writer.add_head_count(1)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 16), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


# -- policies --------------------------------------------------------------------------------


class OffloadSessionBlocksOnly(LRUPolicy):
    """LRU that offloads only blocks of a live session's context and discards plain cache
    (an ended one-shot request's), so that a resumed step has no copies of its own to wait
    for: its forward is right only if it waits for the prefetch its resume hint started."""

    def action(self, block_id: int, now: float) -> Action:
        owned = self.view.block_owner[block_id] is not None
        return Action.OFFLOAD if owned else Action.DISCARD


# -- both bookkeeping cores under a whole engine ----------------------------------------------


@pytest.fixture(params=["python", "cpp"], name="core")
def engine_core(request, monkeypatch):
    """Each bookkeeping core for engines built in the test (`KVSAGA_CORE`; the engine builds
    its own manager); cpp is skipped where it was not built. Import it into a test module to
    use it there as `core`."""
    if request.param == "cpp":
        from kvsaga._core import cpp_available

        if not cpp_available():
            pytest.skip("the C++ core is not built")
    monkeypatch.setenv("KVSAGA_CORE", request.param)
    return request.param


def drain(engine, limit: int = 500) -> None:
    """Step `engine` until it has nothing unfinished (at most `limit` steps)."""
    for _ in range(limit):
        if not engine.has_unfinished():
            return
        engine.step()
    raise AssertionError("the engine did not finish its requests")
