"""The elapsed-time grid through which the indexed policies' keys read time (search.py's
module docstring says why: a key changes only at its session's grid points), and the sticky
levels their global normalizers move on. Re-exported by search.py, where they were first."""

from __future__ import annotations

import atexit
import math
import sys
from types import ModuleType

GRID_S = 1e-3  # first point of the elapsed-time grid
GRID_RATIO = 2.0 ** 0.25  # ratio of successive grid points (about 19%)
_LOG_RATIO = math.log(GRID_RATIO)


def _grid_point(k: int) -> float:
    return GRID_S * GRID_RATIO**k


# The grid's first points (to about 10^16 s), the same floats `_grid_point` gives: keying
# reads them without a pow() each.
_GRID_POINTS = tuple(map(_grid_point, range(256)))


def grid_index_py(e: float) -> tuple[int, float, float]:
    """(k, e rounded down to the grid, the next grid point) for e >= 0: the grid is 0, 1 ms,
    then x 2^(1/4) steps, and k numbers its points (-1: 0; 0: 1 ms). The victim index
    (session_heap.py, in C++ too) reads it this way, operation for operation, to re-key a
    session from its class's keys by grid point. The reference of `grid_index`."""
    if e < GRID_S:
        return -1, 0.0, GRID_S
    k = math.floor(math.log(e / GRID_S) / _LOG_RATIO + 1e-12)
    points = _GRID_POINTS if k < len(_GRID_POINTS) - 1 else tuple(map(_grid_point,
                                                                       range(k + 2)))
    lo = points[k]
    if lo > e:  # rounding in log(): step back
        k -= 1
        lo = points[k]
    return k, lo, points[k + 1]


grid_index = grid_index_py
try:
    from kvsaga._evict import Grid
except ImportError:  # not built: the Python reference reads the grid
    pass
else:
    # The same answers as one C++ call (csrc/elapsed_grid.h), which keying makes once per
    # keyed session: a Python function less each (tests/policy/test_session_heap.py).
    grid_index = Grid(GRID_S, GRID_RATIO, _LOG_RATIO, list(_GRID_POINTS)).index

    def _release_grid() -> None:
        """At exit, let the C++ grid go before the interpreter's teardown: every module that
        imported `grid_index` reads the Python reference from then on (the same answers).
        A process that froze its GC heap (vLLM's servers call gc.freeze() once started)
        keeps the module dicts that hold it past the last collection, and nanobind's check
        at exit then printed "nanobind: leaked 1 instances! ... kvsaga._evict.Grid" (and
        its types and functions) at every stop. Modules are read through object's own
        attribute lookup, so a lazily loaded one is not loaded here."""
        cpp = grid_index
        for module in list(sys.modules.values()):
            if isinstance(module, ModuleType):
                namespace = object.__getattribute__(module, "__dict__")
                if namespace.get("grid_index") is cpp:
                    namespace["grid_index"] = grid_index_py

    atexit.register(_release_grid)


def elapsed_grid(e: float) -> tuple[float, float]:
    """(e rounded down to the grid, the next grid point) (`grid_index`).

    Keys that depend on time read it through this grid, so they change at grid points only.
    """
    _, lo, hi = grid_index(e)
    return lo, hi


def sticky_level(x: float, level: int, ratio: float) -> int:
    """x's level on a geometric scale (level k stands for ratio**k), kept at `level` while x
    stays within one step of it: a normalizer that hovers near a boundary does not flip
    every key back and forth. x must be > 0."""
    exact = math.log(x) / math.log(ratio)
    return level if abs(exact - level) <= 1.0 else round(exact)
