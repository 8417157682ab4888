"""Ahead-of-time compile check: every kernel configuration to cubin for sm_80 and sm_90.

    python -m kvsaga.kernels.compile_check [--arch 80 90] [--jobs 2] [--json PATH]

Compiles each `KernelSpec` that the kernel modules list in `compile_specs()` (the same
configurations their launchers choose, and the variants the JIT compiles for common
launches; spec.py says which) with `triton.compile`, without a GPU, and checks
that its shared memory fits the target (sm_80 / A100: 163 KiB, sm_90 / H100: 227 KiB).
Triton's interpreter accepts code that the compiler rejects (tl.dot under 16, break in
loops, ...); this is what catches it. Exits 1 when anything fails or `--filter` matches
no kernel.

Runs in its own process: it removes TRITON_INTERPRET before importing Triton.
"""

from __future__ import annotations

import os

os.environ.pop("TRITON_INTERPRET", None)

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from multiprocessing import get_context  # noqa: E402

from kvsaga.ascii_numbers import int_arg  # noqa: E402
from kvsaga.workers import worker_pool  # noqa: E402

MODULES = ("kvsaga.kernels.attention", "kvsaga.kernels.kv_write", "kvsaga.kernels.blocks")
# Shared memory per block, opt-in maximum, by compute capability.
SHARED_LIMITS = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def _specs() -> list[tuple[str, int]]:
    return [
        (module, i)
        for module in MODULES
        for i in range(len(importlib.import_module(module).compile_specs()))
    ]


def _source(spec):  # -> triton.compiler.ASTSource
    import triton
    from triton.compiler import ASTSource

    arg_names = list(spec.fn.arg_names)
    attrs = {(arg_names.index(name),): [["tt.divisibility", 16]] for name in spec.divisible_by_16}
    try:  # triton >= 3.3: arguments keyed by name, constexprs= (3.6 and 3.9 on our machines)
        return ASTSource(
            fn=spec.fn, signature=spec.signature(), constexprs=spec.constexprs, attrs=attrs
        )
    except TypeError:  # older keyword
        return triton.compiler.ASTSource(
            fn=spec.fn, signature=spec.signature(), constants=spec.constexprs, attrs=attrs
        )


def compile_one(module: str, index: int, arch: int) -> dict:
    """Compile one spec for sm_`arch`; returns a report row."""
    import triton
    from triton.backends.compiler import GPUTarget

    spec = importlib.import_module(module).compile_specs()[index]
    row = {"kernel": spec.name, "arch": arch, "num_warps": spec.num_warps,
           "num_stages": spec.num_stages}
    start = time.perf_counter()
    try:
        compiled = triton.compile(
            _source(spec),
            target=GPUTarget("cuda", arch, 32),
            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages},
        )
        shared = int(compiled.metadata.shared)
        limit = SHARED_LIMITS[arch]
        row.update(ok=shared <= limit and bool(compiled.asm.get("cubin")), shared=shared,
                   limit=limit, cubin_bytes=len(compiled.asm.get("cubin", b"")))
        if shared > limit:
            row["error"] = f"shared memory {shared} B > {limit} B"
    except Exception as e:  # report every failure, not just the first
        row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:2000]}")
    row["seconds"] = round(time.perf_counter() - start, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int_arg, nargs="+", default=[80, 90],
                        choices=sorted(SHARED_LIMITS), metavar="ARCH",
                        help="CUDA compute capabilities to compile for, of "
                             f"{sorted(SHARED_LIMITS)} (default: 80 90, i.e. sm_80, sm_90)")
    parser.add_argument("--jobs", type=int_arg, default=min(4, os.cpu_count() or 1),
                        help="kernels compiled in parallel (processes)")
    parser.add_argument("--json", help="write the report rows here")
    parser.add_argument("--filter", default="", help="only kernels whose name contains this")
    args = parser.parse_args(argv)

    jobs = []
    for module, index in _specs():
        name = importlib.import_module(module).compile_specs()[index].name
        if args.filter in name:
            jobs.extend((module, index, arch) for arch in args.arch)
    if not jobs:  # a typo must not pass the check
        print(f"no kernel matches --filter {args.filter!r}", file=sys.stderr)
        return 1
    if args.jobs > 1:
        with worker_pool(args.jobs, mp_context=get_context("spawn")) as pool:
            rows = list(pool.map(compile_one, *zip(*jobs, strict=True)))
    else:
        rows = [compile_one(*job) for job in jobs]

    failed = [r for r in rows if not r["ok"]]
    for r in rows:
        status = "ok  " if r["ok"] else "FAIL"
        shared = f"{r['shared'] / 1024:6.1f} KiB" if "shared" in r else "       -  "
        print(f"{status} sm_{r['arch']} {r['kernel']:<42} shared {shared}  {r['seconds']:5.1f}s"
              + (f"  {r['error']}" if not r["ok"] else ""))
    for arch in args.arch:
        mine = [r for r in rows if r["arch"] == arch and "shared" in r]
        if mine:
            top = max(mine, key=lambda r: r["shared"])
            print(f"sm_{arch}: {len(mine)} compiled, max shared {top['shared'] / 1024:.1f} KiB "
                  f"({top['kernel']}) of {SHARED_LIMITS[arch] / 1024:.0f} KiB")
    print(f"{len(rows) - len(failed)}/{len(rows)} ok")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
