"""block_copy, gather_blocks, scatter_blocks: Triton against the reference, bit for bit."""

from __future__ import annotations

import pytest
import torch

import kvsaga.kernels as kernels
from kvsaga.kernels import reference

GUARD = 7.0


def _id(value: object) -> str | None:
    return str(value).removeprefix("torch.") if isinstance(value, torch.dtype) else None


def _tier(dtype, device, num_blocks=9, every_other=False):
    """A small tier tensor [blocks, layers, 2, block_size, heads, dim]; with every_other,
    a view of every other block of a bigger one (block stride 2x the block size)."""
    shape = (num_blocks * (2 if every_other else 1), 2, 2, 16, 2, 32)
    gen = torch.Generator().manual_seed(0)
    if dtype.is_floating_point:
        kv = torch.randn(shape, generator=gen).to(dtype)
    else:
        kv = torch.randint(0, 256, shape, generator=gen).to(dtype)
    kv = kv.to(device)
    return kv[::2] if every_other else kv


def _ids(values, device):
    return torch.tensor(values, dtype=torch.int64, device=device)


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.uint8]


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("every_other", [False, True], ids=["dense", "strided"])
def test_block_copy(triton_device, dtype, every_other):
    kv = _tier(dtype, triton_device, every_other=every_other)
    src, dst = _ids([4, 0, 8], triton_device), _ids([1, 7, 3], triton_device)
    expected = kv.clone()
    reference.block_copy(expected, src, dst)
    base = kv._base if every_other else None
    before = base.clone() if base is not None else None
    kernels.block_copy(kv, src, dst)
    assert torch.equal(kv, expected)
    if base is not None:  # blocks between the view's blocks are untouched
        assert torch.equal(base[1::2], before[1::2])


@pytest.mark.parametrize("dtype", DTYPES, ids=_id)
@pytest.mark.parametrize("every_other", [False, True], ids=["dense", "strided"])
def test_gather_then_scatter(triton_device, dtype, every_other):
    kv = _tier(dtype, triton_device, every_other=every_other)
    ids = _ids([5, 2, 8, 0], triton_device)
    staging = kernels.gather_blocks(kv, ids)
    assert staging.is_contiguous() and torch.equal(staging, reference.gather_blocks(kv, ids))
    # out= inside a bigger buffer: the margins keep their guard value.
    buf = torch.full((ids.shape[0] + 2, *kv.shape[1:]), GUARD, device=triton_device).to(dtype)
    guard = buf.clone()
    out = kernels.gather_blocks(kv, ids, out=buf[1:-1])
    assert out.data_ptr() == buf[1].data_ptr() and torch.equal(out, staging)
    assert torch.equal(buf[0], guard[0]) and torch.equal(buf[-1], guard[-1])

    dst = _ids([1, 3, 7, 6], triton_device)
    expected = kv.clone()
    reference.scatter_blocks(staging, expected, dst)
    kernels.scatter_blocks(staging, kv, dst)
    assert torch.equal(kv, expected)


def test_empty_id_lists(triton_device):
    kv = _tier(torch.float16, triton_device)
    before = kv.clone()
    none = _ids([], triton_device)
    kernels.block_copy(kv, none, none)
    assert kernels.gather_blocks(kv, none).shape == (0, *kv.shape[1:])
    kernels.scatter_blocks(kernels.gather_blocks(kv, none), kv, none)
    assert torch.equal(kv, before)
