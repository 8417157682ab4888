"""What the ahead-of-time compile check compiles: one `KernelSpec` per launch configuration.

Each Triton kernel module lists, in `compile_specs()`, every configuration its launcher can
choose, built from the same config functions the launcher calls, so the two cannot drift.
`kvsaga.kernels.compile_check` compiles them for sm_80 and sm_90. No Triton import here.

Triton's JIT compiles one variant of a configuration per pattern of argument values: an int
argument equal to 1 is passed as a constexpr, and ints and pointers that are multiples of
16 get a divisibility hint. A configuration's base spec is its least specialised variant
(hints only where the launcher guarantees them). Beside it a module lists, for head_dim
128 (attention: in fp16 and bf16), the variants common launches compile (`jit_variant`:
block size 16, head counts, table widths and index tensors aligned to 16, one split, one
query head per KV head). Any other variant a launch specialises into is compiled the first
time it runs, not by the check.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch

# Every Triton kernel is built, and compiled ahead of time, for these head dims.
HEAD_DIMS = (16, 32, 64, 128, 256)

# Triton's pointer element type names, by torch dtype.
TRITON_TYPES = {
    torch.float16: "fp16",
    torch.bfloat16: "bf16",
    torch.float32: "fp32",
    torch.int8: "i8",
    torch.int16: "i16",
    torch.int32: "i32",
    torch.int64: "i64",
}


def check_head_dim(head_dim: int) -> None:
    """Refuse a head dim no Triton kernel is built for (the torch reference takes any)."""
    if head_dim not in HEAD_DIMS:
        raise ValueError(
            f"head_dim {head_dim} is not supported by the Triton kernels (one of {HEAD_DIMS}); "
            "KVSAGA_KERNELS=torch runs the reference"
        )


@dataclass(frozen=True)
class KernelSpec:
    """One kernel in one launch configuration.

    Args of the kernel not named in `pointers`, `floats` or `constexprs` are i32 scalars
    (what Triton's JIT passes for Python ints below 2^31).
    """

    name: str  # for reports, e.g. "decode_split[bf16, head_dim=128]"
    fn: Any  # the @triton.jit function
    pointers: dict[str, str]  # arg -> pointer type, e.g. "*bf16"
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    floats: tuple[str, ...] = ()
    # Args taken as multiples of 16 (the JIT hints those, so the check does too): in a base
    # spec those the launcher always passes so (pointers from torch allocations, strides of
    # rows of >= 16 elements), in a `jit_variant` also those of the launches it stands for.
    divisible_by_16: tuple[str, ...] = field(default_factory=tuple)
    variant: str = ""  # "" for the base spec, else what `jit_variant` specialised

    def signature(self) -> dict[str, str]:
        sig = {}
        for name in self.fn.arg_names:
            if name in self.constexprs:
                sig[name] = "constexpr"
            elif name in self.pointers:
                sig[name] = self.pointers[name]
            else:
                sig[name] = "fp32" if name in self.floats else "i32"
        return sig


def jit_variant(spec: KernelSpec, variant: str, *, divisible: tuple[str, ...] = (),
                ones: tuple[str, ...] = ()) -> KernelSpec:
    """`spec` as the JIT compiles it for launches whose int args `ones` equal 1 (passed as
    constexprs) and whose args `divisible` are multiples of 16 (hinted), named `variant`.
    Why: the base spec alone leaves the variant that real launches run uncompiled."""
    return replace(
        spec, name=f"{spec.name[:-1]}; {variant}]", variant=variant,
        constexprs={**spec.constexprs, **dict.fromkeys(ones, 1)},
        divisible_by_16=(*spec.divisible_by_16, *divisible),
    )
