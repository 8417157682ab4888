"""`paged_attention`'s `out` may be the query itself (kvsaga.kernels.paged_attention): every
in-place kernel path reads a task's query rows before it writes the same rows and heads, and
no task reads rows or heads another task writes. Held here on each path the C++ kernel has
(the row tiles, the extend GEMMs, the whole-sequence decode tasks, the generic loops, the
AVX2 twins) against the same call with a separate output, bit for bit (review s51 kernels:
checked and sound)."""

from __future__ import annotations

import pytest
import torch
from paged_case import make_case

from kvsaga.kernels import inplace

pytestmark = pytest.mark.skipif(not inplace.available(), reason="kvsaga._paged_attn not built")

# (context, new tokens): decodes around block edges, prefill, an extend of 40 rows (three
# tasks of 16 rows, the GEMM's lanes full with any group), a sequence with no new token.
PAIRS = [(1, 1), (16, 1), (17, 1), (33, 1), (70, 1), (45, 45), (90, 40), (20, 0), (200, 1),
         (31, 1), (64, 1), (129, 1)]


def _paths() -> list[tuple[str, str | None]]:
    paths = [("auto", None), ("rows", None), ("generic", None)]
    if inplace.tile_isa():  # an AVX-512 or AVX2 + FMA host: the AVX2 twins run too
        paths += [("auto", "avx2"), ("rows", "avx2")]
    return paths


@pytest.mark.parametrize("path,isa", _paths())
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("head_dim,group,kv_heads,block_size",
                         [(64, 3, 3, 16), (128, 8, 2, 16), (64, 1, 4, 5), (80, 2, 2, 32)])
def test_out_may_be_the_query_on_every_inplace_path(path, isa, threads, head_dim, group,
                                                    kv_heads, block_size):
    case = make_case([c for c, _ in PAIRS], [q for _, q in PAIRS], block_size=block_size,
                     num_kv_heads=kv_heads, group=group, head_dim=head_dim,
                     dtype=torch.float32, num_pad_rows=0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        want = torch.zeros_like(case.query)
        inplace.paged_attention(case.attention_args(), want, None, path=path, isa=isa)
        seq_tasks = inplace.last_sequence_tasks()
        case.query = case.query.clone()
        inplace.paged_attention(case.attention_args(), case.query, None, path=path, isa=isa)
        assert inplace.last_sequence_tasks() == seq_tasks  # the same tasks ran
    finally:
        torch.set_num_threads(before)
    assert not want.isnan().any()
    assert torch.equal(case.query, want)


@pytest.mark.skipif(inplace.tile_isa() != "avx512", reason="whole-sequence tasks: AVX-512")
def test_the_whole_sequence_tasks_ran_in_the_alias_cases():
    """The cases above reach csrc/paged_attn_seq.h (one thread, several KV heads, blocks of
    16, a group under the GEMM's lanes): otherwise that path would go unheld here."""
    case = make_case([c for c, _ in PAIRS], [q for _, q in PAIRS], block_size=16,
                     num_kv_heads=3, group=3, head_dim=64, dtype=torch.float32, num_pad_rows=0)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inplace.paged_attention(case.attention_args(), case.query, None)
    finally:
        torch.set_num_threads(before)
    assert inplace.last_sequence_tasks() == sum(q == 1 for _, q in PAIRS)
