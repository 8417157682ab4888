"""The pools' record of their last completed call (`calls`, `last_result`), both cores alike.

A caller that reads `calls` before a pool call tells, in its interrupt handler, a call that
returned (an interrupt as the C++ call returned: its result in `last_result`) from one that
raised inside and changed nothing (or, for release_many, whose `blocks_cached` hook raised:
the observer told nothing). kvsaga/manager_evict.py `_drop` and `_evict` rely on it.
"""

from __future__ import annotations

import contextlib

import pytest

from kvsaga._core import cpp_available, get_core
from kvsaga.block_queue import BlockQueue
from kvsaga.errors import OutOfBlocks
from kvsaga.pool import BlockPool
from tests.interrupts import Cut

CORES = ["python", pytest.param("cpp", marks=pytest.mark.skipif(
    not cpp_available(), reason="the C++ core is not built"))]
N = 8


class _Lru:
    def __init__(self, q) -> None:
        self.block_cached, self.block_uncached = q.push, q.remove
        self.blocks_cached, self.blocks_uncached = q.push_many, q.remove_many


class _Raising:
    """Its batch hooks raise while `fail` is set (having changed nothing)."""

    fail = False

    def __init__(self, q) -> None:
        self.block_cached, self.block_uncached = q.push, q.remove
        self._cached, self._uncached = q.push_many, q.remove_many

    def blocks_cached(self, ids):
        if self.fail:
            raise RuntimeError("blocks_cached")
        self._cached(ids)

    def blocks_uncached(self, ids):
        if self.fail:
            raise RuntimeError("blocks_uncached")
        self._uncached(ids)


def _pool(core: str, observer=_Lru):
    c = get_core(core)
    p = c.BlockPool(N)
    p.observer = observer(c.BlockQueue(N))
    return p


def _script(p):
    """Each mutator once or more: (call, its result, `calls` and `last_result` after it)."""
    out = []

    def do(name, *a, **k):
        result = getattr(p, name)(*a, **k)
        out.append((name, result, p.calls, p.last_result))

    do("allocate", 5)
    for b in (0, 1, 2):
        p.block_hash[b] = bytes([b])
    do("release_many", [2, 0, 1, 3])
    do("acquire_many", [1])
    do("hold_many", [0])
    do("release_many", [0, 1])
    do("evict_many", [2, 0])
    do("allocate", 0)
    return out


@pytest.mark.parametrize("core", CORES)
def test_each_completed_call_is_counted_with_its_result(core):
    p = _pool(core)
    assert (p.calls, p.last_result) == (0, None)
    seen = _script(p)
    assert [c for _, _, c, _ in seen] == list(range(1, len(seen) + 1))
    for name, result, _, last in seen:
        assert last == result, name
    assert seen[0][3] == [0, 1, 2, 3, 4] and seen[5][3] == [b"\x02", b"\x00"]
    if cpp_available():  # the same record as the other core's
        q = _pool("cpp" if core == "python" else "python")
        assert _script(q) == seen


@pytest.mark.parametrize("core", CORES)
def test_a_call_that_raises_inside_is_not_counted(core):
    p = _pool(core, _Raising)
    ids = p.allocate(3)
    for b in ids:
        p.block_hash[b] = bytes([b])
    p.release_many([0])
    record = (p.calls, p.last_result)
    with pytest.raises(OutOfBlocks):
        p.allocate(N)
    with pytest.raises(ValueError):
        p.evict_many([1])  # active
    with pytest.raises(ValueError):
        p.release_many([0])  # cached
    p.observer.fail = True
    with pytest.raises(RuntimeError, match="blocks_uncached"):
        p.evict_many([0])
    with pytest.raises(RuntimeError, match="blocks_uncached"):
        p.acquire_many([0])
    with pytest.raises(RuntimeError, match="blocks_cached"):
        p.release_many([1])  # released, the observer told nothing: not counted
    assert (p.calls, p.last_result) == record
    p.observer.fail = False
    p.evict_many([0])
    assert (p.calls, p.last_result) == (record[0] + 1, [b"\x00"])


def _cut_all(code, setup, call):
    """(pool, fired) for a cut at each point of `code` (c_returns_only) during `call(pool)`."""
    k = 0
    while True:
        p = setup()
        cut = Cut(code, k, c_returns_only=True)
        with cut, contextlib.suppress(KeyboardInterrupt):
            call(p)
        yield p, cut.fired
        if not cut.fired:
            return
        k += 1


def _cached_pool():
    p = BlockPool(N)
    p.observer = _Lru(BlockQueue(N))
    p.allocate(3)
    for b in range(3):
        p.block_hash[b] = bytes([b])
    p.release_many([0, 1, 2])
    return p


def test_python_evict_cut_after_the_tell_is_counted_with_its_hashes():
    """The Python pool's evict_many cut at each point: counted with its hashes when it
    finished (the C++ pool's call interrupted at its return), not counted when nothing
    changed."""
    fired = 0
    for p, cut in _cut_all(BlockPool.evict_many.__code__, _cached_pool,
                           lambda p: p.evict_many([2, 0])):
        fired += cut
        base = 2  # allocate, release_many
        if p.state[2] == 0:
            assert (p.calls, p.last_result) == (base + 1, [b"\x02", b"\x00"])
        else:
            assert p.calls == base and p.state[0] == 2
        p.check_integrity()
    assert fired


def test_python_allocate_cut_is_not_counted():
    fired = 0
    for p, cut in _cut_all(BlockPool.allocate.__code__, _cached_pool, lambda p: p.allocate(4)):
        fired += cut
        assert p.calls == (2 if cut else 3)
        p.check_integrity()
    assert fired
