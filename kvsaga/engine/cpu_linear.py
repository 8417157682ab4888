"""fp32 linear layers on CPU, each weight held once (the model's parameter): oneDNN for
prefill-sized row counts, kvsaga's own small-rows GEMM (kvsaga._small_gemm) for a decode
step's few rows, both reading the parameter as it is.

Why oneDNN: `F.linear` sends an fp32 CPU matmul to MKL's sgemm, which on an AMD EPYC
(AVX-512) took 2.2-2.6x the CPU time of oneDNN's matmul for every projection shape of
SmolLM2-135M (`python bench/engine_linear.py`; docs/architecture.md, "Where a CPU step's
time goes"). vLLM's CPU backend makes the same choice: one oneDNN matmul per linear layer.

Why a GEMM of our own for few rows: oneDNN's linear spends ~19 us a call around its kernel
(primitive lookup, descriptors, the boxed dispatcher), 121 calls a decode step on the engine
thread while the other core waits (bench/RESULTS.md, "A small-rows GEMM for the decode
step's linears"); with 1-16 rows the matmul is one stream through the weight, which
csrc/small_gemm.cpp runs with every row's sums in registers (AVX-512, or AVX2 + FMA).

Why no packed copies (bench/RESULTS.md, "One copy of each linear weight"): a reordered
oneDNN copy and a column-group copy for the small GEMM each cost the projection weights'
size again (+1,036 MiB for SmolLM2-135M, whose weights are 518 MiB; many GiB for a 1-8B
model). oneDNN now reorders the plain weight inside each call (a few percent of a
prefill-sized matmul), and the small GEMM reads the plain rows.

`pack` (the name is older than the change) checks, once per weight, that both paths agree
with `F.linear` on a random probe and records which weight it checked; it copies nothing.
`linear` takes those paths while the weight is still that one (same storage and shape, no
in-place write since: `load_state_dict`, `copy_` or a cast would otherwise run unchecked
code on new weights), and `F.linear` otherwise, so CUDA, half precision and a torch without
oneDNN run exactly as before.
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

# The small GEMM's ISA on this CPU, asked once: 2 (AVX-512), 1 (AVX2 + FMA), 0 (none, or
# not built: oneDNN takes every row count).
ISA = 0 if _small_gemm is None else _small_gemm.isa()

# Inputs of up to this many rows take the small GEMM (a decode step's, up to 16 sequences);
# more take oneDNN, whose blocking wins once the weight is reused across many rows.
SMALL_ROWS = 16


class Packed(NamedTuple):
    """Which paths `linear` may take for a weight, checked by `pack`; no copy of it."""

    source: tuple  # the weight's (data_ptr, version counter, shape) when it was checked
    onednn: bool  # oneDNN's linear agreed with F.linear (else F.linear for many rows)
    small: bool  # the small GEMM agreed with F.linear (else oneDNN for few rows too)


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
    """Check, for `linear`, the paths that read fp32 CPU `weight` [N, K] in place: oneDNN's
    linear and (where this CPU has its tiles) the small GEMM. None, so F.linear, unless
    `weight` is a 2-D fp32 CPU tensor with contiguous rows and at least one path runs and
    agrees with `F.linear` on a random probe within 1e-4 of the largest output (a build
    whose kernels cannot run here must cost speed, never correctness). Copies nothing.
    """
    if (weight.device.type != "cpu" or weight.dtype != torch.float32 or weight.dim() != 2
            or weight.stride(1) != 1):
        return None
    w = weight.detach()
    try:
        source = _source(weight)  # inference tensors have no version counter: not checked
    except RuntimeError:
        return None
    probe = _probe(w.shape[1])
    want = F.linear(probe, w, bias)
    onednn = False
    ops = _onednn_linear()
    if ops is not None:
        try:
            onednn = _agrees(ops._linear_pointwise(probe, w, bias, "none", [], ""), want)
        except RuntimeError:
            onednn = False
    small = False
    if ISA and w.shape[0] > 0 and (bias is None or _bias_fits(bias, w.shape[0])):
        b = None if bias is None else bias.detach().contiguous()
        try:
            small = _agrees(_small(probe, w, b, 1, 0), want)
        except ValueError:  # no tiles on this CPU
            small = False
    if not (onednn or small):
        return None
    return Packed(source, onednn, small)


def _probe(k: int) -> torch.Tensor:
    return torch.randn(3, k, generator=torch.Generator().manual_seed(0))


def _bias_fits(bias: torch.Tensor, n: int) -> bool:
    return (bias.dim() == 1 and bias.dtype == torch.float32 and bias.is_cpu
            and bias.shape[0] == n)


def small_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               threads: int | None = None, team: int | None = None,
               isa: int | None = None) -> torch.Tensor:
    """x @ weight.T + bias through the small GEMM, for x [M, K] and weight [N, K] fp32 on
    CPU, each with contiguous rows (any row stride), bias fp32 [N] contiguous or None;
    threads (default torch's) in `team` (default the kernels' own,
    `kvsaga.kernels.inplace.team_address`); `isa` 2 (AVX-512) or 1 (AVX2 + FMA), default
    `ISA`. ValueError for any other input, or an ISA this CPU lacks."""
    for name, t in (("x", x), ("weight", weight)):
        if t.dim() != 2 or t.dtype != torch.float32 or not t.is_cpu or t.stride(1) != 1:
            raise ValueError(f"{name} must be a 2-D fp32 CPU tensor with contiguous rows, got "
                             f"{tuple(t.shape)} {t.dtype} on {t.device}, strides {t.stride()}")
    if x.shape[1] != weight.shape[1]:
        raise ValueError(f"x {tuple(x.shape)} and weight {tuple(weight.shape)} differ in K")
    if bias is not None and not (_bias_fits(bias, weight.shape[0]) and bias.is_contiguous()):
        raise ValueError(f"bias must be a contiguous fp32 CPU tensor of {weight.shape[0]} "
                         f"elements, got {tuple(bias.shape)} {bias.dtype} on {bias.device}")
    if _small_gemm is None:
        raise ValueError("kvsaga._small_gemm is not built")
    team = inplace.team_address() if team is None else team
    threads = torch.get_num_threads() if threads is None else threads
    return _small(x, weight, bias, threads, team, ISA if isa is None else isa)


def _small(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, threads: int,
           team: int, isa: int | None = None) -> torch.Tensor:
    """`small_gemm` unchecked: `linear`'s path, after its own checks. `bias`: contiguous
    fp32 CPU of N elements, or None."""
    n = weight.shape[0]
    out = x.new_empty((x.shape[0], n))
    _small_gemm.gemm(x.data_ptr(), x.stride(0), x.shape[0], x.shape[1], weight.data_ptr(),
                     weight.stride(0), n, 0 if bias is None else bias.data_ptr(),
                     out.data_ptr(), n, threads, team, ISA if isa is None else isa)
    return out


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    packed: Packed | None,
) -> torch.Tensor:
    """x @ weight.T + bias: through the paths `packed` (from `pack(weight)`) checked, else
    F.linear.

    An input that is not fp32 on CPU (a model moved or cast after packing), or a weight
    changed since it was checked (written in place, new storage, or a new shape), takes
    F.linear. A 2-D input of up to `SMALL_ROWS` rows whose rows are contiguous takes the
    small GEMM where it was checked, the bias (if any) is fp32 [N] on the CPU, and either
    one thread runs or torch's OpenMP team is joinable (else oneDNN, which has its own
    threads); one that requires grad while grad is enabled does not. Everything else takes
    oneDNN where it was checked, else F.linear.
    """
    if (packed is None or not x.is_cpu or x.dtype != torch.float32
            or packed.source != _source(weight)):
        return F.linear(x, weight, bias)
    if (packed.small and x.dim() == 2 and x.shape[0] <= SMALL_ROWS and x.stride(1) == 1
            and x.shape[1] == weight.shape[1]
            and not (x.requires_grad and torch.is_grad_enabled())
            and (bias is None or _bias_fits(bias, weight.shape[0]))):
        team = inplace.team_address()
        threads = torch.get_num_threads()
        if team or threads == 1:
            b = None if bias is None else bias.detach().contiguous()
            return _small(x, weight, b, threads, team)
    if packed.onednn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
