"""Every policy test runs on both bookkeeping cores (the managers they build read
KVSAGA_CORE); the eviction orders must not depend on the core."""

from __future__ import annotations

import pytest

from kvsaga._core import cpp_available


@pytest.fixture(autouse=True, params=["python", "cpp"])
def _each_core(request, monkeypatch):
    if request.param == "cpp" and not cpp_available():
        pytest.skip("the C++ core is not built")
    monkeypatch.setenv("KVSAGA_CORE", request.param)
