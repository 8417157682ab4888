"""fp32 linear layers on CPU, each weight packed once at load: oneDNN for prefill-sized row
counts, kvsaga's own small-rows GEMM (kvsaga._small_gemm) for a decode step's few rows.

Why oneDNN: `F.linear` sends an fp32 CPU matmul to MKL's sgemm, which on the AMD EPYC
(AVX-512) machine these benchmarks run on took 2.2-2.6x the CPU time of oneDNN's matmul for
every projection shape of SmolLM2-135M, and 3-4x for the LM head at decode sizes (`python
bench/engine_linear.py`; docs/architecture.md, "Where a CPU step's time goes"). vLLM's CPU
backend makes the same choice: one oneDNN matmul per linear layer, its weight prepacked.

Why a GEMM of our own for few rows: oneDNN's linear spends ~19 us a call around its kernel
(primitive lookup, descriptors, the boxed dispatcher), 121 calls a decode step on the engine
thread while the other core waits (bench/RESULTS.md, "A small-rows GEMM for the decode
step's linears"); with 1-16 rows the matmul is one stream through the weight, which
csrc/small_gemm.cpp runs with every row's sums in registers (AVX-512, or AVX2 + FMA).

`pack` makes oneDNN's blocked copy of a weight and, where the CPU has the small GEMM's tiles,
its column-group copy (`pack_rows`); the plain parameter stays: loading, `state_dict` and
the embedding keep using it; each copy costs the projection weights' size again in memory.
`linear` uses the copies when there are any and they still copy the weight (same storage
and shape, no in-place write since: `load_state_dict`, `copy_` or a cast would otherwise leave the
forward on the old weights), and `F.linear` otherwise, so CUDA, half precision and a torch
without oneDNN run exactly as before.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kvsaga.kernels import inplace

try:
    from kvsaga import _small_gemm
except ImportError:  # not built: oneDNN takes every row count
    _small_gemm = None

# Rows the reorder is laid out for. oneDNN picks its blocking from it; 1 to 1024 rows ran
# within a few percent of each other at every batch size measured, decode sizes included.
_PACK_ROWS = 64

# The small GEMM's column group width on this CPU, asked once: 64 (AVX-512), 32 (AVX2 +
# FMA), 0 (no tiles, or not built: no column-group copies).
GROUP = 0 if _small_gemm is None else _small_gemm.group_width()

# Inputs of up to this many rows take the small GEMM (a decode step's, up to 16 sequences);
# more take oneDNN, whose blocking wins once the weight is reused across many rows.
SMALL_ROWS = 16


class Rows(NamedTuple):
    """The small GEMM's copy of a weight [N, K]: `weight` [ceil(N / group), K, group],
    column groups k-major, columns past N zero; `bias` [ceil(N / group) * group] or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    group: int


class Packed(NamedTuple):
    """oneDNN's copy of a weight, which weight it copies, and the small GEMM's copy."""

    tensor: torch.Tensor
    source: tuple  # the weight's (data_ptr, version counter, shape) when it was packed
    rows: Rows | None = None


def _source(weight: torch.Tensor) -> tuple:
    # The shape too: a `.data` view of the same storage keeps the pointer and the version
    # but can change N or K, and the packed copies would be read past their end.
    return weight.data_ptr(), weight._version, tuple(weight.shape)


def _onednn_linear() -> object | None:
    """torch's oneDNN linear and weight reorder ops, or None where this build lacks them."""
    if not torch.backends.mkldnn.is_available():
        return None
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")):
        return None
    return ops


def _agrees(got: torch.Tensor, want: torch.Tensor) -> bool:
    # fp32 sums of K products in another order: errors scale with the outputs' magnitude,
    # so an element-wise tolerance would refuse good copies (outputs near zero); a broken
    # kernel is off by the outputs' own size.
    return bool((got - want).abs().max() <= 1e-4 * want.abs().max() + 1e-6)


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Packed | None:
    """oneDNN's reordered copy of `weight` [N, K] for `linear` (with the small GEMM's,
    `pack_rows`, where this CPU has its tiles), or None to keep `F.linear`.

    None unless `weight` is a 2-D fp32 CPU tensor and this torch has oneDNN's linear; also
    None when the packed matmul fails or disagrees with `F.linear` on a random probe by more
    than 1e-4 of the largest output (a build whose oneDNN cannot run here must cost speed,
    never correctness).
    """
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2:
        return None
    ops = _onednn_linear()
    if ops is None:
        return None
    w = weight.detach()
    try:
        source = _source(weight)  # inference tensors have no version counter: not packed
        packed = ops._reorder_linear_weight(w.contiguous(), _PACK_ROWS)
        probe = _probe(w.shape[1])
        got = ops._linear_pointwise(probe, packed, bias, "none", [], "")
    except RuntimeError:
        return None
    if not _agrees(got, F.linear(probe, w, bias)):
        return None
    return Packed(packed, source, pack_rows(w, bias))


def _probe(k: int) -> torch.Tensor:
    return torch.randn(3, k, generator=torch.Generator().manual_seed(0))


