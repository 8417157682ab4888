"""`BlockPool.allocate` refuses a count that is not an integer as the C++ pool does.

Before (s55 ccut/pyint, left): the Python pool compared and sliced with the count as given,
so `allocate(1.5)` raised OutOfBlocks on a small pool (or a TypeError from deep inside the
free queue's pop, `pop_many(nan)` a ValueError), where the C++ pool converts the count first
and raises TypeError "'float' object cannot be interpreted as an integer". Now both raise
the same error, type and message, and change nothing.
"""

from __future__ import annotations

import pytest

from kvsaga._core import cpp_available, get_core
from kvsaga.errors import OutOfBlocks

BAD = [1.5, 2.0, 0.0, -1.5, 1.5e30, float("nan"), float("inf"), "1", b"\x01", [1]]


def _books(p):
    return (list(p.refcount), list(p.state), p.free_ids(), p.num_free, p.calls)


def _pool(name: str):
    p = get_core(name).BlockPool(4)
    p.release_many(p.allocate(1))  # (not fresh: a block freed once)
    return p


@pytest.mark.parametrize("count", BAD, ids=repr)
def test_a_count_that_is_not_an_integer_is_refused_and_changes_nothing(core, count):
    p = _pool(core.name)
    before = _books(p)
    with pytest.raises(TypeError) as e:
        p.allocate(count)
    assert not isinstance(e.value, OutOfBlocks)
    assert str(e.value) == f"'{type(count).__name__}' object cannot be interpreted as an integer"
    assert _books(p) == before
    assert len(p.allocate(4)) == 4  # the pool still hands out every block


@pytest.mark.skipif(not cpp_available(), reason="the C++ core is not built")
@pytest.mark.parametrize("count", BAD + [None], ids=repr)
def test_the_python_pool_raises_what_the_cpp_pool_raises(count):
    errors = []
    for name in ("python", "cpp"):
        p = _pool(name)
        with pytest.raises(TypeError) as e:
            p.allocate(count)
        errors.append(str(e.value))
    if count is not None:  # (None: nanobind's own "incompatible function arguments")
        assert errors[0] == errors[1]


class _Index:
    def __init__(self, n: int) -> None:
        self.n = n

    def __index__(self) -> int:
        return self.n


@pytest.mark.parametrize("count", [True, 2, _Index(3)], ids=["True", "2", "index3"])
def test_integers_of_other_types_still_allocate(core, count):
    p = _pool(core.name)
    ids = p.allocate(count)
    assert len(ids) == int(count.__index__() if isinstance(count, _Index) else count)
    p.check_integrity()
    with pytest.raises(OutOfBlocks):
        p.allocate(_Index(5))
