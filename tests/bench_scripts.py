"""bench/'s scripts as modules for the tests (bench/ is a folder of scripts, not a package):
loaded afresh from their files (`load_bench`), or imported by name with bench/ on sys.path,
as the scripts import each other (`import_bench`, and the fixture `bench_modules` makes)."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str) -> ModuleType:
    """bench/NAME.py, freshly executed and registered as module NAME (dataclasses look
    their module up while it loads), with bench/ on sys.path while it loads, as when run as
    a script (it may import bench/'s helpers by name: ascii_args, results_blocks)."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    with bench_on_path():
        spec.loader.exec_module(mod)
    return mod


@contextlib.contextmanager
def bench_on_path() -> Iterator[None]:
    """bench/ first on sys.path while the block runs."""
    sys.path.insert(0, str(BENCH))
    try:
        yield
    finally:
        sys.path.remove(str(BENCH))


def import_bench(*names: str):
    """bench/NAMES imported by name with bench/ on sys.path (once per process, as `import`
    does): the module, or a tuple of them in the order named."""
    with bench_on_path():
        mods = tuple(importlib.import_module(name) for name in names)
    return mods[0] if len(mods) == 1 else mods


def bench_modules(*names: str):
    """A module-scoped fixture giving `import_bench(*names)`, with bench/ left on sys.path
    until the test module is done. Use: `mods = bench_modules("scheduling", ...)`."""

    @pytest.fixture(scope="module")
    def modules():
        with bench_on_path():
            yield import_bench(*names)

    return modules
