"""Shared test set-up: the `gpu` marker skips cleanly without CUDA."""

from __future__ import annotations

import contextlib
import importlib.util

import pytest

# Test modules put bench/ on sys.path to import its scripts, and bench/kernels.py would then
# shadow the PyPI package `kernels`, which transformers (>= 5.25, our test oracle) imports
# when it loads a model: where that package is installed, it is imported here, first.
if importlib.util.find_spec("kernels") is not None:
    with contextlib.suppress(ImportError):  # (transformers then says why, where it needs it)
        import kernels  # noqa: F401


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


@pytest.hookimpl(tryfirst=True)  # before `-m` selects: the marks added here count there
def pytest_collection_modifyitems(config, items):
    if _cuda_available():
        # Kernel tests run on CUDA where there is one (tests/kernels/conftest.py's
        # `triton_device`): on such a machine they are GPU tests, and `-m gpu` takes them.
        for item in items:
            if "triton_device" in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.gpu)
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["python", "cpp"])
def core(request):
    """Each bookkeeping core (kvsaga/_core.py); cpp is skipped where it was not built."""
    from kvsaga._core import cpp_available, get_core

    if request.param == "cpp" and not cpp_available():
        pytest.skip("the C++ core is not built")
    return get_core(request.param)


# kvsaga-serve's `main()` sets these for the rest of its process (`--cpu-host`: libgomp and
# the model load read them from the environment); tests call it in-process, so each test
# gets back the values it started with, and a later model load in the same worker does not
# take the server's settings.
_CPU_HOST_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KVSAGA_CPU_SERIAL_BELOW",
                       "KVSAGA_CPU_THREADS")


@pytest.fixture(autouse=True)
def _cpu_host_variables_restored():
    import os

    before = {name: os.environ.get(name) for name in _CPU_HOST_VARIABLES}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
