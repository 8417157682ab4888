"""`cache_write` in Triton: scatter one layer's new K and V rows into their cache slots.

Grid (num_tokens, head chunks): a program copies `BLOCK_H` KV heads of one token's K and V
row into slot `slot_mapping[token]` (skipped when -1). The copy moves bits: tensors are
viewed as same-width integers, so one compiled kernel serves fp16 and bf16 (and the
interpreter's bf16 gaps do not apply). Slot and block offsets are int64.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .args import CacheWriteArgs
from .spec import HEAD_DIMS, TRITON_TYPES, KernelSpec, check_head_dim, jit_variant

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32}


def write_config(head_dim: int) -> tuple[int, int, int]:
    """(BLOCK_H, num_warps, num_stages) for a head_dim; the launcher and the compile check
    use it. One stage: the same PTX as Triton's default of 3 (sm_80, sm_90), and the check
    compiles the warps and stages that are launched."""
    return max(1, 1024 // head_dim), 4 if head_dim >= 64 else 2, 1


@triton.jit
def _cache_write_kernel(
    key_ptr,  # [num_tokens, num_kv_heads, HEAD_DIM]
    value_ptr,
    k_cache_ptr,  # [num_blocks, block_size, num_kv_heads, HEAD_DIM] (strided)
    v_cache_ptr,
    slot_mapping_ptr,  # int64 [num_tokens]
    num_kv_heads,
    block_size,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_kcb,
    stride_kct,
    stride_kch,
    stride_vcb,
    stride_vct,
    stride_vch,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    token = tl.program_id(0).to(tl.int64)
    heads = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    slot = tl.load(slot_mapping_ptr + token)
    # A skipped token (-1) masks every head off (tl.where: scalar & tensor masks misbehave
    # under the interpreter).
    mask = (heads < tl.where(slot >= 0, num_kv_heads, 0))[:, None]
    block = slot // block_size
    offset = slot % block_size
    d = tl.arange(0, HEAD_DIM)[None, :]
    k = tl.load(key_ptr + token * stride_kt + heads[:, None] * stride_kh + d, mask=mask)
    v = tl.load(value_ptr + token * stride_vt + heads[:, None] * stride_vh + d, mask=mask)
    k_row = block * stride_kcb + offset * stride_kct + heads[:, None] * stride_kch
    v_row = block * stride_vcb + offset * stride_vct + heads[:, None] * stride_vch
    tl.store(k_cache_ptr + k_row + d, k, mask=mask)
    tl.store(v_cache_ptr + v_row + d, v, mask=mask)


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.view(_BITS[x.element_size()])


def cache_write(args: CacheWriteArgs) -> None:
    """Launch `cache_write`; arguments as `kvsaga.kernels.cache_write`, checked there."""
    key, value, k_cache, v_cache = args.key, args.value, args.k_cache, args.v_cache
    num_tokens, num_kv_heads, head_dim = key.shape
    check_head_dim(head_dim)
    if num_tokens == 0:
        return
    block_h, num_warps, num_stages = write_config(head_dim)
    grid = (num_tokens, triton.cdiv(num_kv_heads, block_h))
    _cache_write_kernel[grid](
        _bits(key), _bits(value), _bits(k_cache), _bits(v_cache), args.slot_mapping,
        num_kv_heads, k_cache.shape[1],
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HEAD_DIM=head_dim, BLOCK_H=block_h, num_warps=num_warps, num_stages=num_stages,
    )


def compile_specs() -> list[KernelSpec]:
    """Every configuration `cache_write` can launch, and for head_dim 128 the variant of a
    block size that is a multiple of 16 (see kvsaga/kernels/spec.py)."""
    specs = []
    for bits in (torch.int16, torch.int32):
        ptr = "*" + TRITON_TYPES[bits]
        for head_dim in HEAD_DIMS:
            block_h, num_warps, num_stages = write_config(head_dim)
            specs.append(
                KernelSpec(
                    name=f"cache_write[{TRITON_TYPES[bits]}, head_dim={head_dim}]",
                    fn=_cache_write_kernel,
                    pointers={
                        "key_ptr": ptr, "value_ptr": ptr, "k_cache_ptr": ptr,
                        "v_cache_ptr": ptr, "slot_mapping_ptr": "*i64",
                    },
                    constexprs={"HEAD_DIM": head_dim, "BLOCK_H": block_h},
                    num_warps=num_warps,
                    num_stages=num_stages,
                    divisible_by_16=(
                        "key_ptr", "value_ptr", "k_cache_ptr", "v_cache_ptr", "slot_mapping_ptr",
                        "stride_kt", "stride_kh", "stride_vt", "stride_vh", "stride_kcb",
                        "stride_kct", "stride_kch", "stride_vcb", "stride_vct", "stride_vch",
                    ),
                )
            )
            if head_dim == 128:
                specs.append(jit_variant(specs[-1], "aligned", divisible=("block_size",)))
    return specs
