"""In-place paged attention for CPU: the C++ kernel kvsaga._paged_attn (csrc/paged_attn.cpp).

The SDPA path (`sdpa.py`) copies each sequence's K/V out of the cache through its block
table in every layer; for decode that copy is most of the step (docs/architecture.md,
"Where a CPU step's time goes"). This kernel reads K/V where they lie, one call per layer
for every sequence it is given, the `group` query heads of a KV head together. fp32 only;
it is optional (built by setup.py where a C++17 compiler exists), and `available()` says
whether it was built.
"""

from __future__ import annotations

import os

import torch

from .args import PagedAttentionArgs

try:
    from kvsaga import _paged_attn
except ImportError:  # not built: the SDPA path runs everything
    _paged_attn = None


def _kernel_threads() -> int:
    """Threads the kernel may start: torch's count only where OpenMP's workers sleep.

    With OpenMP's default wait policy torch's workers spin for a while after each op, so
    threads this kernel starts compete with them for the cores: on 2 cores, 2 threads here
    made a 16-sequence decode batch slower than one (`python bench/generate.py --prompts
    mixed --peer none --threads 2`, against the SDPA path). With OMP_WAIT_POLICY=PASSIVE
    (kvsaga-serve sets it) the workers sleep and the kernel's threads run.
    """
    return torch.get_num_threads() if _OMP_PASSIVE else 1


# Read once, as OpenMP itself does when torch first starts its workers.
_OMP_PASSIVE = os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def available() -> bool:
    """Whether the C++ kernel was built."""
    return _paged_attn is not None


def supports(query: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    """Whether the kernel can run these tensors: built, CPU, fp32, K and V laid out alike."""
    return (
        _paged_attn is not None
        and query.device.type == "cpu"
        and query.dtype == k_cache.dtype == v_cache.dtype == torch.float32
        and k_cache.stride() == v_cache.stride()
        and k_cache.stride(-1) == 1
        and query.stride(-1) == 1
    )


def paged_attention(args: PagedAttentionArgs, out: torch.Tensor, seq_ids: list[int]) -> None:
    """Causal paged attention of the sequences `seq_ids` of the batch, written into `out`.

    Arguments as `kvsaga.kernels.paged_attention` (already checked there), with `out`
    required (rows of other sequences are left as they are) and `supports(...)` true.
    """
    if not seq_ids:
        return
    query, k_cache, v_cache = args.query, args.k_cache, args.v_cache
    tables = args.block_tables.to(torch.int32).contiguous()
    lens = args.seq_lens.to(torch.int32).contiguous()
    starts = args.query_start_loc.to(torch.int32).contiguous()
    ids = torch.tensor(seq_ids, dtype=torch.int32)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    _paged_attn.paged_attention(
        out.data_ptr(), query.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
        tables.data_ptr(), lens.data_ptr(), starts.data_ptr(), ids.data_ptr(),
        len(seq_ids), num_kv_heads, query.shape[1] // num_kv_heads, head_dim,
        k_cache.shape[1], tables.stride(0), query.stride(0), query.stride(1),
        out.stride(0), out.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        float(args.scale), _kernel_threads(),
    )
