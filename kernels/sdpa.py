"""The CPU production path of paged attention: batched `scaled_dot_product_attention`.

The reference (`reference.py`) is written to be obviously right: one sequence at a time,
KV heads repeated, scores in an explicit tensor. That costs ~10 small ops per sequence per
layer, which dominates a CPU decode step. Here all sequences of the batch share one SDPA
call: K/V are gathered through the block tables into a padded `[batch, kv_heads, S, D]`
tensor and a boolean mask hides padding and the future; GQA is left to SDPA
(`enable_gqa`), so KV heads are never copied per query head. Same signature and semantics
as the reference, which the tests hold it to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _sdpa(q, k, v, mask, scale):
    # q: [B, H, Q, D]; k, v: [B, Hkv, S, D]; mask: [B, 1, Q, S] (True = attend)
    if k.shape[1] != q.shape[1]:
        try:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=scale, enable_gqa=True
            )
        except TypeError:  # torch < 2.5 has no enable_gqa
            group = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


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
    """As `reference.paged_attention`; scores in fp32 (inputs upcast), output in query's dtype."""
    if out is None:
        out = torch.zeros_like(query)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    batch = len(lens)
    if batch == 0:
        return out
    q_lens = [starts[i + 1] - starts[i] for i in range(batch)]
    max_q = max(q_lens)
    max_s = max(lens)
    block_size = k_cache.shape[1]
    num_blocks = -(-max_s // block_size)
    dev = query.device
    lens_t = torch.tensor(lens, device=dev)
    q_lens_t = torch.tensor(q_lens, device=dev)
    # Gather K/V as [B, S_pad, Hkv, D] by (block, offset) per position. Positions past a
    # sequence's length read its position 0 instead (written, so finite: padding must not
    # bring NaN into the masked products) and are masked below.
    s_pad = num_blocks * block_size
    k_pos = torch.arange(s_pad, device=dev)
    valid = k_pos[None, :] < lens_t[:, None]  # [B, S]
    pos = torch.where(valid, k_pos[None, :], 0)
    blocks = block_tables.long().gather(1, pos // block_size)  # [B, S]
    offsets = pos % block_size
    k = k_cache[blocks, offsets].transpose(1, 2)  # [B, Hkv, S, D]
    v = v_cache[blocks, offsets].transpose(1, 2)
    if k.dtype != torch.float32:  # scores and softmax in fp32, as the reference
        k, v = k.float(), v.float()
    if max_q == 1:  # decode: one query row per sequence, no padding of queries
        q = query[: starts[-1]].float()[:, :, None, :]  # [B, H, 1, D]
        mask = valid[:, None, None, :]
        o = _sdpa(q, k, v, mask, scale)  # [B, H, 1, D]
        out[: starts[-1]] = o[:, :, 0].to(out.dtype)
        return out
    # Extend/prefill: pad queries to the longest, mask the future and the padding.
    h, d = query.shape[1], query.shape[2]
    q = query.new_zeros((batch, max_q, h, d), dtype=torch.float32)
    rows = torch.arange(max_q, device=dev)
    valid_q = rows[None, :] < q_lens_t[:, None]  # [B, Q]
    q[valid_q] = query[: starts[-1]].float()
    q_pos = (lens_t - q_lens_t)[:, None] + rows[None, :]  # [B, Q]
    mask = (k_pos[None, None, :] <= q_pos[:, :, None]) & valid[:, None, :]
    # Padded query rows would attend to nothing (NaN); let them see position 0.
    mask[:, :, 0] |= ~valid_q
    o = _sdpa(q.transpose(1, 2), k, v, mask[:, None], scale)  # [B, H, Q, D]
    out[: starts[-1]] = o.transpose(1, 2)[valid_q].to(out.dtype)
    return out
