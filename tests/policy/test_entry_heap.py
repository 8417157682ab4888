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


@pytest.fixture(autouse=True)
def _each_core():
    """Overrides conftest.py's fixture of that name: these tests build their indexes
    themselves and read no KVSAGA_CORE, so they run once, not once a core."""


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


def _both(skip: int, steps) -> list:
    """[runs' answers] of the C++ index whose tags wrap `skip` tags in, checked against the
    reference's; a step: ("runs", n), ("restore",) or (session, key, tail) (a push of 1 block)."""
    out = []
    for index in (PySessionHeap(), SessionHeap()):
        if isinstance(index, SessionHeap):
            index._skip_tags(skip)
        out.append([])
        for step in steps:
            if step[0] == "runs":
                out[-1].append(index.runs(step[1]))
            elif step[0] == "restore":
                index.restore()
            else:
                index.push(step[0], step[1], step[2], 1, math.inf, 0.0)
    assert out[1] == out[0]
    return out[1]


@needs_cpp
def test_a_session_keyed_again_as_the_tags_wrap_is_one_victim():
    # a's first entry is live when the wrap renumbers it (tag 1): the new entry's tag is 2,
    # not 1 again (which would make the stale entry match too: a named twice)
    assert _both(TAGS - 1, [("a", (1, 0.0), 7), ("a", (0, 0.0), 7), ("runs", 20)]) == [
        [("a", 1)]]


@needs_cpp
def test_the_wrap_numbers_the_heap_in_its_tags_order_not_its_array_order():
    # the heap's array holds c, a, b: b, keyed before a with the same key and tail, stays first
    steps = [("b", (1, 0.0), 7), ("a", (1, 0.0), 7), ("c", (0, 0.0), 7),
             ("z", (5, 0.0), 1),  # the wrap
             ("runs", 20)]
    assert _both(TAGS - 3, steps) == [[("c", 1), ("b", 1), ("a", 1), ("z", 1)]]


@needs_cpp
def test_the_wrap_numbers_the_entries_a_search_took_aside():
    # b, taken aside by runs(1) when y's entry wraps the tags, comes back before a
    steps = [("b", (1, 0.0), 7), ("a", (1, 0.0), 7), ("runs", 1),
             ("z", (5, 0.0), 1), ("y", (6, 0.0), 1),  # y: the wrap
             ("restore",), ("runs", 20)]
    assert _both(TAGS - 3, steps) == [[("b", 1)], [("b", 1), ("a", 1), ("z", 1), ("y", 1)]]
