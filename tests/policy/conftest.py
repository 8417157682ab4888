"""Every policy test runs on both bookkeeping cores (the managers they build read
KVSAGA_CORE); the eviction orders must not depend on the core. A module that never reads
the core (it builds its heaps and policies itself, or names the core) sets
`READS_NO_CORE = True` and runs once, not once a core."""

from __future__ import annotations

import pytest

from kvsaga._core import cpp_available


def pytest_generate_tests(metafunc):
    if "_each_core" in metafunc.fixturenames and not getattr(
            metafunc.module, "READS_NO_CORE", False):
        metafunc.parametrize("_each_core", ["python", "cpp"], indirect=True)


@pytest.fixture(autouse=True)
def _each_core(request, monkeypatch):
    core = getattr(request, "param", None)
    if core is None:  # a READS_NO_CORE module
        return
    if core == "cpp" and not cpp_available():
        pytest.skip("the C++ core is not built")
    monkeypatch.setenv("KVSAGA_CORE", core)
