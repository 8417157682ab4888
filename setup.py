"""Builds kvsaga's optional C++ core, kvsaga._kvcore (csrc/), with setuptools.

Why setuptools and not scikit-build-core + CMake: the extension is one translation unit plus
nanobind's own sources, and setuptools' `optional=True` is exactly the fallback the project
needs: where no C++17 compiler (or no Python headers) is found, the build warns and the
package installs without the extension; kvsaga then runs its Python core (kvsaga/_core.py
says so in one log line). Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import glob
import os
import sys

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
    # kvsaga._paged_attn: the CPU engine's in-place paged attention (kernels/inplace.py).
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
                          ("kvsaga._paged_attn", "paged_attn.cpp"))
    ]


class _BuildExt(build_ext):
    """C++17, optimised, symbols hidden (as nanobind's own CMake build compiles)."""

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "msvc":
            flags = ["/std:c++17", "/O2", "/EHsc", "/bigobj"]
        else:
            flags = ["-std=c++17", "-O2", "-g0", "-fvisibility=hidden", "-fno-strict-aliasing"]
            flags += ["-DNDEBUG", "-Wno-unused-parameter"]
        for ext in self.extensions:
            # The attention loops need -O3 to be vectorised.
            fast = ["-O3"] if ext.name == "kvsaga._paged_attn" and "-O2" in flags else []
            ext.extra_compile_args = flags + fast
        super().build_extensions()


setup(ext_modules=_nanobind_extension(), cmdclass={"build_ext": _BuildExt})
