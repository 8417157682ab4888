"""The small-rows GEMM's column-group kernel (csrc/small_gemm_groups.h, the "packed" weight
mode of kvsaga.engine.cpu_linear, on `pack_rows`' copy) against torch's matmul, on every
tile width this CPU runs (64: AVX-512, 32: AVX2 + FMA).

Bounds: each output within 1e-5 of the largest |output| of its row-set plus a float64
reference's rounding (fp32 sums of K terms in another order than torch's); the kernel's own
documented order, one fused multiply-add a k in order, holds exactly: a row's outputs do
not depend on the other rows, their count, the thread count or the tile width. Columns past
N and rows past M are never written; `linear` never hands the kernel input it cannot read (it
takes another path, with F.linear's result), the kernel refuses a group width it lacks with a
ValueError, and `pack_rows` declines a weight it cannot copy (None).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from small_gemm_common import NOT_BUILT, _small_gemm, case, check, per_isa, supported

from kvsaga.engine import cpu_linear
from kvsaga.kernels import inplace

pytestmark = NOT_BUILT


def _widths() -> list[int]:
    return supported(64, 32)


WIDTHS = per_isa("group", 64, 32)


def _gemm(x, rows, n, threads=None, team=None):
    """cpu_linear._small_groups with small_gemm's defaults (valid input: `linear` checks it,
    test_linear_keeps_bad_input_off_the_groups_kernel)."""
    team = inplace.team_address() if team is None else team
    threads = torch.get_num_threads() if threads is None else threads
    return cpu_linear._small_groups(x, rows, n, threads, team, rows.bias)


@WIDTHS
@pytest.mark.parametrize("m", [1, 2, 3, 5, 6, 7, 13, 16])
@pytest.mark.parametrize("n,k", [(1, 1), (17, 5), (64, 576), (100, 33), (960, 576),
                                 (576, 1536), (130, 700)])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch(group, m, n, k, bias):
    x, w, b = case(m, n, k, bias)
    rows = cpu_linear.pack_rows(w, b, group)
    assert rows is not None and rows.group == group
    check(_gemm(x, rows, n, threads=1), x, w, b)


@WIDTHS
def test_strided_rows_and_an_lm_head_sized_weight(group):
    """Rows with a stride (a column slice of a wider tensor) read the right elements; a
    vocabulary-sized weight (SmolLM2's 49,152 x 576 LM head) in one call."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(49152, 576, generator=g) * 0.05
    x = torch.randn(4, 700, generator=g)[:, 50:626]
    assert x.stride(0) == 700
    rows = cpu_linear.pack_rows(w, None, group)
    check(_gemm(x, rows, 49152, threads=1), x, w, None)


@WIDTHS
def test_a_rows_outputs_do_not_depend_on_its_batch(group):
    """The same row alone, among 2, among 16, on one thread or two of torch's team, and
    through the other tile width: the same bits (one order of sums, fixed by k)."""
    x, w, b = case(16, 960, 576, True, seed=1)
    rows = cpu_linear.pack_rows(w, b, group)
    full = _gemm(x, rows, 960, threads=1)
    for i in (0, 5, 15):
        assert torch.equal(_gemm(x[i:i + 1], rows, 960, threads=1), full[i:i + 1])
    assert torch.equal(_gemm(x[3:5], rows, 960, threads=1), full[3:5])
    team = inplace.team_address()
    if team:
        assert torch.equal(_gemm(x, rows, 960, threads=2, team=team), full)
    for other in _widths():
        if other != group:
            o = cpu_linear.pack_rows(w, b, other)
            assert torch.equal(_gemm(x, o, 960, threads=1), full)


@WIDTHS
def test_writes_only_its_outputs(group):
    """Into a wider out buffer (row stride > N): columns past N and rows past M keep
    their values, including in the last, partly padded column group."""
    x, w, b = case(5, 70, 40, True)
    rows = cpu_linear.pack_rows(w, b, group)
    out = torch.full((6, 100), 7.0)
    _small_gemm.gemm_groups(x.data_ptr(), x.stride(0), 5, 40, rows.weight.data_ptr(), 70, group,
                     rows.bias.data_ptr(), out.data_ptr(), 100, 1, 0)
    check(out[:5, :70].clone(), x, w, b)
    assert (out[:5, 70:] == 7.0).all() and (out[5] == 7.0).all()


def _outcome(fn, *args):
    """fn(*args)'s result, or its error's type."""
    try:
        return fn(*args)
    except (RuntimeError, ValueError) as e:
        return type(e)


def test_linear_keeps_bad_input_off_the_groups_kernel(monkeypatch):
    """`linear` on a "packed" weight hands the column-group kernel only what it can read:
    an fp64, 3-D or column-major x, the wrong K, more than SMALL_ROWS rows, or a bias that is
    not fp32 [N] takes another path, with F.linear's result (or error type), and the kernel
    is not called. The good input (the control) is."""
    w, b = torch.randn(32, 16), torch.randn(32)
    packed = cpu_linear.pack(w, b, mode="packed")
    if packed is None or packed.rows is None:
        pytest.skip("no small-GEMM tiles on this CPU")
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)  # the kernel's path, any team
    calls = []
    kernel = cpu_linear._small_groups
    monkeypatch.setattr(cpu_linear, "_small_groups",
                        lambda *args: calls.append(args) or kernel(*args))
    x = torch.randn(3, 16)
    check(cpu_linear.linear(x, w, b, packed), x, w, b)
    assert len(calls) == 1
    bad = {"float64": (x.double(), b), "column-major rows": (torch.randn(16, 3).T, b),
           "wrong K": (torch.randn(3, 15), b), "3-D": (torch.randn(2, 3, 16), b),
           "more than SMALL_ROWS rows": (torch.randn(cpu_linear.SMALL_ROWS + 1, 16), b),
           "short bias": (x, torch.randn(31)), "fp64 bias": (x, b.double())}
    for what, (bad_x, bias) in bad.items():
        got = _outcome(cpu_linear.linear, bad_x, w, bias, packed)
        want = _outcome(F.linear, bad_x, w, bias)
        if isinstance(want, torch.Tensor):
            torch.testing.assert_close(got, want, msg=what)
        else:
            assert got is want, what
        assert len(calls) == 1, f"{what} reached the groups kernel"


