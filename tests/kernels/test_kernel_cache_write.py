"""cache_write: Triton against the reference, bit for bit, on strided per-layer views."""

from __future__ import annotations

import pytest
import torch

import kvsaga.kernels as kernels
from kvsaga.kernels import inplace, reference
from kvsaga.kernels.args import CacheWriteArgs


def _id(value: object) -> str | None:
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else None


def _inputs(dtype, num_kv_heads, head_dim, block_size, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    num_blocks, num_tokens = 6, 13
    kv = torch.full((num_blocks, 2, 2, block_size, num_kv_heads, head_dim), float("nan"),
                    dtype=dtype)
    # key and value as strided views of a fused qkv projection: [tokens, 3 * heads, dim].
    qkv = torch.randn(num_tokens, 3 * num_kv_heads, head_dim, generator=gen).to(dtype)
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[2, 7]] = -1  # padding tokens
    return kv.to(device), qkv.to(device), slots.to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=_id)
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size", [(1, 64, 16), (3, 128, 32),
                                                              (10, 128, 16), (8, 64, 32)])
def test_cache_write_matches_reference(triton_device, dtype, num_kv_heads, head_dim, block_size):
    kv, qkv, slots = _inputs(dtype, num_kv_heads, head_dim, block_size, triton_device)
    key, value = qkv[:, num_kv_heads : 2 * num_kv_heads], qkv[:, 2 * num_kv_heads :]
    expected = kv.clone()
    reference.cache_write(CacheWriteArgs(key, value, expected[:, 1, 0], expected[:, 1, 1], slots))
    kernels.cache_write(key, value, kv[:, 1, 0], kv[:, 1, 1], slots)
    # NaN everywhere the write must not reach (layer 0, other slots) stays NaN.
    torch.testing.assert_close(kv, expected, atol=0, rtol=0, equal_nan=True)
    assert kv[:, 0].isnan().all()


def test_cache_write_all_padding_and_empty(triton_device):
    kv, qkv, slots = _inputs(torch.float16, 2, 64, 16, triton_device)
    key, value = qkv[:, :2], qkv[:, 2:4]
    kernels.cache_write(key, value, kv[:, 0, 0], kv[:, 0, 1], torch.full_like(slots, -1))
    kernels.cache_write(key[:0], value[:0], kv[:, 0, 0], kv[:, 0, 1], slots[:0])
    assert kv.isnan().all()


needs_inplace = pytest.mark.skipif(not inplace.available(), reason="kvsaga._paged_attn not built")


@needs_inplace
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=_id)
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size", [(1, 64, 16), (3, 128, 32),
                                                              (3, 40, 16)])
def test_cpu_cache_write_is_the_cpp_copy_and_matches_reference(monkeypatch, dtype,
                                                               num_kv_heads, head_dim,
                                                               block_size):
    """On CPU the dispatcher sends the write to the C++ row copy; bit for bit the
    reference's, on strided views of a NaN-poisoned tier."""
    calls = []
    monkeypatch.setattr(inplace, "cache_write",
                        lambda args, real=inplace.cache_write: calls.append(1) or real(args))
    kv, qkv, slots = _inputs(dtype, num_kv_heads, head_dim, block_size, "cpu")
    key, value = qkv[:, num_kv_heads : 2 * num_kv_heads], qkv[:, 2 * num_kv_heads :]
    expected = kv.clone()
    reference.cache_write(CacheWriteArgs(key, value, expected[:, 1, 0], expected[:, 1, 1], slots))
    kernels.cache_write(key, value, kv[:, 1, 0], kv[:, 1, 1], slots)
    assert calls == [1]
    torch.testing.assert_close(kv, expected, atol=0, rtol=0, equal_nan=True)
    assert kv[:, 0].isnan().all()


@needs_inplace
@pytest.mark.parametrize("bad", [-2, 6 * 16])
def test_cpp_cache_write_refuses_a_bad_slot_unchecked_and_writes_nothing(bad):
    """Even with validation off (layers after the first), a slot out of range raises before
    any row is written."""
    kv, qkv, slots = _inputs(torch.float32, 2, 64, 16, "cpu")
    slots[-1] = bad
    key, value = qkv[:, 2:4], qkv[:, 4:]
    with pytest.raises(ValueError, match=rf"slot_mapping\[12\] = {bad} is out of range"):
        kernels.cache_write(key, value, kv[:, 1, 0], kv[:, 1, 1], slots, validate=False)
    assert kv.isnan().all()


def test_torch_mode_keeps_the_reference_write(monkeypatch):
    monkeypatch.setenv("KVSAGA_KERNELS", "torch")
    monkeypatch.setattr(inplace, "cache_write", lambda args: pytest.fail("C++ path taken"))
    kv, qkv, slots = _inputs(torch.float32, 2, 64, 16, "cpu")
    kernels.cache_write(qkv[:, 2:4], qkv[:, 4:], kv[:, 1, 0], kv[:, 1, 1], slots)
    assert not kv[:, 1].isnan().all()
