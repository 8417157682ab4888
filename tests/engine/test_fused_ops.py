"""The C++ elementwise ops (kvsaga/engine/fused_ops.py) against the torch ops they replace.

Bounds: the residual add is torch's bits; the norm and SiLU x up within 4 float32 ulp of
each element's magnitude (measured when written: at most 2.9 ulp over these shapes), on
one row, decode and prefill row counts, with the rows split over torch's team, and for the
norm at widths 576, 8192 and 262144 (its sum of squares in double; torch's own fp32 sum
drifts from the exact one as the width grows, so the bound there is mostly torch's).
Bad input (dtype, device, layout, overlapping or grad-requiring tensors) is refused with a
ValueError before anything is written.
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

from kvsaga.engine import fused_ops
from kvsaga.engine.model import MLP, RMSNorm

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


@pytest.mark.parametrize("n", [576, 8192, 262144])
def test_rms_norm_stays_within_the_bound_on_wide_rows(n):
    gen = torch.Generator().manual_seed(n)
    x, w = torch.randn(3, n, generator=gen) * 3, torch.randn(n, generator=gen)
    _assert_within_ulp(fused_ops.rms_norm(x, w, 1e-5), F.rms_norm(x, (n,), w, 1e-5))
    res = torch.randn(3, n, generator=gen)
    out, res = fused_ops.add_rms_norm(x, res, w, 1e-5)
    _assert_within_ulp(out, F.rms_norm(res, (n,), w, 1e-5))


def test_bf16_is_refused():
    x, w = torch.randn(2, 8, dtype=torch.bfloat16), torch.randn(8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="x must be float32"):
        fused_ops.rms_norm(x, w, 1e-5)
    with pytest.raises(ValueError, match="weight must be float32"):
        fused_ops.rms_norm(x.float(), w, 1e-5)


def test_fp64_silu_mul_is_refused():
    with pytest.raises(ValueError, match="gate_up must be float32"):
        fused_ops.silu_mul(torch.randn(2, 8, dtype=torch.float64))


def test_transposed_x_is_refused():
    x = torch.randn(8, 2).t()
    with pytest.raises(ValueError, match="x must have its last dim contiguous"):
        fused_ops.rms_norm(x, torch.randn(8), 1e-5)
    res = torch.randn(2, 8)
    before = res.clone()
    with pytest.raises(ValueError, match="x must have its last dim contiguous"):
        fused_ops.add_rms_norm(x, res, torch.randn(8), 1e-5)
    assert torch.equal(res, before)


def test_a_tensor_off_the_cpu_is_refused():
    """A device tensor's pointer must never be read on the host (meta here; CUDA alike)."""
    res = torch.randn(2, 8)
    before = res.clone()
    with pytest.raises(ValueError, match="x must be on the CPU"):
        fused_ops.add_rms_norm(torch.empty(2, 8, device="meta"), res, torch.randn(8), 1e-5)
    assert torch.equal(res, before)
    with pytest.raises(ValueError, match="gate_up must be on the CPU"):
        fused_ops.silu_mul(torch.empty(2, 8, device="meta"))


def test_residual_with_overlapping_rows_is_refused_and_not_written():
    row = torch.randn(1, 8)
    before = row.clone()
    # row stride 0: the add would land three times in one row
    with pytest.raises(ValueError, match="residual is written in place"):
        fused_ops.add_rms_norm(torch.randn(3, 8), row.expand(3, 8), torch.randn(8), 1e-5)
    assert torch.equal(row, before)


def test_residual_sharing_memory_with_x_or_weight_is_refused_and_not_written():
    buf = torch.randn(3, 8)
    before = buf.clone()
    with pytest.raises(ValueError, match="residual shares memory with x"):
        fused_ops.add_rms_norm(buf, buf, torch.randn(8), 1e-5)
    base = torch.randn(4, 8)
    with pytest.raises(ValueError, match="residual shares memory with x"):
        fused_ops.add_rms_norm(base[1:], base[:3], torch.randn(8), 1e-5)
    with pytest.raises(ValueError, match="residual shares memory with weight"):
        fused_ops.add_rms_norm(torch.randn(3, 8), buf, buf[1], 1e-5)
    assert torch.equal(buf, before)


def test_tensors_requiring_grad_fall_back_to_torch_while_grad_is_enabled():
    x, w = torch.randn(2, 8), torch.randn(8, requires_grad=True)
    assert not fused_ops.supports(x, w)
    with pytest.raises(ValueError, match="weight requires grad"):
        fused_ops.rms_norm(x, w, 1e-5)
    with torch.no_grad():
        assert fused_ops.supports(x, w)
    norm = RMSNorm(8, 1e-5, torch.float32, torch.device("cpu"))
    norm.weight = torch.nn.Parameter(torch.randn(8))
    x = torch.randn(2, 8, requires_grad=True) * 2  # a sublayer's output: not a leaf
    out, res = norm.add(x, torch.randn(2, 8))
    out.sum().backward()  # the torch path kept the graph
    assert norm.weight.grad is not None and res.grad_fn is not None


def test_add_rms_norm_bumps_the_residual_version():
    res = torch.randn(2, 8)
    version = res._version
    fused_ops.add_rms_norm(torch.randn(2, 8), res, torch.randn(8), 1e-5)
    assert res._version == version + 1


def test_mlp_takes_3d_input_through_torch():
    cfg = types.SimpleNamespace(hidden_size=8, intermediate_size=12)
    mlp = MLP(cfg, torch.float32, torch.device("cpu"))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    x = torch.randn(2, 3, 8, generator=gen)
    with torch.inference_mode():
        got = mlp.forward(x)
        gate, up = F.linear(x, mlp.gate_up_proj).chunk(2, dim=-1)
        want = F.linear(F.silu(gate) * up, mlp.down_proj)
    torch.testing.assert_close(got, want)


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


def test_the_model_asks_once_a_pass_and_not_where_a_norm_weight_is_not_fp32(monkeypatch):
    """`StepArgs.fused`: True for an fp32 CPU model (then no per-call `supports` in the
    pass), None (each call asks, and the torch ops run) when one norm weight or the
    embedding output is fp64."""
    from kvsaga.engine.model import LlamaForCausalLM
    from kvsaga.engine.model_config import ModelConfig

    from .helpers import scale_init

    cfg = ModelConfig(architecture="llama", vocab_size=50, hidden_size=64, intermediate_size=96,
                      num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)
    model = LlamaForCausalLM(cfg)
    scale_init(model, seed=3)
    x = torch.randn(3, 64)
    assert model._fused(x) is True
    asked = []
    real = fused_ops.supports
    monkeypatch.setattr(fused_ops, "supports", lambda *t: asked.append(1) or real(*t))
    model._fused(x)
    assert len(asked) == 1
    model.layers[1].post_attn_norm.weight.data = model.layers[1].post_attn_norm.weight.double()
    assert model._fused(x) is None
    assert model._fused(x.double()) is None
