"""The model's torch-path norm gives the bits of the composite ops it replaces (the C++
ops that run instead where built: tests/engine/test_fused_ops.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvsaga.engine import fused_ops
from kvsaga.engine.model import RMSNorm


@pytest.mark.parametrize("rows", [1, 16, 300])
def test_fp32_rmsnorm_with_its_weight_fused_equals_weight_times_norm(rows, monkeypatch):
    """Without the C++ ops, fp32 RMSNorm is one F.rms_norm with the weight; it must equal
    the weight times the plain normalisation bit for bit (the form the other dtypes use)."""
    monkeypatch.setattr(fused_ops, "supports", lambda *t: False)
    gen = torch.Generator().manual_seed(rows)
    norm = RMSNorm(576, 1e-5, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        norm.weight.copy_(torch.randn(576, generator=gen))
    x = torch.randn(rows, 576, generator=gen) * 3
    with torch.inference_mode():
        got = norm(x)
    assert torch.equal(got, norm.weight * F.rms_norm(x, (576,), eps=1e-5))


def test_bf16_rmsnorm_normalises_in_fp32():
    gen = torch.Generator().manual_seed(0)
    norm = RMSNorm(64, 1e-6, torch.bfloat16, torch.device("cpu"))
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64, generator=gen))
    x = torch.randn(5, 64, generator=gen).to(torch.bfloat16)
    with torch.inference_mode():
        got = norm(x)
    want = norm.weight * F.rms_norm(x.float(), (64,), eps=1e-6).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
