"""The C++ extensions, where built, are not older than their sources.

setup.py builds kvsaga._kvcore and kvsaga._paged_attn (required where a C++ compiler and
the Python headers exist: a compile error fails the install; optional elsewhere, and
kvsaga runs its Python paths). An editable checkout can still hold a build older than
sources changed since (a pull, a rebase): the C++ core would then run yesterday's code, or
miss a call the Python side now makes.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

# Each extension and its own translation unit (setup.py); both include nanobind.cpp and csrc/*.h.
EXTENSIONS = {"kvsaga._kvcore": "kvcore.cpp", "kvsaga._paged_attn": "paged_attn.cpp",
              "kvsaga._evict": "session_heap.cpp", "kvsaga._fused_ops": "fused_ops.cpp",
              "kvsaga._small_gemm": "small_gemm.cpp"}


@pytest.mark.parametrize("name", EXTENSIONS)
def test_extension_not_older_than_its_sources(name: str) -> None:
    try:
        module = importlib.import_module(name)
    except ImportError:
        pytest.skip(f"{name} is not built here")
    csrc = Path(module.__file__).resolve().parents[1] / "csrc"
    if not csrc.is_dir():
        pytest.skip("installed without its sources (not an editable checkout)")
    built = Path(module.__file__).stat().st_mtime
    sources = [csrc / EXTENSIONS[name], csrc / "nanobind.cpp", *sorted(csrc.glob("*.h"))]
    stale = [p.name for p in sources if p.exists() and p.stat().st_mtime > built]
    assert not stale, (f"{name} was built before {', '.join(stale)} changed: "
                       "rebuild with `pip install --no-deps -e .`")
