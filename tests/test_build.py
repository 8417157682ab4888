"""What a build ships: every package of the tree, and C++ extensions not older than their sources.

pyproject.toml names the packages a wheel (or a non-editable `pip install .`) holds; an
editable checkout imports from the tree and never notices one left out (kvsaga.serve.routes
once was, and an installed kvsaga-serve could not start).

setup.py builds five extensions, kvsaga._kvcore, _paged_attn, _evict, _fused_ops and
_small_gemm (required where a C++ compiler and the Python headers exist: a compile error
fails the install; optional elsewhere, and kvsaga runs its Python paths). An editable
checkout can still hold a build older than sources changed since (a pull, a rebase): the
C++ core would then run yesterday's code, or miss a call the Python side now makes.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

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


def _configured_packages() -> set[str]:
    """The packages setuptools reads from pyproject.toml: what a wheel's build_py copies."""
    pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings():  # setuptools' deprecation notes on unrelated fields
        warnings.simplefilter("ignore")
        dist = apply_configuration(Distribution(), str(ROOT / "pyproject.toml"))
    return set(dist.packages or ())


def test_build_ships_every_package_of_the_tree() -> None:
    tree = {".".join(p.parent.relative_to(ROOT).parts)
            for p in (ROOT / "kvsaga").rglob("__init__.py") if "__pycache__" not in p.parts}
    shipped = _configured_packages()
    assert tree - shipped == set(), f"pyproject.toml leaves out {sorted(tree - shipped)}"
    assert shipped - tree == set(), f"pyproject.toml names {sorted(shipped - tree)}: not here"
