"""fp32 linear layers on CPU: oneDNN for prefill-sized row counts, kvsaga's own small-rows
GEMM (kvsaga._small_gemm) for a decode step's few rows; each weight held once, or (for
speed, on small models) beside two copies laid out for those kernels.

Why oneDNN: `F.linear` sends an fp32 CPU matmul to MKL's sgemm, which on an AMD EPYC
(AVX-512) took over twice the CPU time of oneDNN's matmul for SmolLM2-135M's projections
and LM head from 16 rows up (`python bench/engine_linear.py --threads 1 --rows 1 16 1024`;
its figures in docs/engine_profiles.md, "Linear layers").
vLLM's CPU backend makes the same choice: one oneDNN matmul per linear layer.

Why a GEMM of our own for few rows: oneDNN's linear spends ~19 us a call around its kernel
(primitive lookup, descriptors, the boxed dispatcher), 121 calls a decode step on the engine
thread while the other core waits (bench/RESULTS.md, "A small-rows GEMM for the decode
step's linears"); with 1-16 rows the matmul is one stream through the weight, which
csrc/small_gemm.cpp runs with every row's sums in registers (AVX-512, or AVX2 + FMA).

Two ways to hold the weights (`weights_mode`; bench/RESULTS.md, "One copy of each linear
weight"): "once", where oneDNN reorders the plain parameter inside each call and the small
GEMM reads its rows (csrc/small_gemm_tiles.h); and "packed", where `pack` adds oneDNN's
reordered copy and a column-group copy (`pack_rows`, csrc/small_gemm_groups.h) beside the
parameter: 3x the linear weights' memory (+1,026 MiB for SmolLM2-135M), measured faster
(`bench/engine_linear.py --modes`: "once" takes 0.96x-1.08x the CPU of SmolLM2-135M's step
linears at 1-16 rows, 1.07x-1.08x at 12-16, and 0.97x-1.06x of a Llama-3-8B layer's, since
the plain-layout tiles were blocked for L1 (bench/RESULTS.md, "The plain-layout tiles
blocked for L1"); 1.06-1.11x at 64-256 rows, oneDNN's reorder inside each call). A model
takes "packed" while its linear weights fit in `PACKED_MAX_BYTES` (1 GiB: the copies cost at
most 2 GiB), else "once"; KVSAGA_CPU_WEIGHTS overrides.

`pack` checks, once per weight, that each path agrees with `F.linear` on a random probe and
records which weight it checked. `linear` takes those paths while the weight is still that
one (same address, shape, strides and dtype, no in-place write since: `load_state_dict`,
`copy_`, a cast or `.data = ...` would otherwise run on stale copies or unchecked), and
`F.linear` otherwise, so CUDA, half precision and a torch without oneDNN run exactly as
before. A "packed" `Packed` holds the weight's storage, so a new tensor put behind the
parameter cannot take the old one's address while the copies live.

Not detected: a write through `.data` (`w.data.mul_(2)`, `w.data.copy_(...)`) or through
the memory directly (numpy, data_ptr). `.data` is an alias with a version counter of its
own, created afresh at each access (`w.data._version` is 0 after any such write, torch
2.13), so no counter moves; only a checksum of the whole weight (a read as long as the
GEMM's) would tell. "once" reads the weight in place, so it stays correct; "packed" would
run on the old copies: call `pack` (a model's `pack_weights()`) again after such a write.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from kvsaga import envs
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


# How a model holds its linear weights on CPU (`weights_mode`): "once" (the parameters
# alone; both paths read them in place) or "packed" (beside each parameter, oneDNN's
# reordered copy and the small GEMM's column-group copy: 3x the memory, faster where
# measured, bench/RESULTS.md "One copy of each linear weight"). KVSAGA_CPU_WEIGHTS sets it;
# unset, a model whose linear weights take at most PACKED_MAX_BYTES is packed (the copies
# cost at most 2x that) and a larger one is held once.
WEIGHTS_ENV = "KVSAGA_CPU_WEIGHTS"
PACKED_MAX_BYTES = 1 << 30
GROUP = 0 if _small_gemm is None else _small_gemm.group_width()


def weights_mode(linear_bytes: int) -> str:
    """"once" or "packed" for an fp32 CPU model whose linear weights take `linear_bytes`
    (see `WEIGHTS_ENV`, read through kvsaga.envs; set but empty counts as unset, "auto").
    ValueError for any other value of the environment variable."""
    mode = envs.KVSAGA_CPU_WEIGHTS
    if mode != "auto":
        return mode
    return "packed" if linear_bytes <= PACKED_MAX_BYTES else "once"


class Rows(NamedTuple):
    """The small GEMM's column-group copy of a weight [N, K] ("packed" mode): `weight`
    [ceil(N / group), K, group], k-major, columns past N zero; `bias` or None."""

    weight: torch.Tensor
    bias: torch.Tensor | None
    group: int


class Packed(NamedTuple):
    """Which paths `linear` may take for a weight, checked by `pack`, and the copies it
    made ("packed" mode) or None ("once": the paths read the weight in place)."""

    source: tuple  # the weight's `_source` (address, version, layout) when it was checked
    onednn: bool  # oneDNN's linear agreed with F.linear (else F.linear for many rows)
    small: bool  # the small GEMM agreed with F.linear (else oneDNN for few rows too)
    tensor: torch.Tensor | None = None  # oneDNN's reordered copy
    rows: Rows | None = None  # the small GEMM's column-group copy
    # "packed": the weight's storage when it was copied, held so that its address (in
    # `source`) cannot be given to a new weight while these copies would pass for it.
    storage: torch.UntypedStorage | None = None
    # The small GEMM runs this weight on the calling thread alone (`pack`'s `serial_below`):
    # its stream is too short to pay for waking torch's OpenMP workers.
    serial: bool = False


def _source(weight: torch.Tensor) -> tuple:
    # Shape, strides and dtype too: a `.data` view of the same storage keeps the pointer and
    # the version but can change N or K (the packed copies would be read past their end),
    # or the strides (`.data = .data.t()` of a square weight: the kernels read rows).
    return (weight.data_ptr(), weight._version, tuple(weight.shape), weight.stride(),
            weight.dtype)


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


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None,
         mode: str = "once", serial_below: int = 0) -> Packed | None:
    """Check, for `linear`, the paths that read fp32 CPU `weight` [N, K] in place: oneDNN's
    linear and (where this CPU has its tiles) the small GEMM. None, so F.linear, unless
    `weight` is a 2-D fp32 CPU tensor with contiguous rows and at least one path runs and
    agrees with `F.linear` on a random probe within 1e-4 of the largest output (a build
    whose kernels cannot run here must cost speed, never correctness). Copies nothing in
    `mode` "once"; "packed" adds oneDNN's reordered copy and the small GEMM's column-group
    copy (`pack_rows`), each probed the same way (one that fails is left out).
    `serial_below` (bytes, >= 0): a weight of fewer bytes takes the small GEMM on the calling
    thread alone (`Packed.serial`; the same bits: the kernel's sums do not depend on the
    thread count), 0 none; ValueError for a negative or non-integer value.
    """
    if mode not in ("once", "packed"):
        raise ValueError(f"mode must be 'once' or 'packed', got {mode!r}")
    if isinstance(serial_below, bool) or not isinstance(serial_below, int) or serial_below < 0:
        raise ValueError(f"serial_below must be an int >= 0 (bytes), got {serial_below!r}")
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
    serial = w.numel() * w.element_size() < serial_below
    if mode == "once":
        return Packed(source, onednn, small, serial=serial)
    tensor = None
    if onednn:
        try:
            tensor = ops._reorder_linear_weight(w.contiguous(), _PACK_ROWS)
            if not _agrees(ops._linear_pointwise(probe, tensor, bias, "none", [], ""), want):
                tensor = None
        except RuntimeError:
            tensor = None
    return Packed(source, onednn, small, tensor, pack_rows(w, bias), w.untyped_storage(),
                  serial)


# Rows oneDNN's reorder is laid out for ("packed" mode). oneDNN picks its blocking from it;
# 1 to 1024 rows ran within a few percent of each other at every batch size measured.
_PACK_ROWS = 64


def pack_rows(weight: torch.Tensor, bias: torch.Tensor | None = None,
              group: int | None = None) -> Rows | None:
    """The small GEMM's column-group copy of fp32 CPU `weight` [N, K] (and `bias` [N]) in
    groups of `group` (default: this CPU's, `GROUP`), or None where there are no tiles for
    it, the weight is not a 2-D fp32 CPU tensor, the bias (if any) is not a 1-D fp32 CPU
    tensor of N elements, or the copy disagrees with `F.linear` on a random probe."""
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
        got = _small_groups(probe, rows, n, 1, 0, rows.bias)
    except ValueError:  # no tiles of this width on this CPU
        return None
    return rows if _agrees(got, F.linear(probe, weight.detach(), bias)) else None


def _small_groups(x: torch.Tensor, rows: Rows, n: int, threads: int, team: int,
                  bias: torch.Tensor | None) -> torch.Tensor:
    """The column-group kernel, unchecked (as `_small`): x [M, K] rows contiguous, `bias`
    contiguous fp32 of at least n elements or None."""
    out = x.new_empty((x.shape[0], n))
    _small_gemm.gemm_groups(x.data_ptr(), x.stride(0), x.shape[0], x.shape[1],
                            rows.weight.data_ptr(), n, rows.group,
                            0 if bias is None else bias.data_ptr(), out.data_ptr(), n,
                            threads, team)
    return out


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


def _needs_graph(*tensors: torch.Tensor | None) -> bool:
    """Whether autograd must record this call: grad enabled and an input requiring grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    packed: Packed | None,
) -> torch.Tensor:
    """x @ weight.T + bias: through the paths `packed` (from `pack(weight)`) checked, else
    F.linear.

    An input that is not fp32 on CPU (a model moved or cast after packing), or a weight
    changed since it was checked (written in place, new storage, or a new shape, strides
    or dtype; or an inference tensor, which `pack` never checks), takes F.linear; a write
    through `.data` is not seen (module docstring). A
    2-D input of up to `SMALL_ROWS` rows whose rows are contiguous takes the small GEMM
    where it was checked, the bias (if any) is fp32 [N] on the CPU, and either
    one thread runs or torch's OpenMP team is joinable (else oneDNN, which has its own
    threads), on the calling thread alone where `packed.serial`. Everything else takes
    oneDNN where it was checked, else F.linear.

    While grad is enabled and x, weight or bias requires grad, F.linear runs: neither the
    small GEMM nor oneDNN's `_linear_pointwise` has a backward, so they would drop the graph.
    """
    if packed is None or not x.is_cpu or x.dtype != torch.float32:
        return F.linear(x, weight, bias)
    try:
        changed = packed.source != _source(weight)
    except RuntimeError:
        # An inference tensor has no version counter: `pack` never checks one, so it is not
        # the checked weight (e.g. weights reloaded with assign=True under inference_mode).
        changed = True
    if changed or _needs_graph(x, weight, bias):
        return F.linear(x, weight, bias)
    if ((packed.small or packed.rows is not None) and x.dim() == 2
            and x.shape[0] <= SMALL_ROWS and x.stride(1) == 1
            and x.shape[1] == weight.shape[1]
            and (bias is None or _bias_fits(bias, weight.shape[0]))):
        team = inplace.team_address()
        threads = torch.get_num_threads()
        if team or threads == 1:
            if packed.serial:
                threads = 1  # no parallel region: the workers stay asleep
            b = None if bias is None else bias.detach().contiguous()
            if packed.rows is not None:
                return _small_groups(x, packed.rows, weight.shape[0], threads, team, b)
            return _small(x, weight, b, threads, team)
    if packed.tensor is not None:
        return torch.ops.mkldnn._linear_pointwise(x, packed.tensor, bias, "none", [], "")
    if packed.onednn:
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)
