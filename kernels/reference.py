"""Plain-torch references of the five KV kernels.

Same signatures and semantics as the Triton kernels in this package; the dispatcher in
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

__all__ = ["cache_write", "paged_attention", "block_copy", "gather_blocks", "scatter_blocks"]


def cache_write(
    key: torch.Tensor,
    value: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
) -> None:
    """Store new K and V rows of one layer into their cache slots.

    Args:
        key: [num_tokens, num_kv_heads, head_dim].
        value: [num_tokens, num_kv_heads, head_dim].
        k_cache: [num_blocks, block_size, num_kv_heads, head_dim], written in place.
        v_cache: [num_blocks, block_size, num_kv_heads, head_dim], written in place.
        slot_mapping: int64 [num_tokens]; slot = block_id * block_size + offset; -1 skips
            the token (padding).
    """
    block_size = k_cache.shape[1]
    keep = slot_mapping >= 0
    slots = slot_mapping[keep]
    block_ids = torch.div(slots, block_size, rounding_mode="floor")
    offsets = slots % block_size
    k_cache[block_ids, offsets] = key[keep].to(k_cache.dtype)
    v_cache[block_ids, offsets] = value[keep].to(v_cache.dtype)


def paged_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_start_loc: torch.Tensor,
    scale: float,
    *,
    max_query_len: int | None = None,
    max_seq_len: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal attention of a varlen batch of queries over K/V read through block tables.

    Query token j of sequence i sits at position `seq_lens[i] - q_len_i + j` and attends to
    every position up to and including its own; K/V of all positions, the new tokens
    included, are read from the cache. Scores and softmax are computed in fp32.

    Args:
        query: [num_query_tokens, num_heads, head_dim], the batch's queries back to back.
        k_cache: [num_blocks, block_size, num_kv_heads, head_dim].
        v_cache: [num_blocks, block_size, num_kv_heads, head_dim].
        block_tables: int32 [batch, max_blocks_per_seq]; entries past a sequence's
            `ceil(seq_len / block_size)` blocks are never read.
        seq_lens: int32 [batch], context length of each sequence including its new tokens.
        query_start_loc: int32 [batch + 1], cumulative query lengths.
        scale: softmax scale, usually head_dim ** -0.5.
        max_query_len: unused here (the Triton dispatcher uses it to avoid a sync).
        max_seq_len: unused here.
        out: optional [num_query_tokens, num_heads, head_dim] output in query's dtype.

    Returns:
        [num_query_tokens, num_heads, head_dim] in query's dtype (`out` when given). Rows
        past `query_start_loc[-1]` are zero when `out` is None and untouched otherwise.
    """
    del max_query_len, max_seq_len
    num_heads = query.shape[1]
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    group = num_heads // num_kv_heads
    if out is None:
        out = torch.zeros_like(query)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    for i, seq_len in enumerate(lens):
        q_start, q_end = starts[i], starts[i + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        num_blocks = -(-seq_len // block_size)
        block_ids = block_tables[i, :num_blocks].long()
        # k, v: [seq_len, num_heads, head_dim] in fp32, KV heads repeated for their group.
        k = k_cache[block_ids].flatten(0, 1)[:seq_len].float()
        v = v_cache[block_ids].flatten(0, 1)[:seq_len].float()
        k = k.repeat_interleave(group, dim=1)
        v = v.repeat_interleave(group, dim=1)
        q = query[q_start:q_end].float()  # [q_len, num_heads, head_dim]
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale  # [num_heads, q_len, seq_len]
        q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)
        k_pos = torch.arange(seq_len, device=query.device)
        future = k_pos[None, :] > q_pos[:, None]  # [q_len, seq_len]
        scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        out[q_start:q_end] = torch.einsum("hqk,khd->qhd", probs, v).to(out.dtype)
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
