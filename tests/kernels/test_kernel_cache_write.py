"""cache_write: Triton against the reference, bit for bit, on strided per-layer views."""

from __future__ import annotations

import pytest
import torch

import kvsaga.kernels as kernels
from kvsaga.kernels import reference
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
