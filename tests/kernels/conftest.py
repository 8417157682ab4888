"""Kernel tests: Triton kernels run on CUDA when there is one, else under the interpreter."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def triton_device(monkeypatch: pytest.MonkeyPatch) -> str:
    """Route kvsaga.kernels to Triton; returns the device the test tensors go on.

    On CPU the dispatcher sets TRITON_INTERPRET=1 before the kernel modules are imported.
    """
    monkeypatch.setenv("KVSAGA_KERNELS", "triton")
    return "cuda" if torch.cuda.is_available() else "cpu"
