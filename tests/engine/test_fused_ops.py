"""The C++ elementwise ops (kvsaga/engine/fused_ops.py) against the torch ops they replace.

Bounds: the residual add is torch's bits; the norm and SiLU x up within 4 float32 ulp of
each element's magnitude (measured when written: at most 2.9 ulp over these shapes), on
one row, decode and prefill row counts, and with the rows split over torch's team.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvsaga.engine import fused_ops
from kvsaga.engine.model import RMSNorm

pytestmark = pytest.mark.skipif(not fused_ops.available(), reason="kvsaga._fused_ops not built")

ULP = torch.finfo(torch.float32).eps
ROWS = [1, 3, 300, 2048]  # 2048 x 576 rows split over the team where there is one


def _assert_within_ulp(got: torch.Tensor, want: torch.Tensor, ulps: float = 4.0) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype
    err = (got - want).abs() / want.abs().clamp_min(1e-30)
    assert err.max().item() <= ulps * ULP, f"max error {err.max().item() / ULP:.2f} ulp"


@pytest.mark.parametrize("rows", ROWS)
def test_rms_norm_matches_torch(rows):
    gen = torch.Generator().manual_seed(rows)
    x, w = torch.randn(rows, 576, generator=gen) * 3, torch.randn(576, generator=gen)
    _assert_within_ulp(fused_ops.rms_norm(x, w, 1e-5), F.rms_norm(x, (576,), w, 1e-5))


@pytest.mark.parametrize("rows", ROWS)
def test_add_rms_norm_adds_in_place_with_torch_bits_then_normalises(rows):
    gen = torch.Generator().manual_seed(rows)
    x, res = torch.randn(rows, 576, generator=gen), torch.randn(rows, 576, generator=gen)
    w = torch.randn(576, generator=gen)
    want_sum = x + res
    out, got_res = fused_ops.add_rms_norm(x, res, w, 1e-6)
    assert got_res is res and torch.equal(res, want_sum)
    _assert_within_ulp(out, F.rms_norm(want_sum, (576,), w, 1e-6))


@pytest.mark.parametrize("rows", ROWS)
def test_silu_mul_matches_torch(rows):
    gen = torch.Generator().manual_seed(rows)
    gate_up = torch.randn(rows, 2 * 1536, generator=gen) * 4
    gate, up = gate_up.chunk(2, dim=-1)
    _assert_within_ulp(fused_ops.silu_mul(gate_up), F.silu(gate) * up)


def test_strided_rows_and_odd_widths():
    """Rows of a wider buffer (a view), a width that is no multiple of 16."""
    gen = torch.Generator().manual_seed(7)
    base = torch.randn(5, 100, generator=gen)
    x, w = base[:, :37], torch.randn(37, generator=gen)
    _assert_within_ulp(fused_ops.rms_norm(x, w, 1e-5), F.rms_norm(x, (37,), w, 1e-5))
    gu = torch.randn(4, 64, generator=gen)[:, :26]
    _assert_within_ulp(fused_ops.silu_mul(gu), F.silu(gu[:, :13]) * gu[:, 13:])


def test_zero_rows():
    w = torch.ones(8)
    out, res = fused_ops.add_rms_norm(torch.empty(0, 8), torch.empty(0, 8), w, 1e-5)
    assert out.shape == res.shape == (0, 8)
    assert fused_ops.silu_mul(torch.empty(0, 8)).shape == (0, 4)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="weight"):
        fused_ops.rms_norm(torch.randn(2, 8), torch.randn(7), 1e-5)
    with pytest.raises(ValueError, match="residual"):
        fused_ops.add_rms_norm(torch.randn(2, 8), torch.randn(3, 8), torch.randn(8), 1e-5)
    with pytest.raises(ValueError, match="gate_up"):
        fused_ops.silu_mul(torch.randn(2, 7))


def test_supports_only_fp32_cpu_with_contiguous_rows():
    x = torch.randn(2, 8)
    assert fused_ops.supports(x, torch.randn(8))
    assert not fused_ops.supports(x.double())
    assert not fused_ops.supports(x.t())


def test_rmsnorm_module_add_takes_the_fused_op_and_the_torch_path_alike(monkeypatch):
    """RMSNorm.add: the C++ call, and the torch path (x + residual written into x) give
    the same sum bit for bit and norms within the bound."""
    gen = torch.Generator().manual_seed(3)
    norm = RMSNorm(576, 1e-5, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        norm.weight.copy_(torch.randn(576, generator=gen))
    x, res = torch.randn(16, 576, generator=gen), torch.randn(16, 576, generator=gen)
    with torch.inference_mode():
        fused, fused_res = norm.add(x.clone(), res.clone())
        monkeypatch.setattr(fused_ops, "supports", lambda *t: False)
        plain, plain_res = norm.add(x.clone(), res.clone())
    assert torch.equal(fused_res, plain_res)
    _assert_within_ulp(fused, plain)
