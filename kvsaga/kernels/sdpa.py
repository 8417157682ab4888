"""The CPU production path of paged attention: one `scaled_dot_product_attention` per sequence.

The reference (`reference.py`) is written to be obviously right: KV heads repeated, scores
in an explicit tensor, position-level masks. Here each sequence reads its own blocks with
one `index_select` per cache (whole blocks, no padding to the batch's longest sequence) and
runs one SDPA call on 4-D inputs, which on CPU is a fused kernel that never materialises
the scores:
- decode (one query row): the `group` query heads that share a KV head become that head's
  query rows, so KV heads are never repeated and no mask is needed;
- prefill with no cached prefix (query length == context length): SDPA's own causal mode;
- extend (a chunk after cached tokens): a boolean mask, the chunk's rows offset by the prefix.

`python bench/generate.py --profile decode` showed why the earlier batched version (K/V
gathered position by position into a `[batch, kv_heads, longest, head_dim]` tensor with a
padding mask) lost: the position-level gather and the padding cost more than the attention.
Decode rows (one query token) of fp32 caches go instead, all in one call per layer, to the
C++ kernel that reads the cache in place (`inplace.py`), when it was built; a batch whose
`max_query_len` is 1 (a decode step) goes there whole, without reading its lengths on
the host, and so does every batch where the kernel has its tiles (head size 64 or 128 on
an AVX-512 CPU, or an AVX2 + FMA one): there its extend GEMM also beats SDPA on prefill
and extend rows (`python bench/cpu_attention.py`), with no per-sequence copy of the
blocks. SDPA keeps the prefill and extend rows elsewhere. Same signature and semantics
as the reference, which the tests hold it to.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import inplace
from .args import PagedAttentionArgs


def _sdpa(q, k, v, mask=None, scale=None, causal=False):
    """SDPA over one sequence; q: [H, Q, D]; k, v: [Hkv, S, D]; mask: [Q, S] bool (True =
    attend) or None. Returns [H, Q, D].

    The inputs get a batch dimension: on CPU, torch (2.13) runs its fused flash kernel only
    for 4-D inputs; 3-D ones take the unfused, slower path (`python bench/kernels.py`
    times the CPU path).
    """
    q, k, v = q[None], k[None], v[None]
    if k.shape[1] != q.shape[1]:
        try:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=scale, is_causal=causal, enable_gqa=True
            )[0]
        except TypeError:  # torch < 2.5 has no enable_gqa
            group = q.shape[1] // k.shape[1]
            k = k.repeat_interleave(group, dim=1)
            v = v.repeat_interleave(group, dim=1)
    return F.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, scale=scale, is_causal=causal
    )[0]


def paged_attention(args: PagedAttentionArgs, out: torch.Tensor | None = None, *,
                    whole: bool | None = None) -> torch.Tensor:
    """As `reference.paged_attention`; scores in fp32 (inputs upcast), output in query's dtype.

    `whole`: send prefill and extend rows to the in-place kernel too (where it supports the
    tensors); default: where it has its AVX-512 or AVX2 tiles (`inplace.has_tiles`). False keeps
    them on SDPA (bench/cpu_attention.py times both).
    """
    query, k_cache, v_cache, scale = args.query, args.k_cache, args.v_cache, args.scale
    num_kv_heads, head_dim = k_cache.shape[2], k_cache.shape[3]
    group = query.shape[1] // num_kv_heads
    in_place = inplace.supports(query, k_cache, v_cache)
    if whole is None:
        whole = inplace.has_tiles(head_dim)
    if in_place and (args.max_query_len == 1 or whole):
        if out is None:  # the kernel writes every query row; zero only the padding after
            out = torch.empty_like(query)
            out[int(args.query_start_loc[-1]):].zero_()
        inplace.paged_attention(args, out, None)  # every row, no SDPA
        return out
    if out is None:
        out = torch.zeros_like(query)
    if in_place:  # every decode row in one call, reading the cache in place
        starts = args.query_start_loc.tolist()
        inplace.paged_attention(
            args, out, [i for i in range(len(starts) - 1) if starts[i + 1] - starts[i] == 1])
    for rows, seq_len, ids in args.sequences():
        q_len = rows.stop - rows.start
        if in_place and q_len == 1:
            continue
        # [Hkv, S, D] views over one contiguous copy of the sequence's blocks.
        k = k_cache.index_select(0, ids).flatten(0, 1)[:seq_len].float().transpose(0, 1)
        v = v_cache.index_select(0, ids).flatten(0, 1)[:seq_len].float().transpose(0, 1)
        q = query[rows].float()  # [Q, H, D]
        if q_len == 1:
            o = _sdpa(q.view(num_kv_heads, group, head_dim), k, v, scale=scale)  # [Hkv, g, D]
            out[rows] = o.reshape(1, -1, head_dim).to(out.dtype)
            continue
        mask = None
        if q_len < seq_len:  # rows sit at positions seq_len - q_len ..; SDPA's causal is not
            pos = torch.arange(seq_len - q_len, seq_len, device=query.device)
            mask = torch.arange(seq_len, device=query.device)[None, :] <= pos[:, None]
        o = _sdpa(q.transpose(0, 1), k, v, mask, scale, mask is None)  # [H, Q, D]
        out[rows] = o.transpose(0, 1).to(out.dtype)
    return out
