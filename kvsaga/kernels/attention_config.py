"""The Triton paged-attention kernels' launch configurations (attention.py): tile sizes,
warps and pipeline stages per head size and dtype, and the decode split-K rule's constants.
Plain Python, so the launcher and the ahead-of-time compile check (compile_specs) read the
same choices."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Decode splits per token of context: a row takes at most one split per started 256
# tokens (ceil(seq_len / 256)), as shorter partitions cost more in the reduce than their
# parallelism buys. Rounding up lets a row just past a multiple of 256 take one more,
# shorter partition (257 tokens: 192 + 65); see `_row_partition`.
_MIN_PARTITION = 256
_PROGRAMS_PER_SM = 4  # decode split-K: programs per SM the split count aims for


@dataclass(frozen=True)
class DecodeConfig:
    """Constexprs and launch options of the decode kernels."""

    BLOCK_H: int  # query heads per program (>= 16 for tl.dot)
    BLOCK_N: int  # tokens per K/V tile
    num_warps: int
    num_stages: int
    reduce_num_warps: int
    reduce_num_stages: int


@dataclass(frozen=True)
class PrefillConfig:
    """Constexprs and launch options of the prefill/extend kernel."""

    BLOCK_M: int  # query tokens per program
    BLOCK_N: int  # tokens per K/V tile
    num_warps: int
    num_stages: int


def decode_config(head_dim: int, dtype: torch.dtype) -> DecodeConfig:
    """The decode kernels' configuration; the launcher and the compile check both use it."""
    big = head_dim * dtype.itemsize  # bytes of one K row
    block_n = 64 if big <= 256 else 32
    return DecodeConfig(
        BLOCK_H=16,
        BLOCK_N=block_n,
        num_warps=4,
        num_stages=2 if big <= 512 else 1,
        reduce_num_warps=1 if head_dim <= 64 else 4,
        reduce_num_stages=1,  # the same PTX as Triton's default of 3 (sm_80, sm_90)
    )


def prefill_config(head_dim: int, dtype: torch.dtype) -> PrefillConfig:
    """The prefill/extend kernel's configuration; the launcher and the compile check use it."""
    row = head_dim * dtype.itemsize
    if row <= 128:
        return PrefillConfig(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3)
    if row <= 256:
        return PrefillConfig(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=2)
    if row <= 512:
        return PrefillConfig(BLOCK_M=64, BLOCK_N=32, num_warps=4, num_stages=2)
    return PrefillConfig(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1)
