"""Dispatch: which implementation runs, and kvsaga without Triton."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import kvsaga.kernels as kernels
from kvsaga import envs


@pytest.mark.parametrize(
    "mode,device,expected",
    [
        ("auto", "cpu", False),
        ("auto", "cuda", True),
        ("triton", "cpu", True),
        ("triton", "cuda", True),
        ("torch", "cpu", False),
        ("torch", "cuda", False),
    ],
)
def test_use_triton(monkeypatch, mode, device, expected):
    monkeypatch.setenv("KVSAGA_KERNELS", mode)
    assert kernels.use_triton(torch.device(device)) is expected


def test_bad_mode_names_the_variable(monkeypatch):
    monkeypatch.setenv("KVSAGA_KERNELS", "cuda")
    with pytest.raises(ValueError, match=r"KVSAGA_KERNELS='cuda': expected one of"):
        _ = envs.KVSAGA_KERNELS


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["triton"] = None  # `import triton` now raises ImportError, as if absent
    import torch
    import kvsaga
    import kvsaga.kernels as K
    from kvsaga.kernels import reference

    kv = torch.randn(4, 2, 2, 16, 1, 16)
    K.cache_write(torch.ones(1, 1, 16), torch.ones(1, 1, 16), kv[:, 0, 0], kv[:, 0, 1],
                  torch.tensor([17]))
    out = K.paged_attention(torch.randn(1, 2, 16), kv[:, 0, 0], kv[:, 0, 1],
                            torch.tensor([[2, 1]], dtype=torch.int32),
                            torch.tensor([18], dtype=torch.int32),
                            torch.tensor([0, 1], dtype=torch.int32), 0.25)
    assert out.shape == (1, 2, 16) and not out.isnan().any()
    ids = torch.tensor([1])
    K.scatter_blocks(K.gather_blocks(kv, ids), kv, torch.tensor([3]))
    K.block_copy(kv, ids, torch.tensor([0]))
    assert torch.equal(kv[0], kv[3])

    import os
    os.environ["KVSAGA_KERNELS"] = "triton"
    try:
        K.block_copy(kv, ids, torch.tensor([0]))
    except RuntimeError as e:
        assert "needs triton" in str(e), e
    else:
        raise AssertionError("ran a Triton kernel without triton")
    print("ok")
    """
)


def test_works_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "KVSAGA_KERNELS"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
