"""Write a model as an HF directory (config.json + safetensors + tokenizer files).

Other engines (vLLM, transformers) read HF directories, not the GGUF file kvsaga ships as its
default model. This writes what kvsaga's own loaders read from a checkpoint, so a benchmark
can serve the same weights, tokenizer and chat template with both engines. Weights keep the
checkpoint's values (GGUF tensors come out dequantized to fp32) in the dtype asked for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from kvsaga.engine.model_config import ModelConfig, ModelLoadError
from kvsaga.engine.tokenizer import Tokenizer
from kvsaga.engine.weights import open_checkpoint

_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
}
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def hf_config(config: ModelConfig, dtype: torch.dtype) -> dict[str, Any]:
    """The config.json that `ModelConfig.from_hf_config` reads back as `config`."""
    rope = config.rope_scaling
    scaling = None
    if rope.rope_type == "linear":
        scaling = {"rope_type": "linear", "factor": rope.factor}
    elif rope.rope_type == "llama3":
        scaling = {
            "rope_type": "llama3",
            "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings,
        }
    eos = list(config.eos_token_ids)
    return {
        "architectures": [_HF_ARCHITECTURES[config.architecture]],
        "model_type": config.architecture,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": config.rms_norm_eps,
        "rope_theta": config.rope_theta,
        "rope_scaling": scaling,
        "max_position_embeddings": config.max_position_embeddings,
        "tie_word_embeddings": config.tie_word_embeddings,
        # qwen2's q/k/v bias is implied by its model_type; llama's flag covers all four.
        "attention_bias": config.attention_out_bias,
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else (eos or None),
        "torch_dtype": _DTYPE_NAMES[dtype],
    }


def tokenizer_config(tokenizer: Tokenizer) -> dict[str, Any]:
    """The tokenizer_config.json that `Tokenizer.from_hf_dir` reads back."""
    out: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": tokenizer.bos_token,
        "eos_token": tokenizer.eos_token,
        "pad_token": tokenizer.pad_token,
        "clean_up_tokenization_spaces": False,
    }
    if tokenizer.chat_template is not None:
        out["chat_template"] = tokenizer.chat_template.source
    return {k: v for k, v in out.items() if v is not None}


def export_hf(
    source: str | Path,
    out_dir: str | Path,
    dtype: torch.dtype = torch.float32,
    with_tokenizer: bool = True,
) -> Path:
    """Write the checkpoint at `source` (GGUF file or HF directory) as an HF directory.

    Args:
        source: anything `open_checkpoint` opens.
        out_dir: the directory to write; created if missing, must not hold a config.json.
        dtype: the dtype of the stored weights.
        with_tokenizer: also write the tokenizer files (False for weight-only checkpoints).

    Returns:
        `out_dir`.

    Raises:
        ModelLoadError: `source` cannot be opened, `dtype` is not a float type the loaders
            read, or `out_dir` already holds a model (nothing is overwritten).
    """
    from safetensors.torch import save_file

    if dtype not in _DTYPE_NAMES:
        raise ModelLoadError(f"unsupported export dtype {dtype}; use {list(_DTYPE_NAMES)}")
    out = Path(out_dir)
    if (out / "config.json").exists():
        raise ModelLoadError(f"{out} already holds a config.json; choose an empty directory")
    ckpt = open_checkpoint(source)
    tokenizer = None
    if with_tokenizer and ckpt.gguf is not None:
        tokenizer = Tokenizer.from_gguf(ckpt.gguf)
    elif with_tokenizer:
        tokenizer = Tokenizer.from_hf_dir(ckpt.path, ckpt.config.eos_token_ids)
    tensors = {
        name: t.to(dtype).contiguous()
        for name, t in ckpt.weights(progress=False)
        if not (name == "lm_head.weight" and ckpt.config.tie_word_embeddings)
    }
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.backend.save(str(out / "tokenizer.json"))
        _write_json(out / "tokenizer_config.json", tokenizer_config(tokenizer))
    _write_json(out / "generation_config.json", _generation_config(ckpt.config))
    _write_json(out / "config.json", hf_config(ckpt.config, dtype))  # last: marks it complete
    return out


def _generation_config(config: ModelConfig) -> dict[str, Any]:
    eos = list(config.eos_token_ids)
    out: dict[str, Any] = {"bos_token_id": config.bos_token_id}
    if eos:
        out["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    return {k: v for k, v in out.items() if v is not None}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


__all__ = ["export_hf", "hf_config", "tokenizer_config"]
