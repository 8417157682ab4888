"""Plain-torch references of the five KV kernels.

Same signatures and semantics as the Triton kernels in this package (`cache_write` and
`paged_attention` take their inputs as one bundle, `kvsaga.kernels.args`); the dispatcher in
`kvsaga.kernels` runs these on CPU by default, and the tests hold the Triton kernels to them.
They favour clarity over speed (a Python loop over the batch, host syncs), take no `validate`
flag and check nothing: `kvsaga.kernels` checks arguments before calling them.

Layout (see docs/architecture.md, "KV layout and kernels"): a tier tensor is
`[num_blocks, num_layers, 2, block_size, num_kv_heads, head_dim]`; the attention and
cache-write functions take one layer's K and V views of it,
`k_cache = kv[:, layer, 0]` and `v_cache = kv[:, layer, 1]`, each
`[num_blocks, block_size, num_kv_heads, head_dim]`. Slot `s` is token `s % block_size` of
block `s // block_size`.
"""

from __future__ import annotations

import torch

from .args import CacheWriteArgs, PagedAttentionArgs

__all__ = ["cache_write", "paged_attention", "block_copy", "gather_blocks", "scatter_blocks"]


def cache_write(args: CacheWriteArgs) -> None:
    """Store new K and V rows of one layer into their cache slots.

    `args.key`, `args.value`: [num_tokens, num_kv_heads, head_dim]; `args.k_cache`,
    `args.v_cache`: [num_blocks, block_size, num_kv_heads, head_dim], written in place;
    `args.slot_mapping`: int64 [num_tokens], slot = block_id * block_size + offset, -1 skips
    the token (padding).
    """
    k_cache, v_cache, slot_mapping = args.k_cache, args.v_cache, args.slot_mapping
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    block_ids = torch.div(slots, block_size, rounding_mode="floor")
    offsets = slots % block_size
    k_cache[block_ids, offsets] = args.key[keep].to(k_cache.dtype)
    v_cache[block_ids, offsets] = args.value[keep].to(v_cache.dtype)


def paged_attention(args: PagedAttentionArgs, out: torch.Tensor | None = None) -> torch.Tensor:
    """Causal attention of a varlen batch of queries over K/V read through block tables.

    Query token j of sequence i sits at position `seq_lens[i] - q_len_i + j` and attends to
    every position up to and including its own; K/V of all positions, the new tokens
    included, are read from the cache (`k_cache[block_tables[i, p // block_size]]`, token
    `p % block_size`). Scores and softmax are computed in fp32. The arguments are those of
    `kvsaga.kernels.paged_attention`; `max_query_len` and `max_seq_len` are not read.

    Args:
        args: the query, caches, block tables, lengths and scale.
        out: optional [num_query_tokens, num_heads, head_dim] output in query's dtype.

    Returns:
        [num_query_tokens, num_heads, head_dim] in query's dtype (`out` when given). Rows
        past `query_start_loc[-1]` are zero when `out` is None and untouched otherwise.
    """
    query, k_cache, v_cache, scale = args.query, args.k_cache, args.v_cache, args.scale
    group = query.shape[1] // k_cache.shape[2]
    if out is None:
        out = torch.zeros_like(query)
    for rows, seq_len, block_ids in args.sequences():
        q_len = rows.stop - rows.start
        # k, v: [seq_len, num_heads, head_dim] in fp32, KV heads repeated for their group.
        k = k_cache[block_ids].flatten(0, 1)[:seq_len].float()
        v = v_cache[block_ids].flatten(0, 1)[:seq_len].float()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        q = query[rows].float()  # [q_len, num_heads, head_dim]
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale  # [num_heads, q_len, seq_len]
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)
        k_pos = torch.arange(seq_len, device=query.device)
        future = k_pos[None, :] > q_pos[:, None]  # [q_len, seq_len]
        scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[rows] = torch.einsum("hqk,khd->qhd", probs, v).to(out.dtype)
    return out


def block_copy(kv: torch.Tensor, src_block_ids: torch.Tensor, dst_block_ids: torch.Tensor) -> None:
    """Copy whole blocks within one tier tensor: `kv[dst[i]] = kv[src[i]]`.

    Args:
        kv: [num_blocks, ...], each block contiguous.
        src_block_ids: int64 [n].
        dst_block_ids: int64 [n], distinct and disjoint from `src_block_ids`.
    """
    kv[dst_block_ids] = kv[src_block_ids]


def gather_blocks(
    kv: torch.Tensor, block_ids: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Gather blocks of a tier tensor into a contiguous staging buffer.

    Args:
        kv: [num_blocks, ...], each block contiguous.
        block_ids: int64 [n].
        out: optional contiguous [n, *kv.shape[1:]] buffer of kv's dtype and device.

    Returns:
        [n, *kv.shape[1:]] contiguous (`out` when given).
    """
    if out is None:
        return kv[block_ids].contiguous()
    out.copy_(kv[block_ids])
    return out


def scatter_blocks(staging: torch.Tensor, kv: torch.Tensor, block_ids: torch.Tensor) -> None:
    """Scatter a staging buffer back into blocks of a tier tensor: `kv[block_ids[i]] = staging[i]`.

    Args:
        staging: [n, *kv.shape[1:]] contiguous.
        kv: [num_blocks, ...], each block contiguous; written in place.
        block_ids: int64 [n], distinct.
    """
    kv[block_ids] = staging
