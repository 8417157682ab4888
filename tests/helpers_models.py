"""Tiny random HF model directories, shared by the engine and serve tests."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.engine.helpers import TINY_VARIANTS, TINY_VOCAB, scale_init, write_byte_tokenizer


def build_tiny_model(name: str, out: Path) -> Path:
    """Write the tiny random model `name` (a key of TINY_VARIANTS) to `out`.

    Args:
        name: the variant.
        out: an empty directory.
    Returns:
        `out`, now an HF directory (config, safetensors, byte-level tokenizer with a chat
        template).
    """
    import transformers

    spec = dict(TINY_VARIANTS[name])
    model_type = spec.pop("model_type")
    config_cls = transformers.AutoConfig.for_model(model_type).__class__
    config = config_cls(
        vocab_size=TINY_VOCAB,
        hidden_size=64,
        intermediate_size=128,  # a multiple of 32: the GGUF tests quantize it (Q8_0, Q4_0)
        num_hidden_layers=2,
        max_position_embeddings=spec.pop("max_position_embeddings", 256),
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=1,
        **spec,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    scale_init(model, seed=len(name))
    model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    write_byte_tokenizer(out)
    return out
