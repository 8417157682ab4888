"""Kernel tests: Triton kernels run on CUDA when there is one, else under the interpreter."""

from __future__ import annotations

import os

import pytest
import torch

# Without CUDA, interpret from the start: Triton decorates its own @triton.jit helpers
# (`tl.cdiv`) when it is first imported, and a test module that imports it while collecting
# (test_kernel_launch_specs.py) would otherwise compile them before the dispatcher sets
# TRITON_INTERPRET=1 for the first CPU call; the kernels would then take the CPU path
# (kvsaga/kernels/__init__.py `_compiled_for_gpu`), not Triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture
def triton_device(monkeypatch: pytest.MonkeyPatch) -> str:
    """Route kvsaga.kernels to Triton; returns the device the test tensors go on (on CPU,
    Triton's interpreter runs the kernels)."""
    monkeypatch.setenv("KVSAGA_KERNELS", "triton")
    return "cuda" if torch.cuda.is_available() else "cpu"
