"""Whole-block copies in Triton: `block_copy`, `gather_blocks` and `scatter_blocks`.

One kernel serves all three: it copies block `src_ids[i]` of `src` to block `dst_ids[i]`
of `dst`, where a block is `block_numel` contiguous elements at `id * stride` (a tier tensor
`[num_blocks, ...]` or a contiguous staging buffer). Grid (pairs, chunk programs); each
program strides over its block in `CHUNK`-element pieces. The copy moves bits (tensors are
viewed as same-width integers), so one compiled kernel serves every dtype of a width.
Block offsets are int64: a tier tensor passes 2^31 elements.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .spec import TRITON_TYPES, KernelSpec, jit_variant

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
_MAX_CHUNK_PROGRAMS = 1024


def copy_config(element_size: int) -> tuple[int, int, int]:
    """(CHUNK, num_warps, num_stages): 16 KiB per chunk; the launcher and the compile check
    use it. One stage: the same PTX as Triton's default of 3 (sm_80, sm_90), and the check
    compiles the warps and stages that are launched."""
    return 16384 // element_size, 8, 1


@triton.jit
def _copy_blocks_kernel(
    src_ptr,
    dst_ptr,
    src_ids_ptr,  # int64 [n]
    dst_ids_ptr,  # int64 [n]
    src_stride,  # elements between blocks of src
    dst_stride,
    block_numel,
    CHUNK: tl.constexpr,
):
    pair = tl.program_id(0)
    src = tl.load(src_ids_ptr + pair) * src_stride  # int64
    dst = tl.load(dst_ids_ptr + pair) * dst_stride
    offs = tl.arange(0, CHUNK)
    for start in range(tl.program_id(1) * CHUNK, block_numel, tl.num_programs(1) * CHUNK):
        mask = start + offs < block_numel
        x = tl.load(src_ptr + src + start + offs, mask=mask)
        tl.store(dst_ptr + dst + start + offs, x, mask=mask)


def _launch(
    src: torch.Tensor,
    dst: torch.Tensor,
    src_ids: torch.Tensor,
    dst_ids: torch.Tensor,
) -> None:
    n = src_ids.shape[0]
    block_numel = math.prod(src.shape[1:])
    if n == 0 or block_numel == 0:
        return
    bits = _BITS[src.element_size()]
    chunk, num_warps, num_stages = copy_config(src.element_size())
    grid = (n, min(triton.cdiv(block_numel, chunk), _MAX_CHUNK_PROGRAMS))
    _copy_blocks_kernel[grid](
        src.view(bits), dst.view(bits), src_ids, dst_ids, src.stride(0), dst.stride(0),
        block_numel, CHUNK=chunk, num_warps=num_warps, num_stages=num_stages,
    )


def _identity(n: int, device: torch.device) -> torch.Tensor:
    return torch.arange(n, dtype=torch.int64, device=device)


def block_copy(kv: torch.Tensor, src_block_ids: torch.Tensor, dst_block_ids: torch.Tensor) -> None:
    """Launch `block_copy`; arguments as `kvsaga.kernels.block_copy`, checked there."""
    _launch(kv, kv, src_block_ids, dst_block_ids)


def gather_blocks(
    kv: torch.Tensor, block_ids: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Launch `gather_blocks`; arguments as `kvsaga.kernels.gather_blocks`, checked there."""
    if out is None:
        out = torch.empty((block_ids.shape[0], *kv.shape[1:]), dtype=kv.dtype, device=kv.device)
    n = block_ids.shape[0]
    _launch(kv, out, block_ids, _identity(n, kv.device))
    return out


def scatter_blocks(staging: torch.Tensor, kv: torch.Tensor, block_ids: torch.Tensor) -> None:
    """Launch `scatter_blocks`; arguments as `kvsaga.kernels.scatter_blocks`, checked there."""
    n = block_ids.shape[0]
    _launch(staging, kv, _identity(n, kv.device), block_ids)


def compile_specs() -> list[KernelSpec]:
    """Every configuration the block copies can launch, and each one's variant for blocks
    of a multiple of 16 elements, a tier's usual case (see kvsaga/kernels/spec.py)."""
    specs = []
    for size, bits in _BITS.items():
        chunk, num_warps, num_stages = copy_config(size)
        ptr = "*" + TRITON_TYPES[bits]
        specs.append(
            KernelSpec(
                name=f"copy_blocks[{TRITON_TYPES[bits]}]",
                fn=_copy_blocks_kernel,
                pointers={
                    "src_ptr": ptr, "dst_ptr": ptr, "src_ids_ptr": "*i64", "dst_ids_ptr": "*i64",
                },
                constexprs={"CHUNK": chunk},
                num_warps=num_warps,
                num_stages=num_stages,
                # Not the strides or block_numel: a block of a tier [n, ...] may hold any
                # number of elements (a [n, 3] tier's: 3).
                divisible_by_16=("src_ptr", "dst_ptr", "src_ids_ptr", "dst_ids_ptr"),
            )
        )
        specs.append(jit_variant(specs[-1], "aligned",
                                 divisible=("src_stride", "dst_stride", "block_numel")))
    return specs
