"""Builds kvsaga's optional C++ core, kvsaga._kvcore (csrc/), with setuptools.

Why setuptools and not scikit-build-core + CMake: the extension is one translation unit plus
nanobind's own sources, and setuptools' `optional=True` is exactly the fallback the project
needs: where no working C++17 compiler (or no Python headers) is found, the build warns and
the package installs without the extension; kvsaga then runs its Python core (kvsaga/_core.py
says so in one log line). Where a probe file compiles, the build is required: a compile
error in csrc/ fails the install instead of hiding behind the fallback. Everything else
about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
import tempfile

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


def _nanobind_extension() -> list[Extension]:
    """The extension, or none when nanobind (a build requirement) cannot be imported."""
    try:
        import nanobind
    except ImportError:
        print("kvsaga: nanobind not found; building without the C++ core", file=sys.stderr)
        return []
    src = nanobind.source_dir()
    root = os.path.dirname(src)
    include_dirs = [
        "csrc",
        src,
        nanobind.include_dir(),
        os.path.join(root, "ext", "robin_map", "include"),  # nanobind uses it
    ]
    # kvsaga._paged_attn: the CPU engine's in-place paged attention (kvsaga/kernels/inplace.py);
    # kvsaga._evict: the eviction policies' victim index (kvsaga/policy/session_heap.py);
    # kvsaga._fused_ops: the CPU engine's fused elementwise ops (kvsaga/engine/fused_ops.py);
    # kvsaga._small_gemm: the CPU engine's decode-sized linears (kvsaga/engine/cpu_linear.py).
    return [
        Extension(
            name,
            # csrc/nanobind.cpp includes nanobind's nb_combined.cpp (from `src`).
            sources=[f"csrc/{cpp}", "csrc/nanobind.cpp"],
            depends=glob.glob("csrc/*.h"),  # rebuild when a header changes
            include_dirs=include_dirs,
            language="c++",
            optional=True,
        )
        for name, cpp in (("kvsaga._kvcore", "kvcore.cpp"),
                          ("kvsaga._paged_attn", "paged_attn.cpp"),
                          ("kvsaga._evict", "session_heap.cpp"),
                          ("kvsaga._fused_ops", "fused_ops.cpp"),
                          ("kvsaga._small_gemm", "small_gemm.cpp"))
    ]


class _BuildExt(build_ext):
    """C++17, optimised, symbols hidden (as nanobind's own CMake build compiles)."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            flags = ["/std:c++17", "/O2", "/EHsc", "/bigobj"]
        else:
            flags = ["-std=c++17", "-O2", "-g0", "-fvisibility=hidden", "-fno-strict-aliasing"]
            flags += ["-DNDEBUG", "-Wno-unused-parameter"]
        required = self._compiler_found()
        for ext in self.extensions:
            # The attention and elementwise loops need -O3 to be vectorised.
            vectorised = ext.name in ("kvsaga._paged_attn", "kvsaga._fused_ops",
                                      "kvsaga._small_gemm")
            fast = ["-O3"] if vectorised and "-O2" in flags else []
            ext.extra_compile_args = flags + fast
            # Optional only where no working compiler exists: a compile error on a machine
            # that has one fails the install (else CI would pass on the Python core, the
            # C++ core's parity tests skipped).
            ext.optional = not required
        super().build_extensions()

    def _compiler_found(self) -> bool:
        """Whether the compiler setuptools picked builds C++17 against the Python headers:
        a probe file that includes Python.h, compiled with the extensions' standard flag."""
        with tempfile.TemporaryDirectory() as tmp:
            src = os.path.join(tmp, "probe.cpp")
            with open(src, "w") as f:
                f.write("#include <Python.h>\nint kvsaga_probe() { return 0; }\n")
            std = "/std:c++17" if self.compiler.compiler_type == "msvc" else "-std=c++17"
            try:
                self.compiler.compile([src], output_dir=tmp, extra_postargs=[std],
                                      include_dirs=[sysconfig.get_paths()["include"]])
            except Exception:  # CompileError, or no compiler to run at all
                return False
        return True


setup(ext_modules=_nanobind_extension(), cmdclass={"build_ext": _BuildExt})
