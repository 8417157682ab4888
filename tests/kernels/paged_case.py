"""Builds paged-attention inputs whose unread memory is poisoned, for the kernel tests.

A case is a tier tensor `[num_blocks, num_layers=2, 2, block_size, num_kv_heads, head_dim]`
filled with NaN, with each sequence's K/V written into layer 1 at shuffled block ids; the
tests hand the kernels layer 1's strided views. Slots past a sequence's length, unused
blocks, layer 0 and block-table entries past a sequence's blocks (-1 or a huge id) are never
to be read; padding query rows past `query_start_loc[-1]` are NaN and padding output rows
hold `GUARD`, so a stray read shows as NaN and a stray write as a changed guard.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvsaga.kernels.args import PagedAttentionArgs

GUARD = 12345.0
# Absolute and relative tolerance of a kernel against the reference, by dtype. The
# reference computes in fp32 and rounds once; the kernels add reordered fp32 sums and, on a
# GPU, fp16/bf16 probabilities in the P@V product.
TOLERANCES = {
    torch.float32: (2e-5, 2e-5),
    torch.float16: (2e-3, 2e-3),
    torch.bfloat16: (1.6e-2, 1.6e-2),
}


@dataclass
class PagedCase:
    kv: torch.Tensor  # [num_blocks, 2, 2, block_size, num_kv_heads, head_dim]
    query: torch.Tensor  # [num_query_tokens + pad, num_heads, head_dim]
    block_tables: torch.Tensor  # int32 [batch, max_blocks]
    seq_lens: torch.Tensor  # int32 [batch]
    query_start_loc: torch.Tensor  # int32 [batch + 1]
    dense_k: list[torch.Tensor]  # per sequence [seq_len, num_kv_heads, head_dim]
    dense_v: list[torch.Tensor]
    scale: float
    num_pad_rows: int

    @property
    def k_cache(self) -> torch.Tensor:
        return self.kv[:, 1, 0]

    @property
    def v_cache(self) -> torch.Tensor:
        return self.kv[:, 1, 1]

    @property
    def max_query_len(self) -> int:
        return int((self.query_start_loc[1:] - self.query_start_loc[:-1]).max())

    def args(self) -> tuple:
        return (
            self.query,
            self.k_cache,
            self.v_cache,
            self.block_tables,
            self.seq_lens,
            self.query_start_loc,
            self.scale,
        )

    def attention_args(self, **bounds: int) -> PagedAttentionArgs:
        """The case as the implementations take it; `bounds`: max_query_len, max_seq_len."""
        return PagedAttentionArgs(*self.args(), **bounds)

    def guarded_out(self) -> torch.Tensor:
        return torch.full_like(self.query, GUARD)


def make_case(
    seq_lens: list[int],
    query_lens: list[int],
    *,
    block_size: int,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    dtype: torch.dtype,
    device: str = "cpu",
    seed: int = 0,
    num_pad_rows: int = 2,
    spare_blocks: int = 3,
) -> PagedCase:
    """A batch of sequences with `seq_lens` context tokens, the last `query_lens` new."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // block_size) for n in seq_lens]
    num_blocks = sum(blocks_per_seq) + spare_blocks
    kv = torch.full((num_blocks, 2, 2, block_size, num_kv_heads, head_dim), float("nan"),
                    dtype=dtype)
    ids = torch.randperm(num_blocks, generator=gen)
    max_blocks = max(blocks_per_seq) + 2
    tables = torch.full((len(seq_lens), max_blocks), -1, dtype=torch.int32)
    dense_k, dense_v = [], []
    used = 0
    for i, (n, nb) in enumerate(zip(seq_lens, blocks_per_seq, strict=True)):
        tables[i, :nb] = ids[used : used + nb].int()
        tables[i, nb + 1 :] = 2**30  # never read either
        used += nb
        k = torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype)
        v = torch.randn(n, num_kv_heads, head_dim, generator=gen).to(dtype)
        for t in range(n):
            kv[tables[i, t // block_size], 1, 0, t % block_size] = k[t]
            kv[tables[i, t // block_size], 1, 1, t % block_size] = v[t]
        dense_k.append(k.to(device))
        dense_v.append(v.to(device))
    num_tokens = sum(query_lens)
    query = torch.randn(num_tokens, num_kv_heads * group, head_dim, generator=gen).to(dtype)
    pad = torch.full((num_pad_rows, *query.shape[1:]), float("nan"), dtype=dtype)
    starts = [0]
    for q in query_lens:
        starts.append(starts[-1] + q)
    return PagedCase(
        kv=kv.to(device),
        query=torch.cat([query, pad]).to(device),
        block_tables=tables.to(device),
        seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device),
        query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
        dense_k=dense_k,
        dense_v=dense_v,
        scale=head_dim**-0.5,
        num_pad_rows=num_pad_rows,
    )


def dense_attention(case: PagedCase) -> torch.Tensor:
    """fp32 causal attention with `scaled_dot_product_attention` on the dense K/V."""
    out = torch.zeros(case.query.shape, dtype=torch.float32, device=case.query.device)
    starts = case.query_start_loc.tolist()
    group = case.query.shape[1] // case.dense_k[0].shape[1]
    for i, seq_len in enumerate(case.seq_lens.tolist()):
        q_start, q_end = starts[i], starts[i + 1]
        q_len = q_end - q_start
        if q_len == 0:
            continue
        q = case.query[q_start:q_end].float().transpose(0, 1)  # [heads, q_len, head_dim]
        k = case.dense_k[i].float().repeat_interleave(group, 1).transpose(0, 1)
        v = case.dense_v[i].float().repeat_interleave(group, 1).transpose(0, 1)
        q_pos = torch.arange(seq_len - q_len, seq_len, device=q.device)
        mask = torch.arange(seq_len, device=q.device)[None, :] <= q_pos[:, None]
        o = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=case.scale
        )
        out[q_start:q_end] = o.transpose(0, 1)
    return out
