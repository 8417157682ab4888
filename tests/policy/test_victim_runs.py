"""A search's runs off the session groups (kvsaga/policy/victim_runs.py, and csrc/
victim_runs.h's twin, both carried by the indexes): `tail_victims`, `cut_tails` and
`refresh_victims` answer alike in both, leave the groups and the marked sets alike, refuse
bad input alike (same error, same message) with nothing changed, and are what the Python
loops they replace did."""

from __future__ import annotations

import copy
import re

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga.policy.session_heap import PySessionHeap, make_session_heap
from kvsaga.policy.victim_runs import cut_tails, tail_victims
from tests.policy.test_session_heap import SessionHeap, _apply, needs_cpp, ops
from tests.policy.test_session_heap_refresh import refresh

SIDS = ("a", "b", "c", "d")
# Groups: each session's blocks, distinct across sessions (a block sits in one group).
groups_st = st.lists(st.lists(st.integers(0, 3), min_size=1, max_size=5), min_size=4,
                     max_size=4).map(
    lambda sizes: {sid: [10 * i + j for j in range(len(g))]
                   for i, (sid, g) in enumerate(zip(SIDS, sizes, strict=True)) if i % 4 != 3
                   or len(g) > 2})
runs_st = st.lists(st.tuples(st.sampled_from((*SIDS, "zz")), st.integers(-1, 6)), max_size=4)


def _outcome(fn, *args):
    """(what `fn(*args)` returned, or its error's type and message)."""
    try:
        return "ok", fn(*args)
    except Exception as e:  # noqa: BLE001 (the error itself is compared)
        return type(e).__name__, str(e)


def _python_loop_victims(groups, runs):
    """What search.py's loop did before `tail_victims`."""
    out = []
    for sid, k in runs:
        out += groups[sid][:k]
    return out


def _python_loop_cut(groups, runs, block_ids, dirty):
    """What groups.py `_tail_runs` did before `cut_tails` (for runs of counts >= 1 that
    fit their groups: its reachable input)."""
    seen, i = set(), 0
    for sid, k in runs:
        g = groups.get(sid)
        if g is None or sid in seen or g[:k] != block_ids[i:i + k]:
            return False
        seen.add(sid)
        i += k
    for sid, k in runs:
        g = groups[sid]
        if k == len(g):
            del groups[sid]
        else:
            del g[:k]
        for d in dirty:
            d.add(sid)
    return True


def _block_ids(groups, runs, mess):
    """The victims the runs name where they can (a tail of each group), then `mess`
    applied: 0 as named, 1 one block dropped, 2 one block changed, 3 reversed."""
    out = []
    for sid, k in runs:
        out += groups.get(sid, [999])[:max(k, 0)]
    if mess == 1 and out:
        out.pop()
    elif mess == 2 and out:
        out[len(out) // 2] += 1000
    elif mess == 3:
        out.reverse()
    return out


@needs_cpp
@settings(max_examples=400, deadline=None)
@given(groups_st, runs_st, st.integers(0, 3))
def test_both_twins_answer_alike(groups, runs, mess):
    block_ids = _block_ids(groups, runs, mess)
    py_groups, cpp_groups = groups, copy.deepcopy(groups)
    assert _outcome(tail_victims, py_groups, runs) == _outcome(
        SessionHeap.tail_victims, cpp_groups, runs)
    py_dirty, cpp_dirty = ({"x"}, set()), ({"x"}, set())
    before = copy.deepcopy(groups)
    got_py = _outcome(cut_tails, py_groups, runs, block_ids, py_dirty)
    got_cpp = _outcome(SessionHeap.cut_tails, cpp_groups, runs, block_ids, cpp_dirty)
    assert got_py == got_cpp
    assert py_groups == cpp_groups and py_dirty == cpp_dirty
    if got_py != ("ok", True):  # refused: nothing changed
        assert py_groups == before and py_dirty == ({"x"}, set())


@settings(max_examples=400, deadline=None)
@given(groups_st, runs_st, st.integers(0, 3))
def test_they_are_the_loops_they_replace(groups, runs, mess):
    """On the input the policies give (runs of counts >= 1, sessions with groups), the same
    victims, and the same cut, marks and answer as the Python loops before them."""
    runs = [(sid, k) for sid, k in runs if k >= 1 and sid in groups]
    assert tail_victims(groups, runs) == _python_loop_victims(groups, runs)
    runs = [(sid, min(k, len(groups[sid]))) for sid, k in runs]
    block_ids = _block_ids(groups, runs, mess)
    mine, theirs = copy.deepcopy(groups), copy.deepcopy(groups)
    d1, d2 = (set(),), (set(),)
    assert cut_tails(mine, runs, block_ids, d1) == _python_loop_cut(theirs, runs, block_ids, d2)
    assert mine == theirs and d1 == d2


BAD = [
    ([], "groups must be a dict"),  # groups
    ({"a": [1]}, "runs must be a list of (session, count) tuples", [("a",)]),
    ({"a": [1]}, "runs: a count must be an integer, got str", [("a", "1")]),
    ({"a": (1,)}, "groups: a session's group must be a list", [("a", 1)]),
]


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("cpp", [False, True])
def test_bad_input_is_refused_alike(bad, cpp):
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    index = make_session_heap(cpp)
    groups, message, *rest = bad
    runs = rest[0] if rest else []
    if not isinstance(groups, dict):
        runs = [("a", 1)]
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        index.tail_victims(groups, runs)
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        index.cut_tails(groups, runs, [1], (set(),))
    with pytest.raises(TypeError, match="^block_ids must be a list$"):
        index.cut_tails({}, [], (1,), (set(),))
    with pytest.raises(TypeError, match="^dirty must be a tuple of sets$"):
        index.cut_tails({}, [], [], [set()])
    with pytest.raises(KeyError):
        index.tail_victims({}, [("a", 1)])
    with pytest.raises(ValueError, match="^runs: a count must be >= 0$"):
        index.tail_victims({"a": [1]}, [("a", -1)])


@needs_cpp
@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(ops, refresh), max_size=40), groups_st)
def test_refresh_victims_is_refresh_runs_and_its_victims(seq, groups):
    """After any history, both indexes give (due, runs, victims) alike, and that is
    `refresh_runs`' answer with `tail_victims` of its runs."""
    indexes = [PySessionHeap(), make_session_heap(True), PySessionHeap()]
    for op in seq:
        for index in indexes:
            _apply(index, op)
    groups = {sid: g + list(range(100, 100 + 6)) for sid, g in groups.items()}
    for sid in "abcdefg":  # every session the ops name holds blocks
        groups.setdefault(sid, [200 + ord(sid), 300 + ord(sid)])
    args = (0.5, ["a"], [], 6, 4)
    got = [_outcome(index.refresh_victims, *args, groups) for index in indexes[:2]]
    assert got[0] == got[1]
    due, runs = indexes[2].refresh_runs(*args)
    victims = None if runs is None else tail_victims(groups, runs)
    assert got[0] == ("ok", (due, runs, victims))
