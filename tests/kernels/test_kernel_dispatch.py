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
        # under triton, CPU tensors take the CPU path on a host where CUDA is available
        # (the kernels are compiled for the GPU there; kvsaga/kernels/__init__.py)
        ("triton", "cpu", not torch.cuda.is_available()),
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


def _run(script: str, **env: str) -> subprocess.CompletedProcess:
    """`script` in a fresh interpreter (TRITON_INTERPRET and the kernel modules' state are
    process-wide), TRITON_INTERPRET unset, KVSAGA_KERNELS=triton, plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    base.update(KVSAGA_KERNELS="triton", **env)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=base,
                          capture_output=True, text=True, timeout=300)


COMPILED_THEN_CPU = """
    import importlib, logging, os
    import torch
    import kvsaga.kernels as K
    from kvsaga.kernels import reference as R
    from kvsaga.kernels.args import CacheWriteArgs, PagedAttentionArgs

    logging.basicConfig(level=logging.WARNING)
    # What a CUDA call does first: import the kernel modules compiled for the GPU.
    for m in ("blocks", "kv_write", "attention"):
        importlib.import_module("kvsaga.kernels." + m)
    assert not K.use_triton(torch.device("cpu"))
    torch.manual_seed(0)
    kv = torch.randn(6, 2, 2, 16, 1, 16)  # a host tier
    ids = torch.tensor([4, 1])
    assert torch.equal(K.gather_blocks(kv, ids), kv[ids])
    K.block_copy(kv, ids, torch.tensor([0, 2]))
    assert torch.equal(kv[0], kv[4]) and torch.equal(kv[2], kv[1])
    rows = torch.randn(2, 1, 16)
    want = kv.clone()
    K.cache_write(rows, rows + 1, kv[:, 0, 0], kv[:, 0, 1], torch.tensor([3, 40]))
    R.cache_write(CacheWriteArgs(rows, rows + 1, want[:, 0, 0], want[:, 0, 1],
                                 torch.tensor([3, 40])))
    assert torch.equal(kv, want)
    args = (torch.randn(2, 2, 16), kv[:, 1, 0], kv[:, 1, 1],
            torch.tensor([[3, 5], [1, 0]], dtype=torch.int32),
            torch.tensor([20, 7], dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32),
            0.25)
    out = K.paged_attention(*args, max_query_len=1)
    torch.testing.assert_close(out, R.paged_attention(PagedAttentionArgs(*args)))
    assert os.environ.get("TRITON_INTERPRET") is None
    print("ok")
