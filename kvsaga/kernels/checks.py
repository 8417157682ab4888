"""Argument checks shared by the kernel dispatcher and the Triton launchers.

Two levels:
- structural (always): types, dtypes, ranks, shapes, strides, devices. Reads only tensor
  metadata, so it never synchronises with the GPU and is safe under CUDA-graph capture.
- full (`full=True`): also the values of index tensors (slots, block ids, sequence
  lengths) against the cache's bounds. This copies them to the host, i.e. a device sync on
  CUDA. The dispatcher turns it on by default for CPU tensors only (see `kvsaga.kernels`).

Wrong types and dtypes raise TypeError; wrong shapes, strides, devices and values raise
ValueError. Each message names the argument and the offending value.
"""

from __future__ import annotations

import torch

from .args import CacheWriteArgs, PagedAttentionArgs

KV_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def _dtype(name: str, x: torch.Tensor, allowed: tuple[torch.dtype, ...]) -> None:
    if x.dtype not in allowed:
        names = ", ".join(str(d).removeprefix("torch.") for d in allowed)
        raise TypeError(f"{name}.dtype is {x.dtype}; expected one of {names}")


def _ndim(name: str, x: torch.Tensor, ndim: int, what: str) -> None:
    if x.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D {what}, got shape {tuple(x.shape)}")


def _same_device(name: str, x: torch.Tensor, device: torch.device, ref: str) -> None:
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but {ref} is on {device}")


def _last_dim_contiguous(name: str, x: torch.Tensor) -> None:
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        raise ValueError(
            f"{name} must be contiguous in its last dim, got strides {tuple(x.stride())}"
        )


def _no_self_overlap(name: str, x: torch.Tensor) -> None:
    """Refuse a tensor that is written to and whose elements may share memory (an
    `expand`ed one, stride 0): the kernels would write rows or heads on top of each other.
    Taken in order of stride, each dim of size > 1 must step past all the elements of the
    dims inside it, which rules out any overlap."""
    span = 1  # elements covered by the dims already taken, in strides of the next one
    for stride, size in sorted((x.stride(i), x.shape[i]) for i in range(x.dim())
                               if x.shape[i] > 1):
        if stride < span:
            raise ValueError(
                f"{name} overlaps itself (shape {tuple(x.shape)}, strides "
                f"{tuple(x.stride())}): each element must have its own memory"
            )
        span += (size - 1) * stride


def _contiguous_vector(name: str, x: torch.Tensor) -> None:
    """A 1-D index tensor must be contiguous: the Triton kernels read entry i at
    `data_ptr + i` (they take no stride for it), so a strided view such as `meta[:, 0]` is
    refused on every backend, CPU and CUDA alike, rather than read wrongly on one of them.
    (Length 0 or 1 is contiguous whatever its stride, and reads the same either way.)"""
    if not x.is_contiguous():
        raise ValueError(
            f"{name} must be contiguous (stride 1), got stride {tuple(x.stride())} for shape "
            f"{tuple(x.shape)}; pass {name}.contiguous()"
        )


def _check_tier(kv: object) -> None:
    """A tensor of blocks (`kv[i]` is block i), each block contiguous in memory."""
    kv = _tensor("kv", kv)
    if kv.dim() < 1:
        raise ValueError("kv must have a leading block dim, got a 0-D tensor")
    if kv.shape[0] > 0 and not kv[0].is_contiguous():
        raise ValueError(
            "kv must be contiguous within each block (dims 1..), got shape "
            f"{tuple(kv.shape)} with strides {tuple(kv.stride())}"
        )


def _check_cache_pair(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    _tensor("k_cache", k_cache)
    _tensor("v_cache", v_cache)
    _ndim("k_cache", k_cache, 4, "[num_blocks, block_size, num_kv_heads, head_dim]")
    if k_cache.shape[1] == 0:
        raise ValueError(f"k_cache has block_size 0 (shape {tuple(k_cache.shape)}); "
                         "a block holds at least one token")
    if v_cache.shape != k_cache.shape:
        raise ValueError(
            f"v_cache shape {tuple(v_cache.shape)} != k_cache shape {tuple(k_cache.shape)}"
        )
    _dtype("k_cache", k_cache, KV_DTYPES)
    if v_cache.dtype != k_cache.dtype:
        raise TypeError(f"v_cache.dtype {v_cache.dtype} != k_cache.dtype {k_cache.dtype}")
    _same_device("v_cache", v_cache, k_cache.device, "k_cache")
    _last_dim_contiguous("k_cache", k_cache)
    _last_dim_contiguous("v_cache", v_cache)


def _index_vector(name: str, x: object, length: int | None, device: torch.device) -> None:
    x = _tensor(name, x)
    _dtype(name, x, (torch.int64,))
    _ndim(name, x, 1, "tensor of ids")
    if length is not None and x.shape[0] != length:
        raise ValueError(f"{name} has {x.shape[0]} entries, expected {length}")
    _same_device(name, x, device, "the cache")
    _contiguous_vector(name, x)


def _ids_in_range(name: str, ids: torch.Tensor, num_blocks: int) -> None:
    if ids.numel() == 0:
        return
    bad = (ids < 0) | (ids >= num_blocks)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name}[{i}] = {int(ids[i])} is out of range for a cache of {num_blocks} blocks"
        )


