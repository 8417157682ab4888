"""The C++ elapsed-time grid (`kvsaga.policy.grid`, kvsaga._evict.Grid) is let go at exit.

vLLM freezes its GC heap once a server started (gc.freeze()); frozen objects are skipped by
the interpreter's last collections, so the module dicts holding the grid outlived
nanobind's check at exit, which printed "nanobind: leaked 1 instances! ... Grid" at every
server stop. A subprocess does what such a server does and must exit quietly; an exit hook
that runs after kvsaga's still gets the grid's answers (the Python reference's)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

_FROZEN_EXIT = """
import atexit, gc

def late():  # registered first: runs after kvsaga's hook
    from kvsaga.policy import search, ttl
    print(ttl.grid_index(1.0) == search.grid_index_py(1.0), ttl.grid_index is search.grid_index)

atexit.register(late)
import kvsaga.policy.graph, kvsaga.policy.saga, kvsaga.policy.ttl
from kvsaga.policy.search import grid_index
grid_index(1.0)
gc.collect()
gc.freeze()  # as vLLM's servers do once started
"""


def test_a_process_that_froze_its_gc_heap_exits_without_a_nanobind_leak():
    pytest.importorskip("kvsaga._evict")
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    done = subprocess.run([sys.executable, "-c", _FROZEN_EXIT], capture_output=True, text=True,
                          env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "leaked" not in done.stderr, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "True"]
