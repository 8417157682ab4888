"""Each Triton launch runs a configuration its module's `compile_specs()` lists, so the
ahead-of-time compile check (`kvsaga.kernels.compile_check`) compiles what is launched:
the same constexprs, num_warps and num_stages (Triton's default, 3, where a launch names
none), and every argument the spec marks divisible by 16 is a multiple of 16 in the launch
(the JIT specialises on it, so a spec that assumes it checks another compile).

The launches are recorded, not run: no GPU or interpreter time.
"""

from __future__ import annotations

import pytest
import torch

import kvsaga.kernels as kernels
from kvsaga.kernels.spec import TRITON_TYPES

pytest.importorskip("triton")

# Where a spec's constexprs follow the machine, not the configuration: interpreted kernels
# upcast (attention.py's module docstring); the specs are for the GPU.
_MACHINE_CONSTEXPRS = {"UPCAST": False}


class _Launches:
    """Stands in for a @triton.jit kernel: records each launch's arguments by name."""

    def __init__(self, fn) -> None:
        self.fn = fn
        self.calls: list[dict] = []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append({**dict(zip(self.fn.arg_names, args, strict=False)), **kwargs})

        return launch


def _record(monkeypatch, device: str, module_name: str, *kernel_names: str):
    module = kernels._triton_module(module_name, torch.device(device))
    specs = module.compile_specs()  # before the stand-ins replace the kernels
    launches = []
    for name in kernel_names:
        launches.append(_Launches(getattr(module, name)))
        monkeypatch.setattr(module, name, launches[-1])
    return specs, launches


def _spec_of(specs, fn, call: dict):
    """The one spec of `fn` whose pointer types and constexprs are the launch's."""
    def matches(spec) -> bool:
        pointers = {k: "*" + TRITON_TYPES[call[k].dtype] for k in spec.pointers}
        constexprs = {k: call[k] for k in spec.constexprs}
        return (pointers == spec.pointers and {**constexprs, **_MACHINE_CONSTEXPRS}
                == {**spec.constexprs, **_MACHINE_CONSTEXPRS})
    found = [s for s in specs if s.fn is fn and matches(s)]
    assert len(found) == 1, f"{len(found)} specs of {fn} for launch constexprs"
    return found[0]


def _assert_launches_match(specs, launches) -> None:
    ran = 0
    for rec in launches:
        for call in rec.calls:
            spec = _spec_of(specs, rec.fn, call)
            assert call.get("num_warps") == spec.num_warps, spec.name
            assert call.get("num_stages", 3) == spec.num_stages, spec.name
            for name in spec.divisible_by_16:
                value = call[name]
                value = value.data_ptr() if isinstance(value, torch.Tensor) else value
                assert value % 16 == 0, f"{spec.name}: {name} = {value} is no multiple of 16"
            ran += 1
    assert ran, "nothing was launched"


@pytest.mark.parametrize("shape", [(9, 2, 2, 16, 2, 32), (9, 3), (9, 5, 7)],
                         ids=["tier", "3-wide", "35-wide"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.uint8],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_block_copies_launch_their_specs(triton_device, monkeypatch, shape, dtype):
    specs, launches = _record(monkeypatch, triton_device, "blocks", "_copy_blocks_kernel")
    kv = torch.zeros(shape, dtype=dtype, device=triton_device)
    ids = torch.tensor([4, 0, 8], device=triton_device)
    kernels.block_copy(kv, ids, torch.tensor([1, 7, 3], device=triton_device))
    staging = kernels.gather_blocks(kv, ids)
    kernels.scatter_blocks(staging, kv, ids)
    assert len(launches[0].calls) == 3
    _assert_launches_match(specs, launches)


@pytest.mark.parametrize("head_dim", [16, 64, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_cache_write_launches_its_spec(triton_device, monkeypatch, head_dim, dtype):
    specs, launches = _record(monkeypatch, triton_device, "kv_write", "_cache_write_kernel")
    kv = torch.zeros((6, 2, 2, 4, 3, head_dim), dtype=dtype, device=triton_device)
    qkv = torch.zeros((5, 9, head_dim), dtype=dtype, device=triton_device)  # fused q, k, v
    slots = torch.tensor([0, 5, -1, 9, 23], device=triton_device)
    kernels.cache_write(qkv[:, 3:6], qkv[:, 6:], kv[:, 1, 0], kv[:, 1, 1], slots)
    _assert_launches_match(specs, launches)


@pytest.mark.parametrize("query_len", [1, 5], ids=["decode", "prefill"])
@pytest.mark.parametrize("head_dim", [16, 128, 256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_paged_attention_launches_its_specs(triton_device, monkeypatch, query_len, head_dim,
                                            dtype):
    specs, launches = _record(monkeypatch, triton_device, "attention", "_prefill_kernel",
                              "_decode_split_kernel", "_decode_reduce_kernel")
    kv = torch.zeros((6, 2, 2, 16, 2, head_dim), dtype=dtype, device=triton_device)
    query = torch.zeros((2 * query_len, 6, head_dim), dtype=dtype, device=triton_device)
    tables = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32, device=triton_device)
    seq_lens = torch.tensor([20, 9], dtype=torch.int32, device=triton_device)
    starts = torch.tensor([0, query_len, 2 * query_len], dtype=torch.int32,
                          device=triton_device)
    kernels.paged_attention(query, kv[:, 1, 0], kv[:, 1, 1], tables, seq_lens, starts,
                            head_dim**-0.5, max_query_len=query_len, max_seq_len=20)
    assert sum(len(r.calls) for r in launches) == (1 if query_len > 1 else 2)
    _assert_launches_match(specs, launches)
