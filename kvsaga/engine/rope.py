"""Rotary position embedding (RoPE) in the "rotate half" layout that HF Llama checkpoints use.

Inverse frequencies are computed once in fp32, with the `linear` or `llama3` rescale applied;
cos/sin are computed per batch from the positions, so there is no table to outgrow.
"""

from __future__ import annotations

import math

import torch

from kvsaga.engine.model_config import RopeScaling
from kvsaga.kernels import inplace


def rope_inv_freq(
    head_dim: int,
    theta: float,
    scaling: RopeScaling,
    freq_factors: torch.Tensor | None = None,
) -> torch.Tensor:
    """Inverse frequencies of the rotary embedding.

    Args:
        head_dim: width of one head (even).
        theta: RoPE base.
        scaling: the rescale to apply ("default", "linear", "llama3").
        freq_factors: optional fp32 [head_dim // 2] divisors (llama.cpp's `rope_freqs`
            tensor, how GGUF files store Llama 3.1 scaling).

    Returns:
        fp32 [head_dim // 2].
    """
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    if scaling.rope_type == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.rope_type == "llama3":
        inv_freq = _llama3_rescale(inv_freq, scaling)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.float().cpu()
    return inv_freq


def _llama3_rescale(inv_freq: torch.Tensor, s: RopeScaling) -> torch.Tensor:
    """Llama 3.1: long wavelengths slow down by `factor`, short ones stay, the band between
    is interpolated smoothly."""
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    in_band = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(in_band, smoothed, scaled)


def rope_cos_sin(
    positions: torch.Tensor, inv_freq: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair.

    Args:
        positions: int [T].
        inv_freq: fp32 [head_dim // 2] on the positions' device.
        dtype: dtype of the queries and keys they will rotate.

    Returns:
        (cos, sin), each [T, head_dim // 2] in `dtype`.
    """
    angles = positions.float()[:, None] * inv_freq[None, :]  # [T, hd/2] fp32
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate heads by their positions ("rotate half": the pairs are (i, i + head_dim/2)).

    Args:
        x: [T, num_heads, head_dim].
        cos: [T, head_dim // 2].
        sin: [T, head_dim // 2].

    Returns:
        [T, num_heads, head_dim], a new tensor.
    """
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rope(x, cos, sin)`, in place where the C++ kernel can (fp32 on CPU: one call
    instead of six torch ops and a copy, each a parallel region for the engine thread to
    wait on), else as a new tensor. Use the result, not x: x changes only in the first case.
    """
    if inplace.supports_rope(x, cos, sin):
        return inplace.rope_(x, cos, sin)
    return apply_rope(x, cos, sin)