def pack_rows(weight: torch.Tensor, bias: torch.Tensor | None = None,
              group: int | None = None) -> Rows | None:
    """The small GEMM's copy of fp32 CPU `weight` [N, K] (and `bias` [N]) in column groups
    of `group` (default: this CPU's, `GROUP`), or None where there are no tiles for it, the
    weight is not a 2-D fp32 CPU tensor, the bias (if any) is not a 1-D fp32 CPU tensor of
    N elements, or the copy disagrees with `F.linear` on a random probe (as `pack` checks
    oneDNN's)."""
    group = GROUP if group is None else group
    if _small_gemm is None or group == 0:
        return None
    if weight.dim() != 2 or weight.dtype != torch.float32 or not weight.is_cpu:
        return None
    n, k = weight.shape
    if n == 0 or (bias is not None and not _bias_fits(bias, n)):
        return None
    groups = -(-n // group)
    padded = weight.new_zeros((groups * group, k))
    padded[:n] = weight.detach()
    rows = Rows(padded.view(groups, group, k).transpose(1, 2).contiguous(), None, group)
    if bias is not None:
        b = bias.new_zeros(groups * group)
        b[:n] = bias.detach()
        rows = rows._replace(bias=b)
    probe = _probe(k)
    try:
        got = small_gemm(probe, rows, n, threads=1)
    except ValueError:  # no tiles of this width on this CPU
        return None
    return rows if _agrees(got, F.linear(probe, weight.detach(), bias)) else None


def _bias_fits(bias: torch.Tensor, n: int) -> bool:
    return (bias.dim() == 1 and bias.dtype == torch.float32 and bias.is_cpu
            and bias.shape[0] == n)


def small_gemm(x: torch.Tensor, rows: Rows, n: int, threads: int | None = None,
               team: int | None = None) -> torch.Tensor:
    """x @ weight.T + bias through `rows` (`pack_rows(weight, bias)`; n: the weight's rows)
    for x [M, K] fp32 on CPU, its last dim contiguous; threads (default torch's) in `team`
    (default the kernels' own, `kvsaga.kernels.inplace.team_address`). ValueError for any
    other x, a `rows` that is not a contiguous fp32 CPU copy [ceil(n / group), K, group]
    (with a bias of ceil(n / group) * group fp32 CPU elements, or none), or a group width
    without tiles on this CPU."""
    if x.dim() != 2 or x.dtype != torch.float32 or not x.is_cpu or x.stride(1) != 1:
        raise ValueError(f"x must be a [M, K] fp32 CPU tensor with contiguous rows, got "
                         f"{tuple(x.shape)} {x.dtype} on {x.device}, strides {x.stride()}")
    w, g = rows.weight, rows.group
    if (w.dim() != 3 or w.dtype != torch.float32 or not w.is_cpu or not w.is_contiguous()
            or g <= 0 or w.shape[2] != g):
        raise ValueError(f"rows.weight must be a contiguous fp32 CPU tensor [groups, K, "
                         f"{g}], got {tuple(w.shape)} {w.dtype} on {w.device}")
    if n <= 0 or w.shape[0] != -(-n // g) or x.shape[1] != w.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and n {n} do not fit the packed weight "
                         f"{tuple(w.shape)} (groups of {g})")
    b = rows.bias
    if b is not None and (b.dim() != 1 or b.dtype != torch.float32 or not b.is_cpu
                          or not b.is_contiguous() or b.shape[0] != w.shape[0] * g):
        raise ValueError(f"rows.bias must be a contiguous fp32 CPU tensor of "
                         f"{w.shape[0] * g} elements, got {tuple(b.shape)} {b.dtype} on "
                         f"{b.device}")
    team = inplace.team_address() if team is None else team
    threads = torch.get_num_threads() if threads is None else threads
    return _small(x, rows, n, threads, team, b)


def _small(x: torch.Tensor, rows: Rows, n: int, threads: int, team: int,
           bias: torch.Tensor | None) -> torch.Tensor:
    """`small_gemm` unchecked: `linear`'s path, after its own checks. `bias`: contiguous
    fp32 CPU, at least n elements (the kernel reads columns below n only), or None."""
    out = x.new_empty((x.shape[0], n))
    _small_gemm.gemm(x.data_ptr(), x.stride(0), x.shape[0], x.shape[1],
                     rows.weight.data_ptr(), n, rows.group,
                     0 if bias is None else bias.data_ptr(), out.data_ptr(), n, threads, team)
    return out


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    packed: Packed | None,
) -> torch.Tensor:
    """x @ weight.T + bias: through `packed` (from `pack(weight)`) when given, else F.linear.

    An input that is not fp32 on CPU (a model moved or cast after packing), or a weight
    changed since it was packed (written in place, new storage, or a new shape), takes
    F.linear. `bias` is read at each call, on either path (not the packed copy's). A 2-D
    input of up to `SMALL_ROWS` rows whose rows are contiguous takes the small GEMM where
    the weight has its copy, the bias (if any) is fp32 [N] on the CPU, and either one
    thread runs or torch's OpenMP team is joinable (else oneDNN, which has its own
    threads); one that requires grad while grad is enabled takes oneDNN as before.
    """
    if (packed is None or not x.is_cpu or x.dtype != torch.float32
            or packed.source != _source(weight)):
        return F.linear(x, weight, bias)
    rows = packed.rows
    if (rows is not None and x.dim() == 2 and x.shape[0] <= SMALL_ROWS and x.stride(1) == 1
            and x.shape[1] == weight.shape[1]
            and not (x.requires_grad and torch.is_grad_enabled())
            and (bias is None or _bias_fits(bias, weight.shape[0]))):
        team = inplace.team_address()
        threads = torch.get_num_threads()
        if team or threads == 1:
            # The bias as it is now (the copy in `rows` is `pack_rows`'s, from pack time).
            b = None if bias is None else bias.detach().contiguous()
            return _small(x, rows, weight.shape[0], threads, team, b)
    return torch.ops.mkldnn._linear_pointwise(x, packed.tensor, bias, "none", [], "")
