"""Each Triton launch runs a configuration its module's `compile_specs()` lists, so the
ahead-of-time compile check (`kvsaga.kernels.compile_check`) compiles what is launched:
the same constexprs, num_warps and num_stages (Triton's default, 3, where a launch names
none), and every argument the base spec marks divisible by 16 is a multiple of 16 in the
launch (the JIT specialises on it, so a spec that assumes it checks another compile).
The other direction, for common launches: the variant the JIT compiles for them (ints
equal to 1 as constexprs, more arguments hinted divisible) is a spec too (spec.py).

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


def _pointers_match(spec, call: dict) -> bool:
    return {k: "*" + TRITON_TYPES[call[k].dtype] for k in spec.pointers} == spec.pointers


def _same_constexprs(a: dict, b: dict) -> bool:
    return {**a, **_MACHINE_CONSTEXPRS} == {**b, **_MACHINE_CONSTEXPRS}


def _spec_of(specs, fn, call: dict):
    """The one base spec of `fn` whose pointer types and constexprs are the launch's."""
    def matches(spec) -> bool:
        constexprs = {k: call[k] for k in spec.constexprs}
        return _pointers_match(spec, call) and _same_constexprs(constexprs, spec.constexprs)
    found = [s for s in specs if s.fn is fn and not s.variant and matches(s)]
    assert len(found) == 1, f"{len(found)} base specs of {fn} for launch constexprs"
    return found[0]


def _jit_variant(spec, call: dict) -> tuple[dict, set]:
    """(constexprs, args hinted divisible by 16) of the variant Triton's JIT compiles for
    this launch of `spec`'s kernel: an int equal to 1 becomes a constexpr, and ints and
    tensor addresses that are multiples of 16 (0 too) get the hint (JITFunction's
    specialisation); the kernel's own constexprs are the base spec's."""
    constexprs, divisible = dict(spec.constexprs), set()
    for name in spec.fn.arg_names:
        value = call[name]
        if name in spec.constexprs or isinstance(value, (bool, float)):
            continue
        if isinstance(value, torch.Tensor):
            value = value.data_ptr()
        elif value == 1:
            constexprs[name] = 1
            continue
        if value % 16 == 0:
            divisible.add(name)
    return constexprs, divisible


def _assert_jit_variants_compiled(specs, launches) -> list[str]:
    """Each launch's JIT variant is a spec (same constexprs, same hints); their names."""
    names = []
    for rec in launches:
        for call in rec.calls:
            base = _spec_of(specs, rec.fn, call)
            constexprs, divisible = _jit_variant(base, call)
            found = [s.name for s in specs if s.fn is rec.fn and _pointers_match(s, call)
                     and _same_constexprs(s.constexprs, constexprs)
                     and set(s.divisible_by_16) == divisible]
            assert len(found) == 1, (f"{base.name}: {len(found)} specs compile the JIT's "
                                     f"variant, constexprs {constexprs}, divisible "
                                     f"{sorted(divisible)}")
            names += found
    assert names, "nothing was launched"
    return names


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


# A model the check compiles the JIT's variants for: head_dim 128, 8 KV heads of 32 query
# heads (GQA, as Llama 3 8B) or 16 of 16 (MHA), block size 16, tables 16 blocks wide.
_HEADS = {"gqa": (32, 8), "mha": (16, 16)}


@pytest.mark.parametrize("heads,query_len,splits", [
    ("gqa", 1, 1), ("gqa", 1, 3), ("mha", 1, 1), ("gqa", 5, None), ("mha", 5, None)],
    ids=["gqa-decode-one split", "gqa-decode-3 splits", "mha-decode-one split",
         "gqa-prefill", "mha-prefill"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16],
                         ids=lambda d: str(d).removeprefix("torch."))
def test_common_attention_launches_compile_as_the_jit_specialises_them(
        triton_device, monkeypatch, heads, query_len, splits, dtype):
    """A common model's launches run variants the compile check compiles: before, it
    compiled only each configuration's least specialised one, while these launches pass
    max_splits 1 and group_size 1 as constexprs and hint block_size, stride_bt, num_heads,
    min_partition and the index tensors. Decode takes one split (a large batch or short
    contexts) or 3 (a small batch on a big GPU: neither 1 nor a multiple of 16)."""
    specs, launches = _record(monkeypatch, triton_device, "attention", "_prefill_kernel",
                              "_decode_split_kernel", "_decode_reduce_kernel")
    module = kernels._triton_module("attention", torch.device(triton_device))
    monkeypatch.setattr(module, "decode_num_splits", lambda *a: (splits, None))
    num_heads, num_kv_heads = _HEADS[heads]
    kv = torch.zeros((40, 2, 2, 16, num_kv_heads, 128), dtype=dtype, device=triton_device)
    query = torch.zeros((2 * query_len, num_heads, 128), dtype=dtype, device=triton_device)
    tables = torch.arange(32, dtype=torch.int32, device=triton_device).view(2, 16)
    seq_lens = torch.tensor([200, 9], dtype=torch.int32, device=triton_device)
    starts = torch.tensor([0, query_len, 2 * query_len], dtype=torch.int32,
                          device=triton_device)
    kernels.paged_attention(query, kv[:, 1, 0], kv[:, 1, 1], tables, seq_lens, starts,
                            128**-0.5, max_query_len=query_len, max_seq_len=200)
    names = _assert_jit_variants_compiled(specs, launches)
    assert all("; aligned" in name for name in names), names


def test_common_cache_writes_and_block_copies_compile_as_the_jit_specialises_them(
        triton_device, monkeypatch):
    """The same for the cache write of 8 KV heads of 128 into blocks of 16, and the block
    copies of such a tier: block_size and the blocks' strides and size are hinted."""
    specs, launches = _record(monkeypatch, triton_device, "kv_write", "_cache_write_kernel")
    kv = torch.zeros((6, 2, 2, 16, 8, 128), dtype=torch.bfloat16, device=triton_device)
    qkv = torch.zeros((5, 48, 128), dtype=torch.bfloat16, device=triton_device)
    slots = torch.tensor([0, 5, -1, 9, 23], device=triton_device)
    kernels.cache_write(qkv[:, 32:40], qkv[:, 40:], kv[:, 1, 0], kv[:, 1, 1], slots)
    assert _assert_jit_variants_compiled(specs, launches) == [
        "cache_write[i16, head_dim=128; aligned]"]
    specs, launches = _record(monkeypatch, triton_device, "blocks", "_copy_blocks_kernel")
    ids = torch.tensor([4, 0], device=triton_device)
    kernels.block_copy(kv, ids, torch.tensor([1, 3], device=triton_device))
    kernels.scatter_blocks(kernels.gather_blocks(kv, ids), kv, ids)
    assert _assert_jit_variants_compiled(specs, launches) == ["copy_blocks[i16; aligned]"] * 3
