"""kvsaga.block_queue.BlockQueue and the C++ core's BlockQueue (csrc/block_queue.h) on the
same random calls: the same answers, the same refusals (ValueError and its message for a
block queued twice, not queued, or named twice in a batch; a refused batch changes nothing),
the same order after every call. The pair had no direct differential test: the manager's
parity machine (tests/test_core_parity.py) reaches the queue only through the pool and LRU.
Ids stay in [0, capacity): out of range, the Python queue (a list) trusts its caller."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvsaga.block_queue import BlockQueue

CAP = 8
ids = st.integers(0, CAP - 1)
calls = st.one_of(
    st.tuples(st.just("push"), ids),
    st.tuples(st.just("remove"), ids),
    st.tuples(st.just("push_many"), st.lists(ids, max_size=5)),
    st.tuples(st.just("remove_many"), st.lists(ids, max_size=5)),
    st.tuples(st.just("pop_many"), st.integers(-2, CAP + 2)),
    st.tuples(st.just("head"), st.integers(-2, CAP + 2)),
    st.tuples(st.just("pop"), st.none()),
    st.tuples(st.just("peek"), st.none()),
    st.tuples(st.just("contains"), ids),
)


def _call(q, name, arg):
    try:
        if name == "contains":
            return ("ok", arg in q)
        fn = getattr(q, name)
        return ("ok", fn() if arg is None else fn(arg))
    except (ValueError, IndexError) as e:
        return (type(e).__name__, str(e))


@settings(max_examples=200, deadline=None)
@given(st.lists(calls, max_size=40))
def test_the_cpp_queue_answers_as_the_python_queue(program):
    kvcore = pytest.importorskip("kvsaga._kvcore")
    py, cpp = BlockQueue(CAP), kvcore.BlockQueue(CAP)
    for name, arg in program:
        if name == "pop" and len(py) == 0:
            continue  # the Python queue's pop assumes a non-empty queue (its docstring)
        want, got = _call(py, name, arg), _call(cpp, name, arg)
        assert got == want, (name, arg)
        assert list(cpp) == list(py), (name, arg)
        assert len(cpp) == len(py)
