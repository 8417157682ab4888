"""The CPU engine's elementwise ops between its matmuls, one C++ call each
(kvsaga._fused_ops, csrc/fused_ops.cpp): RMSNorm, the residual add fused into it, SiLU x up.

Why: in an fp32 decode step the weights streamed through the caches leave every op between
two matmuls running cold; torch's `F.rms_norm` took ~118 us a call inside the step against
~13 us alone (bench/RESULTS.md, "Fewer calls between the matmuls"). These run where
`supports(...)` holds (built, fp32 CPU, the last dim contiguous, no autograd wanted); the
model keeps its torch ops everywhere else.

Checks: the C++ takes raw pointers and declares its rows `__restrict`, so the public ops
(`rms_norm`, `add_rms_norm`, `silu_mul`) raise ValueError, before anything is written,
unless every tensor is fp32 on CPU with its last dim contiguous, no tensor requires grad
while grad is enabled (the ops have no backward), a written tensor's rows do not overlap
(row stride >= n) and the residual shares no memory with x or the weight. The model calls
`_rms_norm` / `_add_rms_norm` / `_silu_mul` instead, unchecked, after one `supports` and
2-D test a forward pass (`model.StepArgs.fused`: the embedding output and every norm
weight): its other inputs are the sublayers' fresh contiguous fp32 outputs, and a decode
step makes 91 of these calls, so it does not pay for the checks 91 times.

Numerics: the residual add is torch's bits (one fp32 add a element). The norm sums the
squares in double and rounds 1 / sqrt once, where torch reduces in fp32 in its own order;
SiLU uses the C library's expf. Both differ from torch by a few ulp
(tests/engine/test_fused_ops.py states the bounds); greedy outputs still match transformers
(tests/engine's oracle tests). `add_rms_norm` bumps the residual's version counter as
torch's in-place ops do (except on inference tensors, which have none).
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
    CPU, the last dim contiguous, and none requiring grad while grad is enabled (the C++
    has no backward: such a call falls back to torch's ops, which keep the graph)."""
    if _fused_ops is None:
        return False
    grad = torch.is_grad_enabled()
    return all(
        t.device.type == "cpu" and t.dtype == torch.float32 and t.stride(-1) == 1
        and not (grad and t.requires_grad)
        for t in tensors)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """F.rms_norm(x, (n,), weight, eps) for x [rows, n], as a new tensor."""
    _check_norm(x=x, weight=weight)
    return _rms_norm(x, weight, eps)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """residual += x (in place), then (rms_norm(residual) * weight, residual): a pre-norm
    block's residual step and its next norm in one call."""
    _check_norm(x=x, residual=residual, weight=weight)
    if residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
    _check_rows_apart("residual", residual)
    for name, other in (("x", x), ("weight", weight)):
        if _overlap(residual, other):
            raise ValueError(f"residual shares memory with {name}: it is written in place "
                             "while read")
    out, residual = _add_rms_norm(x, residual, weight, eps)
    if not residual.is_inference():
        torch.autograd.graph.increment_version(residual)
    return out, residual


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up [rows, 2n] holding gate then up, as [rows, n]."""
    _check_tensor("gate_up", gate_up)
    if gate_up.dim() != 2 or gate_up.shape[1] % 2:
        raise ValueError(f"gate_up must be [rows, 2n], got {tuple(gate_up.shape)}")
    return _silu_mul(gate_up)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`rms_norm` unchecked: the model's path (the module docstring says why)."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _fused_ops.rms_norm(x.data_ptr(), weight.data_ptr(), out.data_ptr(), x.shape[0],
                        x.shape[1], x.stride(0), out.stride(0), eps, *_team())
    return out


def _add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`add_rms_norm` unchecked (no version bump: the model runs without autograd)."""
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    _fused_ops.add_rms_norm(x.data_ptr(), residual.data_ptr(), weight.data_ptr(),
                            out.data_ptr(), x.shape[0], x.shape[1], x.stride(0),
                            residual.stride(0), out.stride(0), eps, *_team())
    return out, residual


def _silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """`silu_mul` unchecked: the model's path."""
    n = gate_up.shape[1] // 2
    out = gate_up.new_empty((gate_up.shape[0], n))
    _fused_ops.silu_mul(gate_up.data_ptr(), out.data_ptr(), gate_up.shape[0], n,
                        gate_up.stride(0), out.stride(0), *_team())
    return out


def _team() -> tuple[int, int]:
    """(threads, GOMP_parallel of torch's team or 0): rows split over torch's threads only
    inside its own team, so no thread of ours competes with them for a core."""
    team = inplace.team_address()
    return (torch.get_num_threads() if team else 1), team


def _check_tensor(name: str, t: torch.Tensor) -> None:
    """What `supports` asks of one tensor, as a ValueError naming it."""
    if _fused_ops is None:
        raise ValueError("kvsaga._fused_ops is not built")
    if t.dtype != torch.float32:
        raise ValueError(f"{name} must be float32, got {t.dtype}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU, got {t.device}")
    if t.dim() == 0 or t.stride(-1) != 1:
        raise ValueError(f"{name} must have its last dim contiguous (stride 1), got "
                         f"strides {t.stride()}")
    if torch.is_grad_enabled() and t.requires_grad:
        raise ValueError(f"{name} requires grad: these ops have no backward (use torch's, "
                         "or run under torch.no_grad())")


def _check_norm(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        _check_tensor(name, t)
    x, weight = tensors["x"], tensors["weight"]
    if x.dim() != 2 or weight.shape != (x.shape[1],):
        raise ValueError(f"need x [rows, n] and weight [n], got {tuple(x.shape)} and "
                         f"{tuple(weight.shape)}")


def _check_rows_apart(name: str, t: torch.Tensor) -> None:
    """A written [rows, n] tensor's rows must not overlap (an `expand`ed row is one row)."""
    if t.shape[0] > 1 and t.stride(0) < t.shape[1]:
        raise ValueError(f"{name} is written in place, so its rows must not overlap: row "
                         f"stride {t.stride(0)} < width {t.shape[1]}")


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the byte ranges a and b span intersect (a superset of shared elements)."""
    if a.numel() == 0 or b.numel() == 0:
        return False

    def span(t: torch.Tensor) -> tuple[int, int]:
        last = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(),
                                                                strict=True))
        return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1
