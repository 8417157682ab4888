"""The kernel's AVX2 + FMA tiles (csrc/paged_attn_avx2.h) against the torch reference.

Why a file of its own: the AVX-512 tiles ran on the hosts the kernel was written on, and a
CPU with AVX2 but no AVX-512 (the host of 2026-12-01) sent prefill and extend rows to SDPA.
These tests say which tiles this CPU gets (from /proc/cpuinfo, independent of the kernel's
own check) and, on any AVX2 host (the kernel's `isa="avx2"` forces those tiles where
AVX-512 would be picked, so CI's AVX-512 hosts run them too), hold both AVX2 paths
("rows": the row tiles; "auto": the extend GEMM for tasks of 8 or more query heads) to the
reference over the shapes that
stress the 8-lane layout: contexts that are not multiples of 8, partial lane vectors, GQA
groups that do not fill a tile of 3 heads, decode, prefill and extend rows.
"""

from __future__ import annotations

import pytest
import torch
from paged_case import GUARD, TOLERANCES, make_case

from kvsaga.kernels import inplace, reference

pytestmark = pytest.mark.skipif(not inplace.available(), reason="kvsaga._paged_attn not built")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


FLAGS = _cpu_flags()
AVX2 = {"avx2", "fma"} <= FLAGS
needs_avx2 = pytest.mark.skipif(not AVX2, reason="not an AVX2 + FMA CPU")


def attend(case, out: torch.Tensor, path: str) -> None:
    """The kernel on `path`, its tiles (auto, rows) the AVX2 ones whatever this CPU has."""
    inplace.paged_attention(case.attention_args(), out, None, path=path,
                            isa=None if path == "generic" else "avx2")


@pytest.mark.skipif(not FLAGS, reason="no /proc/cpuinfo flags to compare with")
def test_kernel_reports_the_tiles_this_cpu_has():
    """tile_isa names what the CPU's flags allow; has_tiles (which sends prefill and extend
    rows to the kernel) follows it."""
    want = ("avx512" if "avx512f" in FLAGS else
            "avx2" if {"avx2", "fma"} <= FLAGS else "")
    assert inplace.tile_isa() == want
    assert inplace.has_tiles(64) == inplace.has_tiles(128) == (want != "")
    assert not inplace.has_tiles(40)


# (context, new tokens) per sequence.
SHAPES = {
    "decode": [(1, 1), (7, 1), (8, 1), (9, 1), (31, 1), (33, 1), (301, 1)],
    "prefill": [(1, 1), (7, 7), (9, 9), (40, 40), (131, 131)],
    "extend": [(12, 3), (17, 2), (53, 20), (300, 70), (1041, 17), (20, 0)],
}


@needs_avx2
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [1, 2, 3, 4, 8])
@pytest.mark.parametrize("kind", sorted(SHAPES))
@pytest.mark.parametrize("path", ["rows", "auto"])
def test_avx2_tiles_match_reference(path, kind, group, head_dim):
    """NaN-poisoned tier (paged_case): no stray read or write, outputs within the fp32
    tolerance of the reference; and not the generic loops' bits everywhere (so the tiles,
    whose sums run in another order, are what ran)."""
    pairs = SHAPES[kind]
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=16,
                     num_kv_heads=2, group=group, head_dim=head_dim, dtype=torch.float32,
                     seed=group * 7 + head_dim + len(kind))
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    got, generic = case.guarded_out(), case.guarded_out()
    attend(case, got, path)
    attend(case, generic, "generic")
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[torch.float32]
    assert not got[:n].isnan().any(), "NaN in the output: a poisoned slot was read"
    torch.testing.assert_close(got[:n], want[:n], atol=atol, rtol=rtol)
    assert (got[n:] == GUARD).all(), "padding output rows were written"
    assert not torch.equal(got[:n], generic[:n]), "the generic loops ran, not the tiles"


