"""rope.rotate: the C++ in-place rotation gives apply_rope's bits; elsewhere apply_rope."""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.model_config import RopeScaling
from kvsaga.engine.rope import apply_rope, rope_cos_sin, rope_inv_freq, rotate
from kvsaga.kernels import inplace


def _qkv(t: int, heads: int, kv_heads: int, head_dim: int, dtype=torch.float32):
    """A fused projection output [T, (heads + 2 kv_heads) * head_dim], its Q+K part as a
    strided [T, heads + kv_heads, head_dim] view, and cos/sin of scattered positions."""
    gen = torch.Generator().manual_seed(t + head_dim)
    qkv = torch.randn(t, (heads + 2 * kv_heads) * head_dim, generator=gen).to(dtype)
    qk = qkv[:, : (heads + kv_heads) * head_dim].view(t, heads + kv_heads, head_dim)
    positions = torch.randint(0, 5000, (t,), generator=gen)
    inv_freq = rope_inv_freq(head_dim, 10000.0, RopeScaling())
    cos, sin = rope_cos_sin(positions, inv_freq, dtype)
    return qkv, qk, cos, sin


@pytest.mark.skipif(not inplace.available(), reason="kvsaga._paged_attn not built")
@pytest.mark.parametrize("t,heads,kv_heads,head_dim", [(1, 9, 3, 64), (37, 9, 3, 64),
                                                       (5, 4, 1, 40), (3, 2, 2, 128)])
def test_rotate_in_place_matches_apply_rope_bit_for_bit(t, heads, kv_heads, head_dim):
    qkv, qk, cos, sin = _qkv(t, heads, kv_heads, head_dim)
    want = apply_rope(qk, cos, sin)
    v_before = qkv[:, (heads + kv_heads) * head_dim:].clone()
    assert inplace.supports_rope(qk, cos, sin)
    got = rotate(qk, cos, sin)
    assert got.data_ptr() == qk.data_ptr(), "not rotated in place"
    assert torch.equal(got, want)
    assert torch.equal(qkv[:, (heads + kv_heads) * head_dim:], v_before), "V was touched"


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_rotate_elsewhere_is_apply_rope_and_leaves_x(dtype):
    qkv, qk, cos, sin = _qkv(4, 3, 1, 64, dtype)
    before = qk.clone()
    assert not inplace.supports_rope(qk, cos, sin)
    got = rotate(qk, cos, sin)
    assert torch.equal(got, apply_rope(before, cos, sin))
    assert torch.equal(qk, before)


def test_supports_rope_refuses_mismatched_tables():
    _, qk, cos, sin = _qkv(4, 3, 1, 64)
    assert not inplace.supports_rope(qk, cos[:3], sin[:3])
    assert not inplace.supports_rope(qk, cos.t().contiguous().t(), sin)
