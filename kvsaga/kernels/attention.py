"""Paged attention in Triton: a split-K decode kernel with its reduce, and a prefill/extend kernel.

Both read K/V one tile of `BLOCK_N` tokens at a time through the block table: token t of a
sequence lives in block `block_table[t // block_size]` at offset `t % block_size`, so any
block size works and a tile may span several blocks. Addresses are `block_id * stride_b +
offset * stride_t + kv_head * stride_h + d` in int64: a tier tensor passes > 2^31 elements.

Decode (one query token per sequence), flash-decoding style: grid (batch, head chunks,
splits). A program takes one KV head and up to `BLOCK_H` of its query heads (GQA heads share
each K/V tile; the padded heads feed `tl.dot`'s minimum M of 16) over one partition of the
context, and writes an unnormalised partial output with its running max and sum; the reduce
kernel merges a sequence's partitions. Splitting the context lets one long sequence fill the
GPU. The launcher picks the number of splits from the batch, the SM count and the host bound
`max_seq_len`; each row then cuts its own context into at most min(splits, ceil(seq_len /
min_partition)) partitions of equal whole tiles, the last taking the rest
(`_row_partition`, in both kernels). The count rounds up, so a partition may be shorter
than `min_partition`: with 256 and 64-token tiles a 257-token row runs as 192 + 65 tokens,
a 513-token one as 192 + 192 + 129. A row's partitions thus follow its own length, not
the batch's longest: a short row beside a long one still spreads, and so does every row
of a CUDA graph, whose bound is `max_model_len`. (With the partition fixed by the bound, a
graph captured for 8,192 tokens ran a 2,048-token row in one or two partitions where an
eager call used eight.)

Prefill/extend: grid (batch, query heads, query tiles of `BLOCK_M`). A query tile first runs
over the keys that every row of it sees (the cached prefix and the new tokens before the
tile, no causal mask), then over the diagonal with the mask.

Precision: scores, softmax and accumulators are fp32 (exp2 with log2(e) folded into the
scale). fp16/bf16 tiles go to `tl.dot` as they are (tensor cores); fp32 ones use
`input_precision="ieee"`, i.e. no tf32, so fp32 matches the reference to ~1e-5. Under
Triton's interpreter `UPCAST` turns every operand into fp32 first: the interpreter computes
bf16 arithmetic and bf16 `tl.dot` on raw bits.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from .args import PagedAttentionArgs
from .attention_config import _MIN_PARTITION, _PROGRAMS_PER_SM, decode_config, prefill_config
from .spec import HEAD_DIMS, TRITON_TYPES, KernelSpec, check_head_dim, jit_variant

DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634


@triton.jit
def _load_kv_tile(
    cache_ptr,
    block_table_row,
    tok,
    tok_mask,
    d,
    block_size,
    kv_head,
    stride_b,
    stride_t,
    stride_h,
):
    """[BLOCK_N, HEAD_DIM] rows of tokens `tok` of one sequence, 0 where `tok_mask` is off."""
    block = tl.load(block_table_row + tok // block_size, mask=tok_mask, other=0).to(tl.int64)
    row = block * stride_b + (tok % block_size) * stride_t + kv_head * stride_h
    return tl.load(cache_ptr + row[:, None] + d[None, :], mask=tok_mask[:, None], other=0.0)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _attend_tile(
    q,
    acc,
    m_i,
    l_i,
    k_ptr,
    v_ptr,
    block_table_row,
    tok,
    tok_mask,
    q_pos,
    d,
    block_size,
    kv_head,
    scale_log2e,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    CAUSAL: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
):
    """One online-softmax step of rows `q` over the K/V tile of tokens `tok`."""
    k = _load_kv_tile(
        k_ptr, block_table_row, tok, tok_mask, d, block_size, kv_head, stride_kb, stride_kt,
        stride_kh,
    )
    v = _load_kv_tile(
        v_ptr, block_table_row, tok, tok_mask, d, block_size, kv_head, stride_vb, stride_vt,
        stride_vh,
    )
    if UPCAST:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    s = _dot(q, tl.trans(k), IEEE) * scale_log2e  # [rows, BLOCK_N], log2 domain
    keep = tok_mask[None, :]
    if CAUSAL:
        keep = keep & (tok[None, :] <= q_pos[:, None])
    s = tl.where(keep, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    # Every row sees at least one key in its first tile, so m_new is finite from then on.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if UPCAST:
        acc = acc * alpha[:, None] + _dot(p, v, IEEE)
    else:
        acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, IEEE)
    return acc, m_new, l_i


@triton.jit
def _attend_range(
    q, acc, m_i, l_i, k_ptr, v_ptr, block_table_row, start, end, q_pos, d, block_size,
    kv_head, scale_log2e, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
    CAUSAL: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """`_attend_tile` over tokens [start, end), one tile of `BLOCK_N` at a time (the decode
    split's partition; prefill's shared keys, then its diagonal with `CAUSAL`)."""
    for tile in range(start, end, BLOCK_N):
        tok = tile + tl.arange(0, BLOCK_N)
        acc, m_i, l_i = _attend_tile(
            q, acc, m_i, l_i, k_ptr, v_ptr, block_table_row, tok, tok < end, q_pos, d,
            block_size, kv_head, scale_log2e, stride_kb, stride_kt, stride_kh, stride_vb,
            stride_vt, stride_vh, CAUSAL, UPCAST, IEEE,
        )
    return acc, m_i, l_i


@triton.jit
def _row_partition(seq_len, max_splits, min_partition, BLOCK_N: tl.constexpr):
    """A row's partition: its context over min(max_splits, cdiv(seq_len, min_partition))
    splits, rounded up to whole tiles (at least one tile, so that an empty row divides).
    The split count rounds up, so partitions may be shorter than `min_partition`; the
    last one takes what remains."""
    splits = tl.maximum(tl.minimum(max_splits, tl.cdiv(seq_len, min_partition)), 1)
    partition = tl.cdiv(tl.cdiv(seq_len, splits), BLOCK_N) * BLOCK_N
    return tl.maximum(partition, BLOCK_N)


@triton.jit
def _decode_split_kernel(
    q_ptr,  # [num_query_tokens, num_heads, HEAD_DIM]
    k_ptr,  # [num_blocks, block_size, num_kv_heads, HEAD_DIM] (strided)
    v_ptr,
    block_tables_ptr,  # int32 [batch, max_blocks_per_seq]
    seq_lens_ptr,  # int32 [batch]
    query_start_loc_ptr,  # int32 [batch + 1]
    part_acc_ptr,  # fp32 [num_query_tokens, num_heads, max_splits, HEAD_DIM]
    part_ml_ptr,  # fp32 [num_query_tokens, num_heads, max_splits, 2]: running max, sum
    scale_log2e,
    num_heads,
    group_size,
    block_size,
    min_partition,
    max_splits,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_bt,
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
):
    seq = tl.program_id(0)
    head_chunk = tl.program_id(1)
    split = tl.program_id(2)
    chunks_per_kv = tl.cdiv(group_size, BLOCK_H)
    kv_head = head_chunk // chunks_per_kv
    h_in_group = (head_chunk % chunks_per_kv) * BLOCK_H + tl.arange(0, BLOCK_H)
    q_start = tl.load(query_start_loc_ptr + seq)
    has_query = tl.load(query_start_loc_ptr + seq + 1) > q_start
    # Heads past the group, or all of them when the sequence has no query token, are off.
    h_mask = h_in_group < tl.where(has_query, group_size, 0)
    heads = kv_head * group_size + h_in_group

    seq_len = tl.load(seq_lens_ptr + seq)
    partition_size = _row_partition(seq_len, max_splits, min_partition, BLOCK_N)
    split_start = split * partition_size
    split_end = tl.minimum(split_start + partition_size, seq_len)
    split_end = tl.where(has_query, split_end, split_start)

    d = tl.arange(0, HEAD_DIM)
    q_row = q_start.to(tl.int64) * stride_qt + heads * stride_qh
    q = tl.load(q_ptr + q_row[:, None] + d[None, :], mask=h_mask[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_DIM], tl.float32)
    block_table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    acc, m_i, l_i = _attend_range(  # no causal mask: q_pos (0) is not read
        q, acc, m_i, l_i, k_ptr, v_ptr, block_table_row, split_start, split_end, 0, d,
        block_size, kv_head, scale_log2e, stride_kb, stride_kt, stride_kh, stride_vb,
        stride_vt, stride_vh, False, UPCAST, IEEE, BLOCK_N,
    )

    part = (q_start.to(tl.int64) * num_heads + heads) * max_splits + split  # [BLOCK_H]
    # (scalar & tensor masks have the wrong dtype under the interpreter: fold via tl.where)
    store = h_in_group < tl.where(split_start < split_end, group_size, 0)
    tl.store(part_acc_ptr + part[:, None] * HEAD_DIM + d[None, :], acc, mask=store[:, None])
    tl.store(part_ml_ptr + part * 2, m_i, mask=store)
    tl.store(part_ml_ptr + part * 2 + 1, l_i, mask=store)


@triton.jit
def _decode_reduce_kernel(
    out_ptr,  # [num_query_tokens, num_heads, HEAD_DIM]
    part_acc_ptr,
    part_ml_ptr,
    seq_lens_ptr,
    query_start_loc_ptr,
    num_heads,
    min_partition,
    max_splits,
    stride_ot,
    stride_oh,
    HEAD_DIM: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    q_start = tl.load(query_start_loc_ptr + seq)
    has_query = tl.load(query_start_loc_ptr + seq + 1) > q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    partition_size = _row_partition(seq_len, max_splits, min_partition, BLOCK_N)
    num_splits = tl.where(has_query, tl.cdiv(seq_len, partition_size), 0)

    d = tl.arange(0, HEAD_DIM)
    base = (q_start.to(tl.int64) * num_heads + head) * max_splits
    m = tl.full([], float("-inf"), tl.float32)
    l_sum = tl.zeros([], tl.float32)
    acc = tl.zeros([HEAD_DIM], tl.float32)
    for split in range(0, num_splits):
        m_s = tl.load(part_ml_ptr + (base + split) * 2)
        l_s = tl.load(part_ml_ptr + (base + split) * 2 + 1)
        acc_s = tl.load(part_acc_ptr + (base + split) * HEAD_DIM + d)
        m_new = tl.maximum(m, m_s)
        a = tl.exp2(m - m_new)
        b = tl.exp2(m_s - m_new)
        l_sum = l_sum * a + l_s * b
        acc = acc * a + acc_s * b
        m = m_new
    l_sum = tl.where(l_sum == 0.0, 1.0, l_sum)
    out = acc / l_sum
    out_off = q_start.to(tl.int64) * stride_ot + head * stride_oh + d
    has_out = d < tl.where(num_splits > 0, HEAD_DIM, 0)
    tl.store(out_ptr + out_off, out.to(out_ptr.dtype.element_ty), mask=has_out)


@triton.jit
def _prefill_kernel(
    q_ptr,  # [num_query_tokens, num_heads, HEAD_DIM]
    k_ptr,  # [num_blocks, block_size, num_kv_heads, HEAD_DIM] (strided)
    v_ptr,
    out_ptr,  # [num_query_tokens, num_heads, HEAD_DIM]
    block_tables_ptr,  # int32 [batch, max_blocks_per_seq]
    seq_lens_ptr,  # int32 [batch]
    query_start_loc_ptr,  # int32 [batch + 1]
    scale_log2e,
    group_size,
    block_size,
    stride_qt,
    stride_qh,
    stride_kb,
    stride_kt,
    stride_kh,
    stride_vb,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_bt,
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    UPCAST: tl.constexpr,
    IEEE: tl.constexpr,
):
    seq = tl.program_id(0)
    head = tl.program_id(1)
    m_block = tl.program_id(2)
    kv_head = head // group_size
    q_start = tl.load(query_start_loc_ptr + seq)
    q_len = tl.load(query_start_loc_ptr + seq + 1) - q_start
    seq_len = tl.load(seq_lens_ptr + seq)
    prefix_len = seq_len - q_len

    rows = m_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_mask = rows < q_len
    q_pos = prefix_len + rows
    d = tl.arange(0, HEAD_DIM)
    tok_row = (q_start + rows).to(tl.int64)
    q = tl.load(
        q_ptr + tok_row[:, None] * stride_qt + head * stride_qh + d[None, :],
        mask=row_mask[:, None],
        other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)

    # Keys [0, diag) are visible to every row of the tile; [diag, kv_end) need the mask.
    has_rows = m_block * BLOCK_M < q_len
    diag = tl.where(has_rows, prefix_len + m_block * BLOCK_M, 0)
    kv_end = tl.where(has_rows, tl.minimum(seq_len, prefix_len + (m_block + 1) * BLOCK_M), 0)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    block_table_row = block_tables_ptr + seq.to(tl.int64) * stride_bt
    acc, m_i, l_i = _attend_range(
        q, acc, m_i, l_i, k_ptr, v_ptr, block_table_row, 0, diag, q_pos, d, block_size,
        kv_head, scale_log2e, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt,
        stride_vh, False, UPCAST, IEEE, BLOCK_N,
    )
    acc, m_i, l_i = _attend_range(
        q, acc, m_i, l_i, k_ptr, v_ptr, block_table_row, diag, kv_end, q_pos, d, block_size,
        kv_head, scale_log2e, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt,
        stride_vh, True, UPCAST, IEEE, BLOCK_N,
    )

    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    tl.store(
        out_ptr + tok_row[:, None] * stride_ot + head * stride_oh + d[None, :],
        out.to(out_ptr.dtype.element_ty),
        mask=row_mask[:, None],
    )


# Whether these kernels run under Triton's interpreter (TRITON_INTERPRET=1 when they were
# decorated), whatever device the tensors are on: then `UPCAST` (module docstring).
INTERPRETED = not isinstance(_prefill_kernel, triton.runtime.JITFunction)


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def decode_num_splits(
    batch: int, num_head_chunks: int, max_seq_len: int, block_n: int, num_sms: int
) -> tuple[int, int]:
    """(num_splits, partition_size) so that about `_PROGRAMS_PER_SM` programs per SM run:
    the grid's splits, and the partition of a row of `max_seq_len` tokens (a multiple of
    `block_n`; a shorter row takes its own, `_row_partition`). At most
    ceil(max_seq_len / `_MIN_PARTITION`) splits.
    """
    if max_seq_len <= 0:
        return 1, block_n
    wanted = max(1, -(-_PROGRAMS_PER_SM * num_sms // max(1, batch * num_head_chunks)))
    most = max(1, -(-max_seq_len // _MIN_PARTITION))
    splits = min(wanted, most)
    partition = -(-max_seq_len // splits)
    partition = -(-partition // block_n) * block_n
    return -(-max_seq_len // partition), partition


def paged_attention(
    args: PagedAttentionArgs, out: torch.Tensor | None = None, *, num_splits: int | None = None
) -> torch.Tensor:
    """Launch paged attention; arguments as `kvsaga.kernels.paged_attention`, checked there.

    Args:
        args: the query, caches, block tables, lengths, scale and host-side length bounds.
        out: optional output, shaped and typed like the query.
        num_splits: decode only: force this many splits, each row cut into up to that many
            partitions of any length (tests use it to cover the split-K path on small
            inputs); default: chosen from the SM count, at most one split per started
            `_MIN_PARTITION` tokens of a row (`_row_partition`).

    Returns:
        [num_query_tokens, num_heads, head_dim] in query's dtype.
    """
    query, k_cache, v_cache = args.query, args.k_cache, args.v_cache
    block_tables, seq_lens, query_start_loc = args.block_tables, args.seq_lens, args.query_start_loc
    max_query_len, max_seq_len = args.max_query_len, args.max_seq_len
    num_tokens, num_heads, head_dim = query.shape
    check_head_dim(head_dim)
    num_kv_heads = k_cache.shape[2]
    block_size = k_cache.shape[1]
    group = num_heads // num_kv_heads
    batch = block_tables.shape[0]
    if out is None:
        out = torch.zeros_like(query)
    if batch == 0 or num_tokens == 0:
        return out
    if max_query_len is None:
        max_query_len = int((query_start_loc[1:] - query_start_loc[:-1]).max())
    if max_query_len == 0:
        return out
    upcast = INTERPRETED  # see the module docstring
    ieee = query.dtype == torch.float32
    scale_log2e = float(args.scale) * _LOG2E
    common = dict(
        stride_qt=query.stride(0),
        stride_qh=query.stride(1),
        stride_kb=k_cache.stride(0),
        stride_kt=k_cache.stride(1),
        stride_kh=k_cache.stride(2),
        stride_vb=v_cache.stride(0),
        stride_vt=v_cache.stride(1),
        stride_vh=v_cache.stride(2),
    )

    if max_query_len > 1:
        cfg = prefill_config(head_dim, query.dtype)
        grid = (batch, num_heads, triton.cdiv(max_query_len, cfg.BLOCK_M))
        _prefill_kernel[grid](
            query, k_cache, v_cache, out, block_tables, seq_lens, query_start_loc,
            scale_log2e, group, block_size, **common, stride_ot=out.stride(0),
            stride_oh=out.stride(1), stride_bt=block_tables.stride(0), HEAD_DIM=head_dim,
            BLOCK_M=cfg.BLOCK_M, BLOCK_N=cfg.BLOCK_N, UPCAST=upcast, IEEE=ieee,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        )
        return out

    cfg = decode_config(head_dim, query.dtype)
    head_chunks = num_kv_heads * triton.cdiv(group, cfg.BLOCK_H)
    if max_seq_len is None:
        max_seq_len = int(seq_lens.max())
    if num_splits is None:
        num_sms = _num_sms(query.device.index or 0) if query.is_cuda else 1
        num_splits, _ = decode_num_splits(batch, head_chunks, max_seq_len, cfg.BLOCK_N, num_sms)
        min_partition = _MIN_PARTITION
    else:
        num_splits, min_partition = max(1, min(num_splits, max_seq_len)), 1
    part_acc = torch.empty(
        (num_tokens, num_heads, num_splits, head_dim), dtype=torch.float32, device=query.device
    )
    part_ml = torch.empty(
        (num_tokens, num_heads, num_splits, 2), dtype=torch.float32, device=query.device
    )
    _decode_split_kernel[(batch, head_chunks, num_splits)](
        query, k_cache, v_cache, block_tables, seq_lens, query_start_loc, part_acc, part_ml,
        scale_log2e, num_heads, group, block_size, min_partition, num_splits, **common,
        stride_bt=block_tables.stride(0), HEAD_DIM=head_dim, BLOCK_H=cfg.BLOCK_H,
        BLOCK_N=cfg.BLOCK_N, UPCAST=upcast, IEEE=ieee, num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )
    _decode_reduce_kernel[(batch, num_heads)](
        out, part_acc, part_ml, seq_lens, query_start_loc, num_heads, min_partition,
        num_splits, out.stride(0), out.stride(1), HEAD_DIM=head_dim, BLOCK_N=cfg.BLOCK_N,
        num_warps=cfg.reduce_num_warps, num_stages=cfg.reduce_num_stages,
    )
    return out


_STRIDES = (
    "stride_qt", "stride_qh", "stride_kb", "stride_kt", "stride_kh", "stride_vb", "stride_vt",
    "stride_vh", "stride_ot", "stride_oh",
)


# The launches a common model makes (block_size 16, head counts and table widths multiples
# of 16, tables and lengths whole tensors) hint these args too; `_jit_variants` adds them.
_ALIGNED = ("block_tables_ptr", "seq_lens_ptr", "query_start_loc_ptr", "block_size",
            "stride_bt")


def _jit_variants(prefill: KernelSpec, split: KernelSpec, reduce: KernelSpec
                  ) -> list[KernelSpec]:
    """The variants the JIT compiles for common launches of one configuration (spec.py):
    GQA or MHA (group_size 1), and decode with a split grid or with one split (a large
    batch, or a short context: max_splits 1)."""
    decode = (*_ALIGNED, "num_heads", "min_partition")
    merge = ("seq_lens_ptr", "query_start_loc_ptr", "num_heads", "min_partition")
    return [
        jit_variant(prefill, "aligned", divisible=_ALIGNED),
        jit_variant(prefill, "aligned, mha", divisible=_ALIGNED, ones=("group_size",)),
        jit_variant(split, "aligned", divisible=decode),
        jit_variant(split, "aligned, one split", divisible=decode, ones=("max_splits",)),
        jit_variant(split, "aligned, mha, one split", divisible=decode,
                    ones=("group_size", "max_splits")),
        jit_variant(reduce, "aligned", divisible=merge),
        jit_variant(reduce, "aligned, one split", divisible=merge, ones=("max_splits",)),
    ]


def compile_specs() -> list[KernelSpec]:
    """Every configuration `paged_attention` can launch on a GPU, and for head_dim 128 in
    fp16 and bf16 the variants common launches compile (see kvsaga/kernels/spec.py)."""
    specs = []
    indices = {"block_tables_ptr": "*i32", "seq_lens_ptr": "*i32", "query_start_loc_ptr": "*i32"}
    for dtype in DTYPES:
        t = TRITON_TYPES[dtype]
        gpu = {"UPCAST": False, "IEEE": dtype == torch.float32}
        for head_dim in HEAD_DIMS:
            tag = f"{t}, head_dim={head_dim}"
            p = prefill_config(head_dim, dtype)
            specs.append(
                KernelSpec(
                    name=f"prefill[{tag}]",
                    fn=_prefill_kernel,
                    pointers={"q_ptr": "*" + t, "k_ptr": "*" + t, "v_ptr": "*" + t,
                              "out_ptr": "*" + t, **indices},
                    constexprs={"HEAD_DIM": head_dim, "BLOCK_M": p.BLOCK_M,
                                "BLOCK_N": p.BLOCK_N, **gpu},
                    num_warps=p.num_warps,
                    num_stages=p.num_stages,
                    floats=("scale_log2e",),
                    divisible_by_16=("q_ptr", "k_ptr", "v_ptr", "out_ptr", *_STRIDES),
                )
            )
            c = decode_config(head_dim, dtype)
            parts = {"part_acc_ptr": "*fp32", "part_ml_ptr": "*fp32"}
            specs.append(
                KernelSpec(
                    name=f"decode_split[{tag}]",
                    fn=_decode_split_kernel,
                    pointers={"q_ptr": "*" + t, "k_ptr": "*" + t, "v_ptr": "*" + t,
                              **indices, **parts},
                    constexprs={"HEAD_DIM": head_dim, "BLOCK_H": c.BLOCK_H,
                                "BLOCK_N": c.BLOCK_N, **gpu},
                    num_warps=c.num_warps,
                    num_stages=c.num_stages,
                    floats=("scale_log2e",),
                    divisible_by_16=("q_ptr", "k_ptr", "v_ptr", *parts, *_STRIDES[:8]),
                )
            )
            specs.append(
                KernelSpec(
                    name=f"decode_reduce[{tag}]",
                    fn=_decode_reduce_kernel,
                    pointers={"out_ptr": "*" + t, **parts, "seq_lens_ptr": "*i32",
                              "query_start_loc_ptr": "*i32"},
                    constexprs={"HEAD_DIM": head_dim, "BLOCK_N": c.BLOCK_N},
                    num_warps=c.reduce_num_warps,
                    num_stages=c.reduce_num_stages,
                    divisible_by_16=("out_ptr", *parts, "stride_ot", "stride_oh"),
                )
            )
            if head_dim == 128 and dtype != torch.float32:  # the serving dtypes
                specs += _jit_variants(*specs[-3:])
    return specs
