"""The AVX-512 decode tasks a sequence at a time (csrc/paged_attn_seq.h) against the torch
reference, and bit for bit against the per-(sequence, KV head) tasks they replace.

The kernel takes them for the decoding rows of a call on its AVX-512 row tiles (head size 64
or 128, blocks a multiple of 16 positions) when it runs on one thread, or with at least 4
decoding sequences a thread; else every (sequence, KV head) is a task of its own. Both run
the same tiles in the same order per head, so a row's output is the same bits either way:
here one thread (sequence tasks) against three threads with fewer than 12 decoding
sequences (per-head tasks)."""

from __future__ import annotations

import pytest
import torch
from paged_case import GUARD, TOLERANCES, make_case

from kvsaga.kernels import inplace, reference

pytestmark = pytest.mark.skipif(
    not inplace.available() or inplace.tile_isa() != "avx512",
    reason="no AVX-512 row tiles here (the sequence tasks run on them alone)")

# (context, new tokens): decodes around block edges and long ones, a sequence with no
# token, and an extending sequence beside them (its rows stay per-head tasks).
DECODES = [(1, 1), (15, 1), (16, 1), (17, 1), (31, 1), (32, 1), (33, 1), (300, 1), (20, 0),
           (1000, 1)]
MIXED = DECODES + [(90, 40)]


def _run(case, n_seqs: int, threads: int, path: str = "auto",
         sequence_tasks: int | None = None) -> torch.Tensor:
    """The call's output; `sequence_tasks`, where given, is how many of its tasks must have
    run a whole decoding sequence (both kinds give the same bits, so the count tells them
    apart)."""
    got = case.guarded_out()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inplace.paged_attention(case.attention_args(), got, list(range(n_seqs)), path=path)
    finally:
        torch.set_num_threads(before)
    if sequence_tasks is not None:
        assert inplace.last_sequence_tasks() == sequence_tasks
    return got


@pytest.fixture
def passive(monkeypatch):
    """Kernel threads as under OMP_WAIT_POLICY=PASSIVE (kvsaga-serve's setting)."""
    monkeypatch.setattr(inplace, "_OMP_PASSIVE", True)


@pytest.mark.parametrize("pairs", [DECODES, MIXED], ids=["decode", "mixed"])
@pytest.mark.parametrize("block_size", [16, 32, 48])
@pytest.mark.parametrize("head_dim,group,kv_heads", [(64, 3, 3), (64, 8, 2), (128, 4, 2),
                                                     (128, 1, 4)])
@pytest.mark.parametrize("path", ["auto", "rows"])
def test_sequence_tasks_match_per_head_tasks_bit_for_bit(pairs, block_size, head_dim, group,
                                                         kv_heads, path, passive):
    """Poisoned tier (a stray read is NaN, a stray write a changed guard); one thread runs
    the decoding rows as sequence tasks, three threads (< 12 decoding sequences) as per-head
    tasks: same bits, and both within the reference's tolerance."""
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=block_size,
                     num_kv_heads=kv_heads, group=group, head_dim=head_dim,
                     dtype=torch.float32, seed=block_size + head_dim + group)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    decoding = sum(1 for _, q in pairs if q == 1)
    gemm_rows = path == "auto" and group >= 8  # the extend GEMM takes these decode rows
    whole = _run(case, len(pairs), 1, path, sequence_tasks=0 if gemm_rows else decoding)
    heads = _run(case, len(pairs), 3, path, sequence_tasks=0)
    n = case.query.shape[0] - case.num_pad_rows
    assert not whole[:n].isnan().any(), "NaN in the output: a poisoned slot was read"
    assert (whole[n:] == GUARD).all(), "padding output rows were written"
    assert torch.equal(whole, heads)
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(whole[:n], want[:n], atol=atol, rtol=rtol)


@pytest.mark.parametrize("threads", [2, 3])
def test_many_sequences_split_over_threads(threads, passive):
    """16 decoding sequences of 100 to 2,000 positions: sequence tasks on several threads
    (>= 4 a thread at 2 and 3 threads, so both run them) give one thread's bits, within the
    reference's tolerance; the generic loops (per-head tasks) agree within it too."""
    lens = [100 + 127 * i for i in range(16)]
    case = make_case(lens, [1] * 16, block_size=32, num_kv_heads=3, group=3, head_dim=64,
                     dtype=torch.float32, seed=threads)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    one = _run(case, 16, 1, sequence_tasks=16)
    many = _run(case, 16, threads, sequence_tasks=16)
    generic = _run(case, 16, 1, "generic", sequence_tasks=0)
    assert torch.equal(one, many)
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(one[:n], want[:n], atol=atol, rtol=rtol)
    torch.testing.assert_close(generic[:n], want[:n], atol=atol, rtol=rtol)


def test_blocks_of_partial_tiles_stay_per_head(passive):
    """Blocks of 24 positions split the 16-position score tiles: those calls keep per-head
    tasks (one thread and three read the same bits) and match the reference."""
    case = make_case([c for c, _ in DECODES], [q for _, q in DECODES], block_size=24,
                     num_kv_heads=3, group=3, head_dim=64, dtype=torch.float32, seed=5)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    one = _run(case, len(DECODES), 1, sequence_tasks=0)
    assert torch.equal(one, _run(case, len(DECODES), 3, sequence_tasks=0))
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(one[:n], want[:n], atol=atol, rtol=rtol)