"""


def test_cpu_tensors_take_the_cpu_path_once_kernels_are_compiled():
    """A GPU-compiled process (simulated: the modules imported without TRITON_INTERPRET)
    still serves CPU tensors (migration's host tier), on the CPU path, logged once."""
    result = _run(COMPILED_THEN_CPU)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
    assert result.stderr.count("CPU tensors run the CPU kernels") == 1, result.stderr
    assert "compiled for the GPU" in result.stderr


TRITON_FIRST_THEN_CPU = """
    import logging
    import triton  # by the caller or another library, before TRITON_INTERPRET=1 is set
    import torch
    import kvsaga.kernels as K
    from kvsaga.kernels import reference as R
    from kvsaga.kernels.args import PagedAttentionArgs

    logging.basicConfig(level=logging.WARNING)
    assert not K.use_triton(torch.device("cpu"))
    torch.manual_seed(0)
    kv = torch.randn(6, 16, 1, 16)
    args = (torch.randn(2, 2, 16), kv, kv, torch.tensor([[3, 5], [1, 0]], dtype=torch.int32),
            torch.tensor([20, 7], dtype=torch.int32), torch.tensor([0, 1, 2], dtype=torch.int32),
            0.25)
    out = K.paged_attention(*args, max_query_len=1)  # decode: its kernel calls tl.cdiv
    torch.testing.assert_close(out, R.paged_attention(PagedAttentionArgs(*args)))
    try:
        K._triton_module("attention", torch.device("cpu"))
    except RuntimeError as e:
        assert "triton.language" in str(e) and "before Triton is first imported" in str(e), e
    else:
        raise AssertionError("interpreted kernels would call Triton's compiled helpers")
    print("ok")
"""


def test_cpu_tensors_take_the_cpu_path_where_triton_was_imported_first():
    """Triton imported without TRITON_INTERPRET compiles its own @triton.jit helpers
    (`tl.cdiv`), which interpreted kernels cannot call: before, the dispatcher still set
    TRITON_INTERPRET=1 and the decode kernel failed in the interpreter ("Cannot call
    @triton.jit'd outside of the scope of a kernel"); now CPU tensors take the CPU path."""
    result = _run(TRITON_FIRST_THEN_CPU)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
    assert result.stderr.count("CPU tensors run the CPU kernels") == 1, result.stderr
    assert "['triton.language'] are compiled for the GPU" in result.stderr, result.stderr


CPU_THEN_CUDA = """
    import os
    import torch
    import kvsaga.kernels as K

    kv = torch.randn(4, 2, 8)
    assert torch.equal(K.gather_blocks(kv, torch.tensor([1, 2])), kv[1:3])  # interpreted
    assert os.environ.get("TRITON_INTERPRET") == "1"
    from kvsaga.kernels import attention, blocks
    assert attention.INTERPRETED
    try:
        K._triton_module("blocks", torch.device("cuda"))  # what a CUDA call runs first
    except RuntimeError as e:
        assert "TRITON_INTERPRET=1" in str(e) and "interpreted" in str(e), e
    else:
        raise AssertionError("a CUDA call would have run the interpreted kernels")
    print("ok")
"""


def test_cuda_call_after_the_dispatcher_set_interpret_raises():
    result = _run(CPU_THEN_CUDA)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")


CUDA_VISIBLE_CPU_CALL = """
    import os, sys
    import torch
    torch.cuda.is_available = lambda: True  # as in a process that may serve CUDA tensors
    import kvsaga.kernels as K

    kv = torch.randn(4, 2, 8)
    assert torch.equal(K.gather_blocks(kv, torch.tensor([1, 2])), kv[1:3])
    assert os.environ.get("TRITON_INTERPRET") is None  # the CUDA kernels stay compiled
    assert "kvsaga.kernels.blocks" not in sys.modules
    print("ok")
"""


def test_cpu_call_leaves_interpret_unset_where_cuda_is_available():
    result = _run(CUDA_VISIBLE_CPU_CALL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
    assert "CUDA is available" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for the interpreted module in "
                    "this process, which a host with CUDA refuses (its kernels are compiled)")
def test_upcast_follows_the_interpreter_not_the_device(monkeypatch):
    """bf16 under the interpreter needs UPCAST on any device: the launcher asks whether its
    kernels are interpreted, not whether the tensors are on CPU."""
    monkeypatch.setenv("KVSAGA_KERNELS", "triton")
    attention = kernels._triton_module("attention", torch.device("cpu"))
    seen = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *a, **kw: seen.extend([kw["UPCAST"]] if "UPCAST" in kw else [])

    monkeypatch.setattr(attention, "_prefill_kernel", Recorder())
    monkeypatch.setattr(attention, "_decode_split_kernel", Recorder())
    monkeypatch.setattr(attention, "_decode_reduce_kernel", Recorder())
    from kvsaga.kernels.args import PagedAttentionArgs

    kv = torch.zeros(4, 16, 1, 16)
    args = PagedAttentionArgs(torch.zeros(2, 1, 16), kv, kv, torch.zeros(2, 1, dtype=torch.int32),
                              torch.tensor([1, 2], dtype=torch.int32),
                              torch.tensor([0, 1, 2], dtype=torch.int32), 0.25, 1, 2)
    extend = PagedAttentionArgs(torch.zeros(2, 1, 16), kv, kv, torch.zeros(1, 1, dtype=torch.int32),
                                torch.tensor([2], dtype=torch.int32),
                                torch.tensor([0, 2], dtype=torch.int32), 0.25, 2, 2)
    for interpreted in (False, True):
        monkeypatch.setattr(attention, "INTERPRETED", interpreted, raising=False)
        attention.paged_attention(args)  # decode
        attention.paged_attention(extend)  # prefill/extend
    assert seen == [False, False, True, True]
