"""Input parity of the two pools' batch calls (review s55 diffint LOW-2, LOW-3).

LOW-2: the Python pool's acquire_many / hold_many given a generator (any non-list iterable
`len()` refuses) tripped its own "refused but none is bad" AssertionError; the C++ pool takes
any iterable. Now converted to a list first, as release_many / evict_many do.
LOW-3: an id a C long cannot hold (outside [-2**63, 2**63)): the C++ pool refuses it with
OverflowError as it converts the ids in turn, the Python pool said IndexError. Now the Python
pool's refusal (its error branch only) says what the C++ pool says, for the first bad id.
Either way nothing changes on either pool.
"""

from __future__ import annotations

import pytest

from kvsaga.block_queue import BlockQueue
from kvsaga.pool import BlockPool
from tests.test_pool_bad_input import _books_55, _pool, _pools, refusals

ITERABLES = {
    "generator": lambda ids: (b for b in ids),
    "iterator": lambda ids: iter(list(ids)),
    "tuple": tuple,
    "list": list,
}


@pytest.mark.parametrize("kind", ["none", "per_block", "lru"])
@pytest.mark.parametrize("make", sorted(ITERABLES))
@pytest.mark.parametrize("op", ["acquire_many", "hold_many"])
@pytest.mark.parametrize("ids", [[0, 3], [1, 2, 1], [4]])
def test_acquire_and_hold_take_any_iterable_as_the_cpp_pool(op, make, ids, kind):
    results = {}
    for name, pool_cls, queue_cls in _pools():
        p, obs = _pool(pool_cls, queue_cls, kind)
        getattr(p, op)(ITERABLES[make](ids))  # was (Python, generator): AssertionError
        p.check_integrity()
        twin, twin_obs = _pool(pool_cls, queue_cls, kind)
        getattr(twin, op)(list(ids))
        assert _books_55(p, obs, "cpp") == _books_55(twin, twin_obs, "cpp")
        results[name] = _books_55(p, obs, "cpp") + (p.calls,)
    if "cpp" in results:
        assert results["python"] == results["cpp"]


def test_a_generator_with_a_free_block_is_refused_as_by_the_cpp_pool():
    errors = {}
    for name, pool_cls, queue_cls in _pools():
        p, obs = _pool(pool_cls, queue_cls, "lru")
        before = _books_55(p, obs, "cpp")
        with pytest.raises(ValueError) as info:  # was (Python): AssertionError
            p.acquire_many(b for b in [0, 5])
        assert _books_55(p, obs, "cpp") == before
        errors[name] = str(info.value)
    assert errors["python"] == "free block 5: acquire_many takes active or cached blocks"
    if "cpp" in errors:
        assert errors["python"] == errors["cpp"]


BIG = [
    [2**63],
    [3, 2**64],
    [-(2**63) - 1],
    [2**100, 7],
    [5, 2**63],  # (FREE 5 is a ValueError, found after every id converted)
    [2**63, None],
    [2**63, -1],
]
EDGE = [  # the ends a C long holds: IndexError on both
    [2**63 - 1],
    [-(2**63)],
    [7, 2**63],  # 7 read first
    [None, 2**63],  # TypeError first
    [-1, 2**64],
]


@pytest.mark.parametrize("kind", ["none", "lru"])
@pytest.mark.parametrize("op", ["release_many", "acquire_many", "hold_many", "evict_many"])
@pytest.mark.parametrize("ids", BIG + EDGE)
def test_ids_a_c_long_cannot_hold_are_refused_as_by_the_cpp_pool(op, ids, kind):
    errors = refusals(op, ids, kind, (TypeError, OverflowError, IndexError, ValueError))
    expected = OverflowError if ids in BIG else (TypeError if None in ids else IndexError)
    assert errors["python"][0] is expected  # was (BIG): IndexError "block id ... out of range"
    if "cpp" in errors:
        assert errors["python"] == errors["cpp"]


def test_python_pool_overflow_message():
    p, _ = _pool(BlockPool, BlockQueue, "none")
    with pytest.raises(OverflowError, match="Python int too large to convert to C long"):
        p.release_many([2**63])
