"""`refresh_runs`, a usual search's index work in one call (session_heap.py, and
csrc/session_heap.cpp's twin): the same answers from both indexes, the same as the calls it
stands for made one by one, a bad push refused by both alike with nothing changed, and the
policies' victims the same whichever index they run on."""

from __future__ import annotations

import contextlib
import math
import random

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

import kvsaga.policy.groups as groups_module
from kvsaga import OutOfBlocks
from kvsaga.policy.session_heap import PySessionHeap, make_session_heap
from tests.policy.helpers import make
from tests.policy.test_session_heap import (
    SessionHeap,
    _apply,
    keys,
    needs_cpp,
    ops,
    sids,
    timed,
    times,
)
from tests.policy.victim_record import _agents_call, _policy, record

pushes = st.lists(st.tuples(sids, keys, st.integers(0, 9), st.integers(1, 5),
                            st.sampled_from([math.inf, 0.0, 0.5, 1.0, 3.0]), timed),
                  max_size=6)  # (past the C++ index's 4 read without allocating)
refresh = st.tuples(st.just("refresh_runs"), times, st.lists(sids, max_size=3), pushes,
                    st.integers(-1, 12), st.integers(0, 8))


def _one_by_one(index, now, drops, pushes, num_blocks, stale_limit):
    """What `refresh_runs` stands for, as the calls search.py made before it."""
    if len(index) > stale_limit:
        index.compact()
    for sid in drops:
        index.drop(sid)
    for sid, key, tie, size, until, rec in pushes:
        index.push(sid, key, tie, size, until, now, rec)
    due = index.due(now)
    if due:
        return due, None
    index.restore()
    return None, (index.runs(num_blocks) if num_blocks >= 0 else None)


def twin_heaps(cpp: bool, seq) -> tuple:
    """Two indexes of one kind (C++ or Python) after the same history `seq`."""
    a, b = make_session_heap(cpp), make_session_heap(cpp)
    for op in seq:
        _apply(a, op)
        _apply(b, op)
    return a, b


def _state(index) -> tuple:
    """What a search can read of an index: its size, its order (each live entry popped,
    then put back) and what is due later."""
    top = []
    while index.top() is not None:
        top.append((index.top(), index.pop()))
    index.restore()
    return len(index), top


@needs_cpp
@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(ops, refresh), max_size=50))
def test_refresh_runs_answers_alike_in_both_indexes(seq):
    py, cpp = PySessionHeap(), make_session_heap(True)
    for op in seq:
        assert _apply(py, op) == _apply(cpp, op), op


@pytest.mark.parametrize("cpp", [False, True], ids=["python", "cpp"])
@settings(max_examples=150, deadline=None)
@given(seq=st.lists(ops, max_size=30), call=refresh)
def test_refresh_runs_is_the_calls_it_stands_for(cpp, seq, call):
    """After any history, one `refresh_runs` leaves the index as the same calls made one
    by one, and answers as they do."""
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    a, b = twin_heaps(cpp, seq)
    _, now, drops, pushes, num_blocks, stale_limit = call
    assert a.refresh_runs(now, drops, pushes, num_blocks, stale_limit) == _one_by_one(
        b, now, drops, pushes, num_blocks, stale_limit)
    assert _state(a) == _state(b)
    for later in (0.5, 3.0, 50.0):
        assert a.due(later) == b.due(later)


GOOD_PUSH = ("s", (2, 0.5), 3, 2, 1.0, None)
BAD_PUSHES = [
    ["s"], ("s", (2, 0.5), 3, 2, 1.0), ("s", (2,), 3, 2, 1.0, None),
    ("s", (2, "x"), 3, 2, 1.0, None), ("s", [2, 0.5], 3, 2, 1.0, None),
    ("s", (2, 0.5), 3.0, 2, 1.0, None), ("s", (2, 0.5), 3, "2", 1.0, None),
    ("s", (2, 0.5), 3, 2, "1", None), (["s"], (2, 0.5), 3, 2, 1.0, None),
    ("s", (2, 0.5), 3, 2, 1.0, (0, 0, 1, 0.5, 7, 0.0, 1.0, 1.0, 1.0)),
    ("s", (2, 0.5), 3, 2, 1.0, (0, 0, 1, "v", 0, 0.0, 1.0, 1.0, 1.0)),
    # Values the index cannot hold: a size below 1 (`runs` would hand out more than asked),
    # a NaN key or deadline, a tie past int64 (C++ and Python once differed there).
    ("s", (2, 0.5), 3, -5, 1.0, None), ("s", (2, 0.5), 3, 0, 1.0, None),
    ("s", (math.nan, 0.5), 3, 2, 1.0, None), ("s", (2, math.nan), 3, 2, 1.0, None),
    ("s", (2, 0.5), 3, 2, math.nan, None), ("s", (2, 0.5), 2**70, 2, 1.0, None),
    ("s", (2, 0.5), -(2**63) - 1, 2, 1.0, None), ("s", (2, 0.5), 3, 2**63, 1.0, None),
    # A timed record of the wrong length, and a mode-2 formula of the wrong length: C++ once
    # raised these without naming the push.
    ("s", (2, 0.5), 3, 2, 1.0, (0, 0, 1)),
    ("s", (2, 0.5), 3, 2, 1.0, (0, 0, 1, (1.0, 2.0), 2, 0.0, 1.0, 1.0, 1.0)),
]


