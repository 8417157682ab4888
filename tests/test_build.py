"""The C++ extensions are built wherever they can be, and not stale.

setup.py builds kvsaga._kvcore and kvsaga._paged_attn as optional extensions: without a C++17
compiler the package installs without them and runs its Python paths. That fallback must not
hide a compile error on a machine that has a compiler (the parity tests of the C++ core would
then skip, and CI would pass without testing it), nor an old build left next to changed
sources in an editable checkout (the C++ core would then run yesterday's code).
"""

from __future__ import annotations

import importlib
import shutil
import sysconfig
from pathlib import Path

import pytest

# Each extension and its own translation unit (setup.py); both include nanobind.cpp and csrc/*.h.
EXTENSIONS = {"kvsaga._kvcore": "kvcore.cpp", "kvsaga._paged_attn": "paged_attn.cpp"}


def _compiler() -> str | None:
    """The C++ compiler setuptools would use, when one is on PATH."""
    cxx = (sysconfig.get_config_var("CXX") or "c++").split()[0]
    return shutil.which(cxx) or shutil.which("c++") or shutil.which("g++")


needs_compiler = pytest.mark.skipif(_compiler() is None, reason="no C++ compiler on PATH")


@needs_compiler
@pytest.mark.parametrize("name", EXTENSIONS)
def test_extension_built_where_a_compiler_exists(name: str) -> None:
    try:
        importlib.import_module(name)
    except ImportError as e:
        pytest.fail(f"{name} is not built although a C++ compiler is on PATH ({e}): "
                    "reinstall with `pip install -e .` and read its compile errors")


@needs_compiler
@pytest.mark.parametrize("name", EXTENSIONS)
def test_extension_not_older_than_its_sources(name: str) -> None:
    module = importlib.import_module(name)
    csrc = Path(module.__file__).resolve().parents[1] / "csrc"
    if not csrc.is_dir():
        pytest.skip("installed without its sources (not an editable checkout)")
    built = Path(module.__file__).stat().st_mtime
    sources = [csrc / EXTENSIONS[name], csrc / "nanobind.cpp", *sorted(csrc.glob("*.h"))]
    stale = [p.name for p in sources if p.exists() and p.stat().st_mtime > built]
    assert not stale, (f"{name} was built before {', '.join(stale)} changed: "
                       "rebuild with `pip install --no-deps -e .`")
