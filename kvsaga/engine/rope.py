"""Rotary position embedding (RoPE) in the "rotate half" layout that HF Llama checkpoints use.

Inverse frequencies are computed once in fp32, with the `linear` or `llama3` rescale applied;
cos/sin are computed per batch from the positions, so there is no table to outgrow.
"""

from __future__ import annotations

import math

import torch

from kvsaga.engine.model_config import ModelLoadError, RopeScaling
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
    inv_freq = _plain_inv_freq(head_dim, theta)
    if scaling.rope_type == "linear":
        inv_freq = inv_freq / scaling.factor
    elif scaling.rope_type == "llama3":
        inv_freq = _llama3_rescale(inv_freq, scaling)
    if freq_factors is not None:
        inv_freq = inv_freq / freq_factors.float().cpu()
    return inv_freq


def _plain_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    return 1.0 / (theta**exponents)


# How far stored divisors may sit from the ones recomputed from llama3 parameters: fp32
# rounding of the stored values, plus converters that compute the base frequencies in fp64.
LLAMA3_FACTORS_RTOL = 1e-6


def llama3_freq_factors(head_dim: int, theta: float, scaling: RopeScaling) -> torch.Tensor:
    """The per-frequency divisors (llama.cpp's `rope_freqs`) that apply `scaling`, fp64
    [head_dim // 2]: plain inverse frequencies over the llama3-rescaled ones."""
    plain = _plain_inv_freq(head_dim, theta).double()
    return plain / _llama3_rescale(plain, scaling)


def llama3_from_freq_factors(
    factors: torch.Tensor, head_dim: int, theta: float
) -> RopeScaling:
    """The llama3 scaling whose divisors are `factors`, for consumers that take parameters.

    llama.cpp stores Llama 3.1 scaling only as divisors. They fix `factor` (the largest one)
    and, through the divisors strictly between 1 and it (a line in 1 / wavelength), the two
    wavelengths where the band starts and ends. The three llama3 numbers behind those are
    fixed only up to a common scale that changes no frequency; this picks
    `original_max_position_embeddings` as the integer nearest the long band edge. With a
    single divisor inside the band, Llama 3's own band factors (1 and 4) are assumed; either
    way the result stands only if it gives back every divisor.

    Raises:
        ModelLoadError: the divisors are not llama3's (recomputed from the parameters found,
            they differ by more than `LLAMA3_FACTORS_RTOL`), or none lies inside the band.
    """
    d = factors.detach().double().cpu().reshape(-1)
    if d.numel() != head_dim // 2:
        raise ModelLoadError(
            f"rope_freqs has shape {tuple(factors.shape)}, expected ({head_dim // 2},)"
        )
    if bool((d == 1).all()):
        return RopeScaling()
    factor = float(d.max())
    band = (d > 1 + LLAMA3_FACTORS_RTOL) & (d < factor * (1 - LLAMA3_FACTORS_RTOL))
    smooth = (1 / d[band] - 1 / factor) / (1 - 1 / factor)
    inv_wavelen = _plain_inv_freq(head_dim, theta).double()[band] / (2 * math.pi)
    edges = _band_edges(inv_wavelen, smooth)
    if edges is not None:
        original = max(1, round(edges[0]))
        for scaling in _llama3_candidates(factor, original, *edges):
            found = llama3_freq_factors(head_dim, theta, scaling)
            if torch.allclose(found, d, rtol=LLAMA3_FACTORS_RTOL, atol=0):
                return scaling
    raise ModelLoadError(
        f"rope_freqs ({d.numel()} divisors from {float(d.min()):g} to {factor:g}, "
        f"{int(band.sum())} inside the band) are not the divisors of any llama3 rope scaling"
    )


def _band_edges(inv_wavelen: torch.Tensor, smooth: torch.Tensor) -> tuple[float, float] | None:
    """(long, short) wavelengths where llama3's interpolation weight `smooth`, linear in
    1 / wavelength, is 0 and 1; None when the points do not fix them."""
    if len(smooth) == 1:  # one point: Llama 3's low/high factors 1 and 4
        original = (3 * float(smooth[0]) + 1) / float(inv_wavelen[0])
        return original, original / 4
    if len(smooth) < 2:
        return None
    design = torch.stack([inv_wavelen, torch.ones_like(inv_wavelen)], 1)
    slope, intercept = torch.linalg.lstsq(design, smooth[:, None]).solution[:, 0].tolist()
    if not (slope > 0 and intercept < 0):
        return None
    return slope / -intercept, slope / (1 - intercept)


def _llama3_candidates(
    factor: float, original: int, long_edge: float, short_edge: float
) -> list[RopeScaling]:
    """The parameters with the given band edges: rounded to 6 digits first (fp32 storage
    blurs 8 into 8.0000001), then exact."""
    exact = (factor, original / long_edge, original / short_edge)
    out = []
    for f, low, high in ([float(f"{v:.6g}") for v in exact], exact):
        try:
            out.append(RopeScaling("llama3", f, low, high, original))
        except ModelLoadError:
            continue
    return out


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
