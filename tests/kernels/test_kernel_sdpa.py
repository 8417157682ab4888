"""The CPU per-sequence SDPA paged attention against the reference, on ragged batches."""

from __future__ import annotations

import pytest
import torch
from paged_case import GUARD, TOLERANCES, make_case

from kvsaga.kernels import reference, sdpa
from kvsaga.kernels.args import PagedAttentionArgs

TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 3, 4])
@pytest.mark.parametrize(
    "q_lens, seq_lens",
    [
        ([1, 1, 1, 1], [1, 15, 16, 17]),  # decode, ragged around the block size
        ([1], [300]),  # one long decode
        ([5, 1, 16, 3], [5, 40, 33, 19]),  # mixed prefill (q == seq), decode and extend
        ([17], [17]),
    ],
)
def test_sdpa_path_matches_reference(dtype, group, q_lens, seq_lens):
    g = torch.Generator().manual_seed(sum(seq_lens) + group)
    bs, hkv, d = 16, 2, 64
    h = hkv * group
    nb = sum(-(-s // bs) for s in seq_lens) + 3
    k_cache = torch.randn(nb, bs, hkv, d, generator=g).to(dtype)
    v_cache = torch.randn(nb, bs, hkv, d, generator=g).to(dtype)
    perm = torch.randperm(nb, generator=g)
    width = max(-(-s // bs) for s in seq_lens)
    tables, used = [], 0
    for s in seq_lens:
        n = -(-s // bs)
        row = perm[used : used + n].tolist() + [-1] * (width - n)  # padding never read
        used += n
        tables.append(row)
    # Slots no sequence owns hold NaN: a stray read shows.
    owned = torch.zeros(nb, dtype=torch.bool)
    owned[perm[:used]] = True
    k_cache[~owned] = float("nan")
    v_cache[~owned] = float("nan")
    bt = torch.tensor(tables, dtype=torch.int32)
    sl = torch.tensor(seq_lens, dtype=torch.int32)
    qsl = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(q_lens), h, d, generator=g).to(dtype)
    args = PagedAttentionArgs(q, k_cache, v_cache, bt, sl, qsl, d**-0.5)
    want = reference.paged_attention(args)
    got = sdpa.paged_attention(args)
    assert got.dtype == dtype
    assert not got.isnan().any()
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("group", [1, 3, 8])
@pytest.mark.parametrize(
    "pairs",
    [
        # (context, new tokens): decodes around block edges, one sequence with no token.
        [(1, 1), (15, 1), (16, 1), (17, 1), (53, 1), (300, 1), (20, 0)],
        # prefill from scratch, extends over cached prefixes, no token, a long extend.
        [(15, 15), (16, 1), (17, 2), (53, 20), (17, 0), (300, 70), (129, 129)],
    ],
    ids=["decode", "extend"],
)
def test_sdpa_path_on_strided_poisoned_tier(dtype, group, pairs):
    """Layer views of a 6-D tier, NaN wherever nothing may be read, guarded output rows."""
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=1 if group == 8 else 2, group=group, head_dim=64,
                     dtype=dtype, seed=len(pairs) + group)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    got = sdpa.paged_attention(case.attention_args(), case.guarded_out())
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[dtype]
    assert not got[:n].isnan().any(), "NaN in the output: a poisoned slot was read"
    torch.testing.assert_close(got[:n].float(), want[:n].float(), atol=atol, rtol=rtol)
    assert (got[n:] == GUARD).all(), "padding output rows were written"
