"""The C++ index's heap entries (csrc/entry_heap.h): 32-bit tags that wrap. Before the count
wraps, the index drops its stale entries and tags the live ones afresh in the same order, so
it answers every call as the Python reference does on either side of the wrap (only its
length, which counts stale entries, may differ: the wrap drops them)."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga.policy.session_heap import PySessionHeap, make_session_heap

from .test_session_heap import SessionHeap, _apply, ops

needs_cpp = pytest.mark.skipif(SessionHeap is None, reason="kvsaga._evict is not built")
TAGS = 2**32 - 1  # the tags a count holds before it wraps


def _answer(index, op: tuple):
    out = _apply(index, op)
    return out[0] if type(out) is tuple and len(out) == 2 and op[0] != "base" else out


@needs_cpp
@settings(max_examples=300, deadline=None)
@given(st.integers(0, 30), st.lists(ops, max_size=60))
def test_the_index_answers_as_the_reference_across_the_tags_wrap(before_wrap, seq):
    py, cpp = PySessionHeap(), make_session_heap(True)
    cpp._skip_tags(TAGS - before_wrap)  # the wrap comes after `before_wrap` entries
    for op in seq:
        assert _answer(py, op) == _answer(cpp, op), op


@needs_cpp
def test_equal_keys_and_tails_keep_their_order_across_the_wrap():
    # Two sessions with the same key and tail block order by when they were keyed (the
    # reference's version), before and after the wrap renumbers them; the stale entries of
    # a re-keyed session do not come back.
    py, cpp = PySessionHeap(), SessionHeap()
    cpp._skip_tags(TAGS - 4)
    for index in (py, cpp):
        index.push("b", (1, 0.0), 7, 2, math.inf, 0.0)
        index.push("a", (1, 0.0), 7, 2, math.inf, 0.0)
        index.push("c", (0, 0.0), 5, 1, math.inf, 0.0)
        index.push("c", (2, 0.0), 5, 1, math.inf, 0.0)
        # the 5th entry, past the wrap: c's first one, stale, went
        index.push("d", (1, 0.0), 7, 3, math.inf, 0.0)
    assert len(cpp) == 4 and len(py) == 5
    assert cpp.runs(20) == py.runs(20) == [("b", 2), ("a", 2), ("d", 3), ("c", 1)]


@needs_cpp
@pytest.mark.parametrize("n", [-1, 2**32])
def test_skip_tags_refuses_what_it_cannot_count(n):
    cpp = SessionHeap()
    with pytest.raises(ValueError, match="_skip_tags"):
        cpp._skip_tags(n)
    assert len(cpp) == 0