def _ids_distinct(name: str, ids: torch.Tensor) -> None:
    if torch.unique(ids).numel() != ids.numel():
        values, counts = torch.unique(ids, return_counts=True)
        dup = int(values[counts > 1][0])
        raise ValueError(f"{name} holds block {dup} more than once")


def check_cache_write(args: CacheWriteArgs, *, full: bool) -> None:
    """Check `cache_write` arguments (see `kvsaga.kernels.cache_write`)."""
    key, value, k_cache, slot_mapping = args.key, args.value, args.k_cache, args.slot_mapping
    _check_cache_pair(k_cache, args.v_cache)
    for name, x in (("key", key), ("value", value)):
        _tensor(name, x)
        _ndim(name, x, 3, "[num_tokens, num_kv_heads, head_dim]")
        if x.dtype != k_cache.dtype:
            raise TypeError(f"{name}.dtype {x.dtype} != k_cache.dtype {k_cache.dtype}")
        if tuple(x.shape[1:]) != tuple(k_cache.shape[2:]):
            raise ValueError(
                f"{name} shape {tuple(x.shape)} does not match the cache's "
                f"[num_kv_heads, head_dim] = {tuple(k_cache.shape[2:])}"
            )
        _same_device(name, x, k_cache.device, "k_cache")
        _last_dim_contiguous(name, x)
    if value.shape != key.shape:
        raise ValueError(f"value shape {tuple(value.shape)} != key shape {tuple(key.shape)}")
    _index_vector("slot_mapping", slot_mapping, key.shape[0], k_cache.device)
    if not full or slot_mapping.numel() == 0:
        return
    num_slots = k_cache.shape[0] * k_cache.shape[1]
    bad = (slot_mapping < -1) | (slot_mapping >= num_slots)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"slot_mapping[{i}] = {int(slot_mapping[i])} is out of range: the cache has "
            f"{num_slots} slots ({k_cache.shape[0]} blocks of {k_cache.shape[1]}); -1 skips"
        )
    used = slot_mapping[slot_mapping >= 0]
    if torch.unique(used).numel() != used.numel():
        values, counts = torch.unique(used, return_counts=True)
        raise ValueError(f"slot_mapping holds slot {int(values[counts > 1][0])} more than once")


def check_paged_attention(
    args: PagedAttentionArgs, out: torch.Tensor | None, *, full: bool
) -> None:
    """Check `paged_attention` arguments (see `kvsaga.kernels.paged_attention`)."""
    query, k_cache, block_tables = args.query, args.k_cache, args.block_tables
    seq_lens, query_start_loc = args.seq_lens, args.query_start_loc
    _check_cache_pair(k_cache, args.v_cache)
    device = k_cache.device
    _tensor("query", query)
    _ndim("query", query, 3, "[num_query_tokens, num_heads, head_dim]")
    if query.dtype != k_cache.dtype:
        raise TypeError(f"query.dtype {query.dtype} != k_cache.dtype {k_cache.dtype}")
    _same_device("query", query, device, "k_cache")
    _last_dim_contiguous("query", query)
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    if query.shape[2] != head_dim:
        raise ValueError(f"query head_dim {query.shape[2]} != k_cache head_dim {head_dim}")
    if num_kv_heads == 0 or query.shape[1] % num_kv_heads != 0:
        raise ValueError(
            f"query num_heads {query.shape[1]} is not a multiple of num_kv_heads {num_kv_heads}"
        )
    for name, x, ndim in (
        ("block_tables", block_tables, 2),
        ("seq_lens", seq_lens, 1),
        ("query_start_loc", query_start_loc, 1),
    ):
        _tensor(name, x)
        _dtype(name, x, (torch.int32,))
        _ndim(name, x, ndim, "int32 tensor")
        _same_device(name, x, device, "k_cache")
    _last_dim_contiguous("block_tables", block_tables)
    _contiguous_vector("seq_lens", seq_lens)
    _contiguous_vector("query_start_loc", query_start_loc)
    batch = block_tables.shape[0]
    if seq_lens.shape[0] != batch:
        raise ValueError(f"seq_lens has {seq_lens.shape[0]} entries, block_tables {batch} rows")
    if query_start_loc.shape[0] != batch + 1:
        raise ValueError(
            f"query_start_loc has {query_start_loc.shape[0]} entries, expected batch + 1 = "
            f"{batch + 1}"
        )
    if not isinstance(args.scale, (float, int)) or isinstance(args.scale, bool):
        raise TypeError(f"scale must be a float, got {type(args.scale).__name__}")
    for name, v in (("max_query_len", args.max_query_len), ("max_seq_len", args.max_seq_len)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(f"{name} must be a non-negative int or None, got {v!r}")
    if out is not None:
        _tensor("out", out)
        if out.shape != query.shape:
            raise ValueError(f"out shape {tuple(out.shape)} != query shape {tuple(query.shape)}")
        if out.dtype != query.dtype:
            raise TypeError(f"out.dtype {out.dtype} != query.dtype {query.dtype}")
        _same_device("out", out, device, "k_cache")
        _last_dim_contiguous("out", out)
        _no_self_overlap("out", out)
    if full:
        _check_attention_values(args)


def _check_attention_values(args: PagedAttentionArgs) -> None:
    query, block_tables = args.query, args.block_tables
    max_query_len, max_seq_len = args.max_query_len, args.max_seq_len
    num_blocks, block_size = args.k_cache.shape[0], args.k_cache.shape[1]
    qsl = args.query_start_loc.cpu().long()
    lens = args.seq_lens.cpu().long()
    if int(qsl[0]) != 0:
        raise ValueError(f"query_start_loc[0] = {int(qsl[0])}, expected 0")
    q_lens = qsl[1:] - qsl[:-1]
    if bool((q_lens < 0).any()):
        i = int((q_lens < 0).nonzero()[0, 0])
        raise ValueError(f"query_start_loc decreases at index {i + 1}: {qsl.tolist()}")
    if int(qsl[-1]) > query.shape[0]:
        raise ValueError(
            f"query_start_loc[-1] = {int(qsl[-1])} exceeds the {query.shape[0]} query tokens"
        )
    bad = (lens < q_lens) | (lens > block_tables.shape[1] * block_size)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"seq_lens[{i}] = {int(lens[i])} must be at least its query length "
            f"{int(q_lens[i])} and fit its block table of {block_tables.shape[1]} blocks "
            f"of {block_size}"
        )
    if max_query_len is not None and q_lens.numel() and max_query_len < int(q_lens.max()):
        raise ValueError(
            f"max_query_len = {max_query_len} < the longest query {int(q_lens.max())}"
        )
    if max_seq_len is not None and lens.numel() and max_seq_len < int(lens.max()):
        raise ValueError(f"max_seq_len = {max_seq_len} < the longest sequence {int(lens.max())}")
    tables = block_tables.cpu().long()
    used_blocks = (lens + block_size - 1) // block_size
    used = torch.arange(tables.shape[1])[None, :] < used_blocks[:, None]
    bad = used & ((tables < 0) | (tables >= num_blocks))
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"block_tables[{i}, {j}] = {int(tables[i, j])} is out of range for a cache of "
            f"{num_blocks} blocks"
        )