@needs_avx2
@pytest.mark.parametrize("head_dim", [64, 128])
def test_avx2_extend_gemm_and_row_tiles_differ_in_order_only(head_dim):
    """An extend task of 16 rows x group 3 (48 query heads: six lane vectors) runs the
    GEMM on `auto` and the row tiles on `rows`: both match the reference and each other
    to fp32 tolerance, but not bit for bit (two different kernels ran)."""
    case = make_case([700], [48], block_size=32, num_kv_heads=3, group=3,
                     head_dim=head_dim, dtype=torch.float32, seed=5)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    out = {p: case.guarded_out() for p in ("auto", "rows")}
    for p, o in out.items():
        attend(case, o, p)
    atol, rtol = TOLERANCES[torch.float32]
    for o in out.values():
        torch.testing.assert_close(o[:48], want[:48], atol=atol, rtol=rtol)
    assert not torch.equal(out["auto"][:48], out["rows"][:48])


@needs_avx2
@pytest.mark.parametrize("spread", [1.0, 4.0, 1000.0])
@pytest.mark.parametrize("group", [1, 2, 3])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_avx2_extend_gemm_chunks_match_reference(head_dim, group, spread):
    """The AVX2 extend GEMM walks a task's context in chunks of 64 positions with an online
    softmax (each lane's running maximum and sum; the output accumulators rescaled when a
    maximum moves): contexts of one to several chunks, not multiples of 64 or 8, tasks whose
    rows end inside a chunk (the causal mask there) or on its edge, partial lane vectors
    (groups 1-3 give 8 to 48 query heads a task), and queries scaled so that the maximum
    moves from chunk to chunk and exp underflows: `auto` matches the reference, and it is
    the GEMM that ran there (not the row tiles' bits). At a spread of 1,000 the scores
    reach thousands and every fp32 path (the generic loops too) rounds them past the
    usual tolerance: there `auto` must be within twice the generic loops' own error."""
    pairs = [(64, 16), (65, 16), (200, 37), (319, 40), (129, 129), (330, 8), (1041, 17)]
    case = make_case([c for c, _ in pairs], [q for _, q in pairs], block_size=32,
                     num_kv_heads=2, group=group, head_dim=head_dim, dtype=torch.float32,
                     seed=int(spread) + group * 3 + head_dim)
    case.query.mul_(spread)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    got = {p: case.guarded_out() for p in ("auto", "rows", "generic")}
    for p, o in got.items():
        attend(case, o, p)
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[torch.float32]
    assert not got["auto"][:n].isnan().any(), "NaN in the output: a poisoned slot was read"
    if spread < 100:
        torch.testing.assert_close(got["auto"][:n], want[:n], atol=atol, rtol=rtol)
    else:
        generic = (got["generic"][:n] - want[:n]).abs().max().item()
        assert (got["auto"][:n] - want[:n]).abs().max().item() <= 2 * generic + atol
    assert (got["auto"][n:] == GUARD).all(), "padding output rows were written"
    assert not torch.equal(got["auto"][:n], got["rows"][:n]), "the GEMM did not run"


@needs_avx2
@pytest.mark.skipif("avx512f" not in FLAGS, reason="no AVX-512 tiles to set the AVX2 ones beside")
@pytest.mark.parametrize("path", ["rows", "auto"])
def test_forced_avx2_tiles_are_not_the_avx512_ones(path):
    """On an AVX-512 CPU `isa="avx2"` runs other tiles (8 lanes, not 16: other sums, other
    bits) that still match the reference, so the tests above hold the AVX2 tiles here."""
    case = make_case([1041, 300], [17, 70], block_size=16, num_kv_heads=2, group=3,
                     head_dim=128, dtype=torch.float32, seed=11)
    want = reference.paged_attention(case.attention_args(), case.guarded_out())
    native, forced = case.guarded_out(), case.guarded_out()
    inplace.paged_attention(case.attention_args(), native, None, path=path)
    attend(case, forced, path)
    n = case.query.shape[0] - case.num_pad_rows
    atol, rtol = TOLERANCES[torch.float32]
    torch.testing.assert_close(forced[:n], want[:n], atol=atol, rtol=rtol)
    assert not torch.equal(forced[:n], native[:n])


@pytest.mark.parametrize("isa, path", [("avx512", "auto"), ("AVX2", "rows"), ("avx2", "generic")])
def test_a_bad_isa_is_refused(isa, path):
    case = make_case([9], [9], block_size=16, num_kv_heads=1, group=1, head_dim=64,
                     dtype=torch.float32, seed=1)
    out = case.guarded_out()
    with pytest.raises(ValueError, match="isa must be None or 'avx2'"):
        inplace.paged_attention(case.attention_args(), out, None, path=path, isa=isa)
    assert (out == GUARD).all()
