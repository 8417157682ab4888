"""fp32 linear layers on CPU through oneDNN, each weight reordered once at load.

Why: `F.linear` sends an fp32 CPU matmul to MKL's sgemm, which on the AMD EPYC (AVX-512)
machine these benchmarks run on took 2.2-2.6x the CPU time of oneDNN's matmul for every
projection shape of SmolLM2-135M, and 3-4x for the LM head at decode sizes (`python
bench/engine_linear.py`; docs/architecture.md, "Where a CPU step's time goes"). vLLM's CPU
backend makes the same choice: one oneDNN matmul per linear layer, its weight prepacked.

`pack` makes oneDNN's blocked copy of a weight (the plain parameter stays: loading,
`state_dict` and the embedding keep using it; the copy costs the projection weights' size
again in memory). `linear` uses the copy when there is one and it still copies the weight
(same storage, no in-place write since: `load_state_dict`, `copy_` or a cast would otherwise
leave the forward on the old weights), and `F.linear` otherwise, so CUDA, half precision and
a torch without oneDNN run exactly as before.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

# Rows the reorder is laid out for. oneDNN picks its blocking from it; 1 to 1024 rows ran
# within a few percent of each other at every batch size measured, decode sizes included.
_PACK_ROWS = 64


class Packed(NamedTuple):
    """oneDNN's copy of a weight, and which weight it copies."""

    tensor: torch.Tensor
    source: tuple[int, int]  # the weight's (data_ptr, version counter) when it was packed


def _source(weight: torch.Tensor) -> tuple[int, int]:
    return weight.data_ptr(), weight._version


def _onednn_linear() -> object | None:
    """torch's oneDNN linear and weight reorder ops, or None where this build lacks them."""
    if not torch.backends.mkldnn.is_available():
        return None
    ops = torch.ops.mkldnn
    if not (hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight")):
        return None
    return ops


def pack(weight: torch.Tensor, bias: torch.Tensor | None = None) -> Packed | None:
    """oneDNN's reordered copy of `weight` [N, K] for `linear`, or None to keep `F.linear`.

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
        probe = torch.randn(3, w.shape[1], generator=torch.Generator().manual_seed(0))
        got = ops._linear_pointwise(probe, packed, bias, "none", [], "")
    except RuntimeError:
        return None
    want = F.linear(probe, w, bias)
    # fp32 sums of K products in another order: errors scale with the outputs' magnitude,
    # so an element-wise tolerance would refuse good copies (outputs near zero); a broken
    # kernel is off by the outputs' own size.
    if (got - want).abs().max() > 1e-4 * want.abs().max() + 1e-6:
        return None
    return Packed(packed, source)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    packed: Packed | None,
) -> torch.Tensor:
    """x @ weight.T + bias: through `packed` (from `pack(weight)`) when given, else F.linear.

    An input that is not fp32 on CPU (a model moved or cast after packing), or a weight
    changed since it was packed, takes F.linear.
    """
    if (packed is None or not x.is_cpu or x.dtype != torch.float32
            or packed.source != _source(weight)):
        return F.linear(x, weight, bias)
    return torch.ops.mkldnn._linear_pointwise(x, packed.tensor, bias, "none", [], "")