@pytest.mark.parametrize("bad", range(len(BAD_PUSHES)))
@pytest.mark.parametrize("drops", [[], ["a"], [["unhashable"]]])
def test_a_bad_push_is_refused_alike_and_changes_nothing(bad, drops):
    """The bad push comes after a good one and a drop: neither happens. Both indexes raise
    the same error class and message."""
    made = [PySessionHeap()]
    cpp = make_session_heap(True)
    if not isinstance(cpp, PySessionHeap):
        made.append(cpp)
    errors = []
    for index in made:
        index.push("a", (1, 0.0), 7, 1, 0.5, 0.0, None)
        index.push("b", (1, 1.0), 8, 2, math.inf, 0.0, None)
        before = _state(index)
        with pytest.raises((TypeError, ValueError)) as e:
            index.refresh_runs(1.0, drops, [GOOD_PUSH, BAD_PUSHES[bad]], 4, 100)
        errors.append((e.type, str(e.value)))
        if drops != [["unhashable"]]:  # (that drop fails first)
            assert str(e.value).startswith("refresh_runs: push 1"), e.value  # names the push
        assert _state(index) == before
        assert index.due(1.0) == ["a"]  # its timer was left alone too
    assert len(set(errors)) == 1, errors


@pytest.mark.parametrize("good", [0, 3, 4, 5, 9])
def test_a_bad_push_after_many_is_refused_alike(good):
    """A bad push after `good` good ones (the C++ index reads up to 4 pushes into the stack,
    more into a vector): the same error, nothing changed."""
    made = [PySessionHeap()]
    cpp = make_session_heap(True)
    if not isinstance(cpp, PySessionHeap):
        made.append(cpp)
    errors, after = [], []
    for index in made:
        index.push("a", (1, 0.0), 7, 1, 0.5, 0.0, None)
        before = _state(index)
        pushes = [(f"g{i}", (2, float(i)), 20 + i, 1, 1.0, None) for i in range(good)]
        with pytest.raises(TypeError) as e:
            index.refresh_runs(1.0, [], [*pushes, ("s", (2, 0.5), 3, 2, "x", None)], 4, 100)
        errors.append(str(e.value))
        assert _state(index) == before
        # The good ones alone: taken, each keyed (the runs name the lowest keys first).
        after.append((index.refresh_runs(2.0, ["a"], pushes, 3, 100), _state(index)))
    assert len(set(errors)) == 1 and errors[0].startswith(f"refresh_runs: push {good}")
    assert all(a == after[0] for a in after)
    assert after[0][0][1] == [(f"g{i}", 1) for i in range(min(good, 3))]


@pytest.mark.parametrize("spec", ["ttl", "saga", "graph", "adaptive"])
@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10**6), workload=st.sampled_from(["agents", "ops"]))
def test_victims_are_the_same_on_either_index(spec, seed, workload):
    """Randomized workloads (tests/policy/victim_record.py's, on the C++ core): every
    victim, offload choice and cached set alike whether the policies' index is the C++
    twin (one `refresh_runs` a search) or the Python reference."""
    if SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    on_cpp = record(spec, "gpu64", workload, seed=seed, calls=400)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(groups_module, "make_session_heap", lambda cpp: PySessionHeap())
        on_py = record(spec, "gpu64", workload, seed=seed, calls=400)
    assert on_cpp == on_py


class _Refusing:
    """An index whose `refresh_runs`, `refresh_victims`, `refresh_marked` and
    `refresh_marked_runs` raise (as on a bad push); the rest is the real one's."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def __len__(self):
        return len(self._real)

    def refresh_runs(self, *args):
        raise ValueError("refresh_runs: push 0: refused")

    refresh_victims = refresh_marked = refresh_marked_runs = refresh_runs


@pytest.mark.parametrize("spec", ["ttl", "graph"])
def test_a_refused_refresh_leaves_the_search_as_it_was(spec):
    """When the index refuses a search's pushes, the policy loses nothing: its marked
    sessions, bases and class ids stay, and the next search names the same victims as a twin
    whose search was never refused."""
    runs = []
    for _ in range(2):
        m = make(_policy(spec), num_blocks=64, num_host_blocks=0)
        rng, now = random.Random(5), 0.0
        for _ in range(300):
            with contextlib.suppress(OutOfBlocks):
                now = _agents_call(m, rng, now)
            now += 1e-3
        runs.append((m.policy, now))
    (refused, now), (twin, _) = runs
    assert twin._dirty  # something is marked for the search to key
    real = refused._index
    refused._index = _Refusing(real)
    with pytest.raises(ValueError, match="refused"):
        refused.choose_victims(4, now)
    refused._index = real
    assert refused._dirty == twin._dirty
    assert refused._base == twin._base
    assert refused._classes == twin._classes
    assert list(refused.choose_victims(4, now)) == list(twin.choose_victims(4, now))
