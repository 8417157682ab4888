"""cache_write's slot layout held independently of the reference: the other cache_write
tests hold the Triton and C++ writes to `reference.cache_write`, so a layout bug shared by
all three (block and offset swapped, K and V crossed, heads permuted) would pass them. Here
each token's rows are looked up where the docs put them, slot s -> block s // block_size,
offset s % block_size, and every other element must keep its NaN (review s51 kernels:
checked and sound)."""

from __future__ import annotations

import pytest
import torch

import kvsaga.kernels as kernels
from kvsaga.kernels import inplace, reference
from kvsaga.kernels.args import CacheWriteArgs


def _write_reference(key, value, k_cache, v_cache, slots):
    reference.cache_write(CacheWriteArgs(key, value, k_cache, v_cache, slots))


def _write_cpp(key, value, k_cache, v_cache, slots):
    args = CacheWriteArgs(key, value, k_cache, v_cache, slots)
    assert inplace.supports_write(args)
    inplace.cache_write(args)


WRITERS = {"reference": _write_reference, "public": kernels.cache_write}
if inplace.available():
    WRITERS["cpp"] = _write_cpp


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("num_kv_heads,head_dim,block_size", [(1, 64, 16), (3, 40, 5),
                                                              (2, 128, 1)])
def test_each_token_lands_at_its_slot_and_nothing_else_changes(writer, dtype, num_kv_heads,
                                                               head_dim, block_size):
    gen = torch.Generator().manual_seed(1)
    num_blocks, num_tokens = (7 if block_size > 1 else 20), 11  # more slots than tokens
    kv = torch.full((num_blocks, 2, 2, block_size, num_kv_heads, head_dim), float("nan"),
                    dtype=dtype)
    qkv = torch.randn(num_tokens, 3 * num_kv_heads, head_dim, generator=gen).to(dtype)
    key, value = qkv[:, num_kv_heads:2 * num_kv_heads], qkv[:, 2 * num_kv_heads:]
    slots = torch.randperm(num_blocks * block_size, generator=gen)[:num_tokens]
    slots[[0, 5]] = -1  # skipped tokens
    WRITERS[writer](key, value, kv[:, 1, 0], kv[:, 1, 1], slots)
    written = torch.zeros(kv.shape[:4], dtype=torch.bool)  # [block, layer, K/V, offset]
    for t, s in enumerate(slots.tolist()):
        if s < 0:
            continue
        block, offset = s // block_size, s % block_size
        assert torch.equal(kv[block, 1, 0, offset], key[t]), f"token {t}: K not at slot {s}"
        assert torch.equal(kv[block, 1, 1, offset], value[t]), f"token {t}: V not at slot {s}"
        written[block, 1, :, offset] = True
    assert kv[~written].isnan().all(), "an element outside the new tokens' slots was written"
    assert int(written.sum()) == 2 * (num_tokens - 2)
