"""`cpu_linear.linear` with an inference tensor put where a packed weight was: F.linear, not
a RuntimeError (review s51 kernels, MED-1). `pack` refuses inference tensors (no version
counter to tell a later change), but `linear` asked the new weight for its version to
compare it with the packed one and raised "Inference tensors do not track version counter",
e.g. after a model's weights were reloaded with assign=True under inference_mode."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvsaga.engine import cpu_linear


@pytest.mark.parametrize("rows", [1, 3, 40])  # the small GEMM's row counts and oneDNN's
@pytest.mark.parametrize("mode", ["once", "packed"])
def test_an_inference_weight_in_place_of_the_packed_one_takes_f_linear(rows, mode):
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    packed = cpu_linear.pack(lin.weight, lin.bias, mode)
    if packed is None:
        pytest.skip("no checked CPU path here (no oneDNN, no small-GEMM tiles)")
    with torch.inference_mode():
        state = {k: torch.randn(v.shape, generator=g) for k, v in lin.state_dict().items()}
        lin.load_state_dict(state, assign=True)
    assert lin.weight.is_inference()
    x = torch.randn(rows, 64, generator=g)
    with torch.no_grad():
        got = cpu_linear.linear(x, lin.weight, lin.bias, packed)
    assert torch.equal(got, F.linear(x, lin.weight, lin.bias))  # the new weights, F.linear


def test_the_checked_weight_still_takes_its_paths_under_inference_mode():
    """The fallback is for a weight with no version counter only: the packed weight itself,
    called inside inference_mode, still agrees with F.linear through its own paths."""
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(48, 64, generator=g), torch.randn(48, generator=g)
    packed = cpu_linear.pack(w, b)
    if packed is None:
        pytest.skip("no checked CPU path here")
    x = torch.randn(2, 64, generator=g)
    with torch.inference_mode():
        got = cpu_linear.linear(x, w, b, packed)
    torch.testing.assert_close(got, F.linear(x, w, b), atol=1e-4, rtol=1e-4)
