"""Shared set-up of the small-rows GEMM tests (test_small_gemm.py, test_small_gemm_groups.py):
the extension (None where it was not built), the per-ISA parametrization, the seeded case
and the check against a float64 reference and torch's F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

try:
    from kvsaga import _small_gemm
except ImportError:
    _small_gemm = None

NOT_BUILT = pytest.mark.skipif(_small_gemm is None, reason="kvsaga._small_gemm not built")


def supported(avx512: int, avx2: int) -> list[int]:
    """The values among (avx512: AVX-512, avx2: AVX2 + FMA) whose ISA this CPU runs."""
    if _small_gemm is None:
        return []
    return [v for v, ok in ((avx512, _small_gemm.has_avx512()), (avx2, _small_gemm.has_avx2()))
            if ok]


def per_isa(name: str, avx512: int, avx2: int):
    """Parametrize `name` over supported(avx512, avx2); one skipped case where none is."""
    return pytest.mark.parametrize(name, supported(avx512, avx2) or [pytest.param(
        0, marks=pytest.mark.skip(reason="no AVX-512 or AVX2 + FMA on this CPU"))])


def case(m: int, n: int, k: int, bias: bool, seed: int = 0):
    """Seeded x [m, k], weight [n, k] (scaled 0.05) and bias [n] (or None)."""
    g = torch.Generator().manual_seed(seed * 1000 + m * 7 + n + k)
    w = torch.randn(n, k, generator=g) * 0.05
    b = torch.randn(n, generator=g) if bias else None
    x = torch.randn(m, k, generator=g)
    return x, w, b


def check(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None):
    """got is fp32, within 1e-5 of the largest |output| (+1e-6) of a float64 reference and
    close to F.linear."""
    want = x.double() @ w.double().T + (0 if b is None else b.double())
    tol = 1e-5 * want.abs().max().item() + 1e-6
    assert got.dtype == torch.float32
    assert (got.double() - want).abs().max().item() <= tol
    torch.testing.assert_close(got, F.linear(x, w, b), atol=tol, rtol=1e-5)