def test_kernel_refuses_a_group_width_it_lacks():
    with pytest.raises(ValueError, match="group width 48"):
        _small_gemm.gemm_groups(0, 16, 1, 16, 0, 32, 48, 0, 0, 32, 1, 0)


@WIDTHS
def test_two_threads_with_a_partial_last_group(group):
    """Two of torch's team over 1000 columns (the last group partly padded on both widths),
    K 1024 (K % 64 == 0 but several spans): torch's result, and the bits of one thread."""
    team = inplace.team_address()
    if not team:
        pytest.skip("no OpenMP team to join")
    x, w, b = case(7, 1000, 1024, True, seed=2)
    rows = cpu_linear.pack_rows(w, b, group)
    two = _gemm(x, rows, 1000, threads=2, team=team)
    check(two, x, w, b)
    assert torch.equal(two, _gemm(x, rows, 1000, threads=1))


@WIDTHS
@pytest.mark.parametrize("bias", [False, True])
def test_k_zero_writes_the_bias(group, bias):
    """No products (K = 0): every output is its bias, or 0, not the buffer's old bits."""
    b = torch.randn(70) if bias else None
    rows = cpu_linear.pack_rows(torch.randn(70, 0), b, group)
    assert rows is not None
    want = F.linear(torch.randn(3, 0), torch.randn(70, 0), b)
    assert torch.equal(_gemm(torch.randn(3, 0), rows, 70, threads=1), want)
    out = torch.full((3, 80), float("nan"))
    _small_gemm.gemm_groups(torch.randn(3, 0).data_ptr(), 0, 3, 0, rows.weight.data_ptr(), 70,
                            group, 0 if b is None else rows.bias.data_ptr(), out.data_ptr(),
                            80, 1, 0)
    assert torch.equal(out[:, :70], want) and out[:, 70:].isnan().all()


def test_pack_rows_declines_what_the_kernel_cannot_read():
    """Other dtypes, devices or ranks (a half weight once crashed the process), and a bias
    that is not fp32 [N] on the CPU: None, so callers keep another path."""
    if cpu_linear.pack_rows(torch.randn(8, 4)) is None:
        pytest.skip("no small-GEMM tiles on this CPU")
    w = torch.randn(96, 40)
    for what, args in {"fp16 weight": (w.half(), None), "bf16 weight": (w.bfloat16(), None),
                       "meta weight": (w.to("meta"), None), "1-D weight": (w[0], None),
                       "3-D weight": (w.view(2, 48, 40), None),
                       "fp16 bias": (w, torch.randn(96).half()),
                       "short bias": (w, torch.randn(95)), "2-D bias": (w, torch.randn(1, 96)),
                       "meta bias": (w, torch.randn(96, device="meta"))}.items():
        assert cpu_linear.pack_rows(*args) is None, what
    # a non-contiguous fp32 weight is copied, not refused
    t = torch.randn(40, 96).T
    rows = cpu_linear.pack_rows(t)
    x = torch.randn(3, 40)
    check(_gemm(x, rows, 96, threads=1), x, t, None)
