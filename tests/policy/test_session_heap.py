"""The victim index (kvsaga/policy/session_heap.py): its Python reference and its C++ twin
(kvsaga._evict) answer every call sequence alike."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga.policy.session_heap import PySessionHeap, make_session_heap

try:
    from kvsaga._evict import SessionHeap
except ImportError:  # not built: the Python index runs everywhere
    SessionHeap = None

needs_cpp = pytest.mark.skipif(SessionHeap is None, reason="kvsaga._evict is not built")

sids = st.sampled_from("abcdef")
keys = st.tuples(st.integers(0, 3), st.sampled_from([-math.inf, -1.5, 0.0, 0.25, 2.0]))
times = st.sampled_from([0.0, 0.5, 1.0, 2.0, 5.0])
ops = st.one_of(
    st.tuples(st.just("push"), sids, keys, st.integers(0, 9), st.integers(1, 5),
              st.sampled_from([math.inf, 0.0, 0.5, 1.0, 3.0]), times),
    st.tuples(st.just("drop"), sids),
    st.tuples(st.just("due"), times),
    st.tuples(st.just("top")),
    st.tuples(st.just("pop")),
    st.tuples(st.just("runs"), st.integers(0, 12)),
    st.tuples(st.just("restore")),
    st.tuples(st.just("compact")),
    st.tuples(st.just("clear")),
)


def _apply(index, op: tuple):
    name, *args = op
    if name == "pop" and index.top() is None:
        return None  # pop needs a live entry
    out = getattr(index, name)(*args)
    return out, len(index)


@needs_cpp
@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=60))
def test_cpp_index_answers_as_the_python_reference(seq):
    py, cpp = PySessionHeap(), SessionHeap()
    for op in seq:
        # Keys come back as floats from C++: equal numbers compare equal.
        assert _apply(py, op) == _apply(cpp, op), op


@pytest.mark.parametrize("make", [PySessionHeap, SessionHeap], ids=["python", "cpp"])
def test_runs_take_whole_sessions_lowest_key_first_and_restore_the_unevicted(make):
    if make is None:
        pytest.skip("kvsaga._evict is not built")
    index = make()
    index.push("a", (2, 0.5), 10, 4, math.inf, 0.0)
    index.push("b", (1, 9.0), 20, 3, math.inf, 0.0)
    index.push("c", (2, 0.1), 30, 5, 1.0, 0.0)
    index.push("a", (0, 0.0), 10, 2, math.inf, 0.0)  # re-keyed: the first entry is stale
    assert index.runs(6) == [("a", 2), ("b", 3), ("c", 1)]
    assert index.top() is None  # all three taken aside
    index.drop("b")  # evicted
    index.restore()  # a and c were not re-keyed: back in the index
    assert index.top() == ((0, 0.0), 10)
    assert index.due(0.5) == [] and index.due(1.0) == ["c"]
    index.compact()
    assert len(index) == 2


def test_make_session_heap_falls_back_to_python():
    assert type(make_session_heap(False)) is PySessionHeap
    expected = PySessionHeap if SessionHeap is None else SessionHeap
    assert type(make_session_heap(True)) is expected
