"""The small-rows GEMM (csrc/small_gemm.cpp, through kvsaga.engine.cpu_linear) against
torch's matmul, on every ISA this CPU runs (2: AVX-512, 1: AVX2 + FMA), reading the weight
in its plain [N, K] layout (no copy).

Bounds: each output within 1e-5 of the largest |output| of its row-set plus a float64
reference's rounding (fp32 sums of K terms in another order than torch's); the kernel's own
documented order (16 lane sums over k in order, one fixed reduction tree) holds exactly: a
row's outputs do not depend on the other rows, their count, the thread count, the ISA or
which tile (4 weight rows, or one) computed them. Columns past N and rows past M are never
written; bad input is refused with a ValueError.
"""

from __future__ import annotations

import pytest
import torch
from small_gemm_common import NOT_BUILT, _small_gemm, case, check, per_isa, supported

from kvsaga.engine import cpu_linear
from kvsaga.kernels import inplace

pytestmark = NOT_BUILT


def _isas() -> list[int]:
    return supported(2, 1)


ISAS = per_isa("isa", 2, 1)


@ISAS
@pytest.mark.parametrize("m", [1, 2, 3, 5, 6, 7, 13, 16])
@pytest.mark.parametrize("n,k", [(1, 1), (17, 5), (64, 576), (100, 33), (960, 576),
                                 (576, 1536), (130, 700), (9, 2100)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch(isa, m, n, k, bias):
    """K below, at and past a 16-lane step, over several chunks of K with several row
    blocks; N in whole tiles and with one-row tiles left."""
    x, w, b = case(m, n, k, bias)
    check(cpu_linear.small_gemm(x, w, b, threads=1, isa=isa), x, w, b)


@ISAS
@pytest.mark.parametrize("m", range(1, 18))
def test_every_row_count_over_chunks_of_k(isa, m):
    """1-17 rows against N = 37 (tiles of 4 or 3 and one-row tiles left) and K = 1,111:
    several chunks of K (`chunk_k`: fewer rows, longer chunks) with a masked last step,
    from strided rows of x and of the weight; the bits of each row computed alone."""
    g = torch.Generator().manual_seed(100 + m)
    w = (torch.randn(37, 1200, generator=g) * 0.05)[:, 40:1151]
    x = torch.randn(m, 1250, generator=g)[:, 3:1114]
    b = torch.randn(37, generator=g)
    got = cpu_linear.small_gemm(x, w, b, threads=1, isa=isa)
    check(got, x, w, b)
    for i in {0, m // 2, m - 1}:
        assert torch.equal(cpu_linear.small_gemm(x[i:i + 1], w, b, threads=1, isa=isa),
                           got[i:i + 1])


@ISAS
def test_strided_rows_and_an_lm_head_sized_weight(isa):
    """Rows with a stride (column slices of wider tensors, for x and for the weight) read
    the right elements; a vocabulary-sized weight (SmolLM2's 49,152 x 576 LM head)."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(49152, 576, generator=g) * 0.05
    x = torch.randn(4, 700, generator=g)[:, 50:626]
    assert x.stride(0) == 700
    check(cpu_linear.small_gemm(x, w, threads=1, isa=isa), x, w, None)
    ws = torch.randn(70, 600, generator=g)[:, 7:583]
    assert ws.stride(0) == 600
    check(cpu_linear.small_gemm(x, ws, threads=1, isa=isa), x, ws, None)


@ISAS
def test_a_rows_outputs_do_not_depend_on_its_batch(isa):
    """The same row alone, among 2, among 16, on one thread or two of torch's team, through
    the other ISA, and a column computed in a 4-row tile or a one-row tail tile: the same
    bits (one order of sums)."""
    x, w, b = case(16, 962, 576, True, seed=1)
    full = cpu_linear.small_gemm(x, w, b, threads=1, isa=isa)
    for i in (0, 5, 15):
        assert torch.equal(cpu_linear.small_gemm(x[i:i + 1], w, b, threads=1, isa=isa),
                           full[i:i + 1])
    assert torch.equal(cpu_linear.small_gemm(x[3:5], w, b, threads=1, isa=isa), full[3:5])
    # columns 960, 961 fall in one-row tiles here and in a 4-row tile from 958
    assert torch.equal(cpu_linear.small_gemm(x, w[958:], b[958:], threads=1, isa=isa),
                       full[:, 958:])
    team = inplace.team_address()
    if team:
        assert torch.equal(cpu_linear.small_gemm(x, w, b, threads=2, team=team, isa=isa), full)
    for other in _isas():
        if other != isa:
            assert torch.equal(cpu_linear.small_gemm(x, w, b, threads=1, isa=other), full)


@ISAS
def test_writes_only_its_outputs(isa):
    """Into a wider out buffer (row stride > N): columns past N and rows past M keep
    their values."""
    x, w, b = case(5, 70, 40, True)
    out = torch.full((6, 100), 7.0)
    _small_gemm.gemm(x.data_ptr(), x.stride(0), 5, 40, w.data_ptr(), w.stride(0), 70,
                     b.data_ptr(), out.data_ptr(), 100, 1, 0, isa)
    check(out[:5, :70].clone(), x, w, b)
    assert (out[:5, 70:] == 7.0).all() and (out[5] == 7.0).all()


def test_refuses_bad_input():
    if cpu_linear.ISA == 0:
        pytest.skip("no small-GEMM tiles on this CPU")
    w = torch.randn(32, 16)
    bad = {"float64": torch.randn(3, 16, dtype=torch.float64),
           "column-major rows": torch.randn(16, 3).T, "3-D": torch.randn(2, 3, 16)}
    for what, x in bad.items():
        with pytest.raises(ValueError, match="x must"):
            cpu_linear.small_gemm(x, w)
            pytest.fail(f"accepted {what}")
    with pytest.raises(ValueError, match="differ in K"):
        cpu_linear.small_gemm(torch.randn(3, 15), w)
    with pytest.raises(ValueError, match="weight must"):
        cpu_linear.small_gemm(torch.randn(3, 32), w.T)
    with pytest.raises(ValueError, match="bias must"):
        cpu_linear.small_gemm(torch.randn(3, 16), w, torch.randn(31))
    with pytest.raises(ValueError, match="isa 3"):
        _small_gemm.gemm(0, 16, 1, 16, 0, 16, 32, 0, 0, 32, 1, 0, 3)


@ISAS
def test_two_threads_with_a_partial_last_tile(isa):
    """Two of torch's team over 1001 columns (tiles of 4 and 3 leave rows over), K 1024:
    torch's result, and the bits of one thread."""
    team = inplace.team_address()
    if not team:
        pytest.skip("no OpenMP team to join")
    x, w, b = case(7, 1001, 1024, True, seed=2)
    two = cpu_linear.small_gemm(x, w, b, threads=2, team=team, isa=isa)
    check(two, x, w, b)
    assert torch.equal(two, cpu_linear.small_gemm(x, w, b, threads=1, isa=isa))
