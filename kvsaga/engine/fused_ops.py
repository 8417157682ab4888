"""The CPU engine's elementwise ops between its matmuls, one C++ call each
(kvsaga._fused_ops, csrc/fused_ops.cpp): RMSNorm, the residual add fused into it, SiLU x up.

Why: in an fp32 decode step the weights streamed through the caches leave every op between
two matmuls running cold, and on CPU torch's `F.rms_norm` is about eight ops; each call
cost ~120 us inside the step against ~13 us alone (bench/RESULTS.md, "Fewer calls between
the matmuls"). These run where `supports(...)` holds (built, fp32 CPU, rows contiguous);
the model keeps its torch ops everywhere else.

Numerics: the residual add is torch's bits (one fp32 add a element). The norm sums the
squares in 16 partial sums and takes 1 / sqrt, where torch reduces in its own order and
takes rsqrt; SiLU uses the C library's expf. Both differ from torch by a few ulp
(tests/engine/test_fused_ops.py states the bounds); greedy outputs still match transformers
(tests/engine's oracle tests).
"""

from __future__ import annotations

import torch

from kvsaga.kernels import inplace

try:
    from kvsaga import _fused_ops
except ImportError:  # not built: the model's torch ops run
    _fused_ops = None


def available() -> bool:
    """Whether the C++ ops were built."""
    return _fused_ops is not None


def supports(*tensors: torch.Tensor) -> bool:
    """Whether the ops can take these [rows, n] tensors (and 1-D weights): built, fp32 on
    CPU, the last dim contiguous."""
    return _fused_ops is not None and all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.stride(-1) == 1
        for t in tensors)


def _team() -> tuple[int, int]:
    """(threads, GOMP_parallel of torch's team or 0): rows split over torch's threads only
    inside its own team, so no thread of ours competes with them for a core."""
    team = inplace.team_address()
    return (torch.get_num_threads() if team else 1), team


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """F.rms_norm(x, (n,), weight, eps) for x [rows, n], as a new tensor (`supports`)."""
    _check(x, weight)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _fused_ops.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0],
                        x.shape[1], x.stride(0), out.stride(0), eps, *_team())
    return out


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """residual += x (in place), then (rms_norm(residual) * weight, residual): a pre-norm
    block's residual step and its next norm in one call (`supports`)."""
    _check(x, weight)
    if residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _fused_ops.add_rms_norm(x.data_ptr(), residual.data_ptr(), weight.data_ptr(),
                            out.data_ptr(), x.shape[0], x.shape[1], x.stride(0),
                            residual.stride(0), out.stride(0), eps, *_team())
    return out, residual


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [rows, 2n] holding gate then up, as [rows, n]
    (`supports`)."""
    if gate_up.dim() != 2 or gate_up.shape[1] % 2:
        raise ValueError(f"gate_up must be [rows, 2n], got {tuple(gate_up.shape)}")
    n = gate_up.shape[1] // 2
    out = gate_up.new_empty((gate_up.shape[0], n))
    _fused_ops.silu_mul(gate_up.data_ptr(), out.data_ptr(), gate_up.shape[0], n,
                        gate_up.stride(0), out.stride(0), *_team())
    return out


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"need x [rows, n] and weight [n], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")
    if not weight.is_contiguous():
        raise ValueError("weight must be contiguous")