def check_block_copy(
    kv: torch.Tensor, src_block_ids: torch.Tensor, dst_block_ids: torch.Tensor, *, full: bool
) -> None:
    """Check `block_copy` arguments (see `kvsaga.kernels.block_copy`)."""
    _check_tier(kv)
    _index_vector("src_block_ids", src_block_ids, None, kv.device)
    _index_vector("dst_block_ids", dst_block_ids, src_block_ids.shape[0], kv.device)
    if not full:
        return
    _ids_in_range("src_block_ids", src_block_ids, kv.shape[0])
    _ids_in_range("dst_block_ids", dst_block_ids, kv.shape[0])
    _ids_distinct("dst_block_ids", dst_block_ids)
    overlap = torch.isin(dst_block_ids, src_block_ids)
    if bool(overlap.any()):
        i = int(overlap.nonzero()[0, 0])
        raise ValueError(
            f"dst_block_ids[{i}] = {int(dst_block_ids[i])} is also a source block; sources "
            "and destinations must be disjoint"
        )


def check_gather_blocks(
    kv: torch.Tensor, block_ids: torch.Tensor, out: torch.Tensor | None, *, full: bool
) -> None:
    """Check `gather_blocks` arguments (see `kvsaga.kernels.gather_blocks`)."""
    _check_tier(kv)
    _index_vector("block_ids", block_ids, None, kv.device)
    if out is not None:
        _staging("out", out, kv, block_ids.shape[0])
    if full:
        _ids_in_range("block_ids", block_ids, kv.shape[0])


def check_scatter_blocks(
    staging: torch.Tensor, kv: torch.Tensor, block_ids: torch.Tensor, *, full: bool
) -> None:
    """Check `scatter_blocks` arguments (see `kvsaga.kernels.scatter_blocks`)."""
    _check_tier(kv)
    _index_vector("block_ids", block_ids, None, kv.device)
    _staging("staging", staging, kv, block_ids.shape[0])
    if full:
        _ids_in_range("block_ids", block_ids, kv.shape[0])
        _ids_distinct("block_ids", block_ids)


def _staging(name: str, x: object, kv: torch.Tensor, n: int) -> None:
    x = _tensor(name, x)
    expected = (n, *kv.shape[1:])
    if tuple(x.shape) != expected:
        raise ValueError(f"{name} shape {tuple(x.shape)} != [n, *kv.shape[1:]] = {expected}")
    if x.dtype != kv.dtype:
        raise TypeError(f"{name}.dtype {x.dtype} != kv.dtype {kv.dtype}")
    _same_device(name, x, kv.device, "kv")
    if not x.is_contiguous():
        raise ValueError(f"{name} must be contiguous, got strides {tuple(x.stride())}")
