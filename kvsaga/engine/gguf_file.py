"""Reading a GGUF file: metadata as Python values, tensors dequantized under HF names.

llama.cpp names tensors `blk.N.attn_q.weight` and, for the llama architecture, stores Q and K
rows permuted for its interleaved RoPE. `GGUFFile.weights()` maps the names back to HF Llama
names and undoes that permutation, so the model sees one checkpoint format.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kvsaga.engine.gguf_layout import check_gguf_layout
from kvsaga.engine.model_config import ModelConfig, ModelLoadError

_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "rope_freqs.weight": "rope_freqs.weight",
}
_PER_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_tensor_name(gguf_name: str) -> str:
    """HF Llama name of a llama.cpp tensor name; unknown names come back prefixed `gguf:`."""
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    m = _LAYER_NAME.fullmatch(gguf_name)
    if m and m.group(2) in _PER_LAYER:
        return f"model.layers.{m.group(1)}.{_PER_LAYER[m.group(2)]}.{m.group(3)}"
    return f"gguf:{gguf_name}"


def unpermute_rope_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation.

    llama.cpp's converter turns each head's rows from "rotate half" order (first half, second
    half) into interleaved pairs: `reshape(heads, 2, d/2, ...).swapaxes(1, 2)`. This swaps
    them back.

    Args:
        w: [num_heads * head_dim, ...] rows of Q or K (weight or bias).
        num_heads: query heads for Q, kv heads for K.

    Returns:
        Same shape, rows in HF order.
    """
    half = w.shape[0] // num_heads // 2
    return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _dequantizable() -> set[str]:
    """Names of the GGML types the installed `gguf` package can dequantize."""
    from gguf import quants

    names = {"F32", "F16"}
    traits = getattr(quants, "_type_traits", None)
    if traits:
        names |= {t.name for t in traits}
    else:  # older gguf: the common set, which it has had since 0.10
        names |= {
            "BF16",
            "Q4_0",
            "Q4_1",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
        }
    return names


class GGUFFile:
    """One GGUF file, memory-mapped; metadata is decoded on first use.

    Args:
        path: the .gguf file.

    Raises:
        ModelLoadError: the file is missing, not a GGUF file, or truncated (naming the first
            entry or tensor past its end).
    """

    def __init__(self, path: str | Path) -> None:
        from gguf import GGUFReader

        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"GGUF file not found: {self.path}")
        check_gguf_layout(self.path)
        try:
            self.reader = GGUFReader(str(self.path))
        except Exception as e:  # the reader raises ValueError/struct errors on junk
            raise ModelLoadError(f"{self.path} is not a readable GGUF file: {e}") from e

    @cached_property
    def metadata(self) -> dict[str, Any]:
        """Every metadata key, strings decoded, arrays as lists."""
        return {name: _field_value(field) for name, field in self.reader.fields.items()}

    @cached_property
    def config(self) -> ModelConfig:
        """The model architecture stated by the metadata."""
        names = {t.name for t in self.reader.tensors}
        rows = next(
            (int(t.shape[-1]) for t in self.reader.tensors if t.name == "token_embd.weight"), None
        )
        return ModelConfig.from_gguf_metadata(self.metadata, names, rows)

    @property
    def num_tensors(self) -> int:
        return len(self.reader.tensors)

    def check_types(self) -> None:
        """Raise ModelLoadError, before any tensor is read, if a tensor's type is unsupported."""
        supported = _dequantizable()
        bad = sorted({t.tensor_type.name for t in self.reader.tensors} - supported)
        if bad:
            raise ModelLoadError(
                f"{self.path.name}: unsupported GGUF quantization type(s) {bad}; "
                f"supported: {sorted(supported)}"
            )

    def weights(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (HF name, fp32 tensor) for every tensor, dequantized and un-permuted."""
        from gguf.quants import dequantize

        self.check_types()
        cfg = self.config
        permuted = self.metadata.get("general.architecture") == "llama"
        for t in self.reader.tensors:
            shape = tuple(int(d) for d in reversed(t.shape))  # GGUF lists ne0 (columns) first
            w = dequantize(t.data, t.tensor_type).reshape(shape)
            name = hf_tensor_name(t.name)
            if permuted and ".q_proj." in name:
                w = unpermute_rope_rows(w, cfg.num_heads)
            elif permuted and ".k_proj." in name:
                w = unpermute_rope_rows(w, cfg.num_kv_heads)
            if not w.flags.writeable:  # F32/F16 data are views of the read-only memmap
                w = w.copy()
            yield name, torch.from_numpy(w)


def _field_value(field: Any) -> Any:
    """A reader field as a Python value (str, int, float, bool, or a list of them)."""
    from gguf import GGUFValueType

    kind = field.types[0] if field.types else None
    if kind == GGUFValueType.ARRAY:
        item = field.types[-1]
        if item == GGUFValueType.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        if item == GGUFValueType.ARRAY or not field.data:
            return []
        return np.concatenate([field.parts[i] for i in field.data]).tolist()
    value = field.parts[field.data[0]]
    if kind == GGUFValueType.STRING:
        return bytes(value).decode("utf-8", errors="replace")
    if kind == GGUFValueType.BOOL:
        return bool(value[0])
    return value[0].item()
