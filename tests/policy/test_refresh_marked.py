"""`refresh_marked` (session_heap.py, and csrc/session_heap.cpp's twin): the usual search's
index call given the sessions marked since the last search, of which the index drops those
the groups no longer hold. Both indexes answer alike and are left alike, the answer is
`refresh_victims` given just the gone sessions as drops, and bad input is refused alike
(same error, same message) with nothing changed. `refresh_marked_runs` is the same call with
None in the victims' place (the manager's C++ core evicts the runs): `refresh_runs` of the gone."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga.policy.session_heap import PySessionHeap, make_session_heap
from tests.policy.test_session_heap import SessionHeap, _apply, needs_cpp, ops, sids, times
from tests.policy.test_session_heap_refresh import _state, pushes, refresh, twin_heaps

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

# Groups of some of the sessions the ops name (blocks distinct across sessions).
held_st = st.sets(st.sampled_from("abcdef")).map(
    lambda held: {sid: [100 * (ord(sid) - 96) + j for j in range(3)] for sid in sorted(held)})


def _indexes() -> list:
    """The Python index, and the C++ one where it was built."""
    out = [PySessionHeap()]
    cpp = make_session_heap(True)
    if not isinstance(cpp, PySessionHeap):
        out.append(cpp)
    return out


def _outcome(fn, *args):
    """(what `fn(*args)` returned, or its error's type and message)."""
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 (the error itself is compared)
        return type(e).__name__, str(e)


def _runs_only(outcome):
    """`refresh_runs`' outcome as `refresh_marked_runs` gives it: None for the victims."""
    return ("ok", (*outcome[1], None)) if outcome[0] == "ok" else outcome


@pytest.mark.parametrize("runs", [False, True], ids=["listed", "runs"])
@pytest.mark.parametrize("cpp", [False, True], ids=["python", "cpp"])
@settings(max_examples=200, deadline=None)
@given(seq=st.lists(st.one_of(ops, refresh), max_size=40), now=times,
       marked=st.lists(sids, max_size=5), held=held_st, push=pushes,
       num_blocks=st.integers(-1, 12), stale_limit=st.integers(0, 8))
def test_refresh_marked_is_refresh_victims_of_the_gone(cpp, runs, seq, now, marked, held,
                                                       push, num_blocks, stale_limit):
    """After any history, `refresh_marked` answers as `refresh_victims` given as drops the
    marked sessions that `groups` does not hold, and leaves the index as it does."""
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    a, b = twin_heaps(cpp, seq)
    # Every session a push or the history names may be a victim: give each a group.
    groups = {sid: held.get(sid, [500 + ord(sid), 600 + ord(sid)]) for sid in "abcdef"}
    for sid in "abcdef":
        if sid not in held and sid in marked:
            del groups[sid]  # marked and holding nothing: gone
    gone = [sid for sid in marked if sid not in groups]
    if runs:  # (no victims read off the groups: the runs as `refresh_runs` gives them)
        got = _outcome(a.refresh_marked_runs, now, marked, push, num_blocks, stale_limit,
                       groups)
        want = _runs_only(_outcome(b.refresh_runs, now, gone, push, num_blocks, stale_limit))
    else:
        got = _outcome(a.refresh_marked, now, marked, push, num_blocks, stale_limit, groups)
        want = _outcome(b.refresh_victims, now, gone, push, num_blocks, stale_limit, groups)
    assert got == want
    assert _state(a) == _state(b)
    for later in (0.5, 3.0, 50.0):
        assert a.due(later) == b.due(later)


@pytest.mark.parametrize("call", ["refresh_marked", "refresh_marked_runs"])
@needs_cpp
@settings(max_examples=300, deadline=None)
@given(seq=st.lists(st.one_of(ops, refresh), max_size=40), now=times,
       marked=st.lists(sids, max_size=5), held=held_st, push=pushes,
       num_blocks=st.integers(-1, 12), stale_limit=st.integers(0, 8))
def test_refresh_marked_answers_alike_in_both_indexes(call, seq, now, marked, held, push,
                                                      num_blocks, stale_limit):
    """The twins: the same history and call give the same answer (or the same error) and
    leave the same index, whichever sessions the groups hold."""
    py, cpp = _indexes()
    for op in seq:
        assert _apply(py, op) == _apply(cpp, op)
    groups = dict(held)
    args = (now, marked, push, num_blocks, stale_limit, groups)
    assert _outcome(getattr(py, call), *args) == _outcome(getattr(cpp, call), *args)
    assert _state(py) == _state(cpp)
    for later in (0.5, 3.0, 50.0):
        assert py.due(later) == cpp.due(later)


def _two_sessions(index) -> None:
    index.push("a", (1, 0.0), 7, 1, 0.5, 0.0, None)
    index.push("b", (1, 1.0), 8, 2, math.inf, 0.0, None)


GOOD_PUSH = ("s", (2, 0.5), 3, 2, 1.0, None)
BAD = {
    "groups not a dict": (1.0, ["a"], [GOOD_PUSH], [("s", [1])], "TypeError",
                          "groups must be a dict"),
    "NaN now": (math.nan, ["a"], [GOOD_PUSH], {}, "ValueError",
                "refresh_runs: now must not be NaN"),
    "unhashable mark": (1.0, ["a", ["x"]], [GOOD_PUSH], {}, "TypeError",
                        "unhashable type: 'list'"),
    "marks not iterable": (1.0, 5, [GOOD_PUSH], {}, "TypeError",
                           "'int' object is not iterable"),
    "bad push after the marks": (1.0, ["a"], [GOOD_PUSH, ("s", (2, "x"), 3, 2, 1.0, None)], {},
                                 "TypeError", "refresh_runs: push 1: key must be a tuple of "
                                 "two numbers"),
}


@pytest.mark.parametrize("call", ["refresh_marked", "refresh_marked_runs"])
@pytest.mark.parametrize("case", BAD)
def test_bad_input_is_refused_alike_and_changes_nothing(case, call):
    """A bad call raises the same error with the same message in both indexes, and the
    index is as it was: the gone mark "a" was not dropped, the good push not made, the
    timers left alone."""
    now, marked, push, groups, kind, message = BAD[case]
    for index in _indexes():
        _two_sessions(index)
        before = _state(index)
        with pytest.raises((TypeError, ValueError)) as e:
            getattr(index, call)(now, marked, push, 4, 100, groups)
        assert (e.type.__name__, str(e.value)) == (kind, message), type(index).__name__
        assert _state(index) == before
        assert index.due(1.0) == ["a"]


def test_a_held_mark_is_kept_and_a_gone_one_dropped():
    """By example: of the marks "a" (held) and "b" (gone), only "b" leaves the index; "a"
    keeps its entry (no push re-keyed it), and the runs name it."""
    for index in _indexes():
        _two_sessions(index)
        due, runs, victims = index.refresh_marked(0.1, {"a", "b"}, [], 4, 100, {"a": [7]})
        assert (due, runs, victims) == (None, [("a", 1)], [7]), type(index).__name__
        index.restore()
        assert [sid for _, sid in _state(index)[1]] == ["a"], type(index).__name__
