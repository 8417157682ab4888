"""kvsaga/marks.py's scatter and fill against the C++ core's (csrc/marks.h): the same
stores, the same errors, and bad input leaves the marks as they were on both."""

from __future__ import annotations

import gc
import sys

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga import marks as py
from kvsaga._core import cpp_available

pytestmark = pytest.mark.skipif(not cpp_available(), reason="the C++ core is not built")


def _cpp():
    from kvsaga import _kvcore
    return _kvcore


def both(kind: str, n: int, init):
    """Two equal fresh marks: a list or a bytearray of n entries."""
    if kind == "bytes":
        return bytearray(init), bytearray(init)
    return list(init), list(init)


def outcome(fn, *args):
    try:
        fn(*args)
        return None
    except Exception as e:  # noqa: BLE001 - the class and message are compared
        return type(e)


ids = st.lists(st.integers(-2, 9), max_size=12)
value = st.one_of(st.integers(-3, 300), st.none(), st.text(max_size=2), st.floats(0, 1))


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["list", "bytes"]), blocks=ids, values=st.lists(value, max_size=12),
       one=value)
def test_same_stores_and_errors_as_the_python_twin(kind, blocks, values, one):
    n = 8
    init = [i % 5 for i in range(n)]
    a, b = both(kind, n, init)
    assert outcome(py.scatter, a, blocks, values) == outcome(_cpp().scatter, b, blocks, values)
    assert a == b
    a2, b2 = both(kind, n, init)
    assert outcome(py.fill, a2, blocks, one) == outcome(_cpp().fill, b2, blocks, one)
    assert a2 == b2


@settings(max_examples=300, deadline=None)
@given(kind=st.sampled_from(["list", "bytes"]), blocks=ids,
       source=st.lists(st.one_of(st.integers(-3, 300), st.none()), max_size=10))
def test_copy_same_as_the_python_twin(kind, blocks, source):
    init = [i % 5 for i in range(8)]
    a, b = both(kind, 8, init)
    assert outcome(py.copy, a, source, blocks) == outcome(_cpp().copy, b, source, blocks)
    assert a == b


owner = st.sampled_from([None, "s1", "s2", 7])


@settings(max_examples=300, deadline=None)
@given(blocks=st.lists(st.integers(-1, 9), max_size=14),
       owners=st.lists(owner, min_size=8, max_size=8),
       positions=st.lists(st.one_of(st.integers(-2, 6), st.integers(2**62, 2**62 + 3)),
                          min_size=6, max_size=8))
def test_owner_runs_same_as_the_python_twin(blocks, owners, positions):
    want = outcome(py.owner_runs, blocks, owners, positions)
    assert want == outcome(_cpp().owner_runs, blocks, owners, positions)
    if want is None:
        got = _cpp().owner_runs(blocks, owners, positions)
        assert got == py.owner_runs(blocks, owners, positions)
        assert sum(k for _, k, _ in got) == len(blocks)


def test_owner_runs_reads_runs_and_falling_positions():
    owners = ["a", "a", "a", None, None, "b", "a"]
    positions = [5, 4, 3, 0, 1, 9, 8]
    for impl in (py, _cpp()):
        assert impl.owner_runs([0, 1, 2, 3, 4, 5, 6], owners, positions) == [
            ("a", 3, True), (None, 2, False), ("b", 1, True), ("a", 1, True)]
        assert impl.owner_runs([2, 1, 0], owners, positions) == [("a", 3, False)]


def test_bad_input_changes_nothing():
    for fn in (py.fill, _cpp().fill):
        m = bytearray(4)
        with pytest.raises(IndexError, match="block id 4 out of range"):
            fn(m, [0, 1, 4], 3)  # the last id is bad: the first two stay unwritten
        assert m == bytearray(4)
        with pytest.raises(ValueError, match="range\\(0, 256\\)"):
            fn(m, [0], 256)
        with pytest.raises(TypeError):
            fn((0, 0), [0], 1)  # neither a list nor a bytearray
        with pytest.raises(TypeError):
            fn([0, 0], ["0"], 1)
    for fn in (py.scatter, _cpp().scatter):
        m = [None] * 3
        with pytest.raises(ValueError, match="2 values for 3 block ids"):
            fn(m, [0, 1, 2], ["a", "b"])
        assert m == [None] * 3


@settings(max_examples=200, deadline=None)
@given(kind=st.sampled_from(["list", "bytes"]), blocks=st.lists(st.integers(0, 3), min_size=4,
                                                                 max_size=4))
def test_scatter_reads_values_before_storing_when_they_are_the_marks(kind, blocks):
    """`values` may be `marks` itself: both read it whole before the first store."""
    init = [10, 11, 12, 13] if kind == "list" else bytearray([10, 11, 12, 13])
    a, b = both(kind, 4, init)
    py.scatter(a, blocks, a)
    _cpp().scatter(b, blocks, b)
    assert a == b
    m = list(init)
    py.scatter(m, [1, 2, 3, 0], m)
    assert m == [13, 10, 11, 12]


def test_references_are_kept_and_released():
    """Each store takes a reference to its value and drops the one to what it replaced."""
    class Tracked:
        pass

    old, new = Tracked(), Tracked()
    m = [old] * 5
    before_old, before_new = sys.getrefcount(old), sys.getrefcount(new)
    _cpp().fill(m, [0, 2, 2, 4], new)  # a repeated id stores twice
    assert m == [new, old, new, old, new]
    assert sys.getrefcount(new) == before_new + 3
    assert sys.getrefcount(old) == before_old - 3
    _cpp().scatter(m, (1, 3), [new, new])
    del m
    gc.collect()
    assert sys.getrefcount(old) == before_old - 5
    assert sys.getrefcount(new) == before_new


def test_make_marks_picks_the_core():
    assert py.make_marks(False) == py.PYTHON == (py.scatter, py.fill, py.copy, py.owner_runs)
    cpp = _cpp()
    assert py.make_marks(True) == (cpp.scatter, cpp.fill, cpp.copy, cpp.owner_runs)
