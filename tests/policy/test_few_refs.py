"""The C++ index's reads without generic paths (twenty-second session): `refresh_marked` and
`refresh_victims` read their marks and pushes from a set, a list or any iterable alike
(csrc/few_refs.h: an exact set or list read directly, anything else through a list), the
gone marks leave `bases` without a KeyError made, and `cut_tails` tells a session named twice
by equal session ids that are distinct objects, str or not (csrc/victim_runs.h: the few str
ids compared pairwise). Each is checked against the Python twin."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga.policy.session_heap import PySessionHeap, make_session_heap
from tests.policy.test_refresh_marked import _outcome, held_st
from tests.policy.test_session_heap import _apply, needs_cpp, ops, sids, times
from tests.policy.test_session_heap_refresh import _state, pushes, refresh

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True


def _indexes() -> tuple:
    """The Python index and the C++ one (the tests that call it need the C++ one built)."""
    return PySessionHeap(), make_session_heap(True)


# The same marks in the shapes a caller may hand them: the search's set, a list, a tuple,
# a generator, a frozenset, a dict's keys.
SHAPES = {"set": set, "list": list, "tuple": tuple, "generator": lambda m: (s for s in m),
          "frozenset": frozenset, "dict keys": lambda m: dict.fromkeys(m).keys()}


@needs_cpp
@pytest.mark.parametrize("shape", SHAPES)
@settings(max_examples=60, deadline=None)
@given(seq=st.lists(st.one_of(ops, refresh), max_size=30), now=times,
       marked=st.lists(sids, max_size=20), held=held_st, push=pushes,
       num_blocks=st.integers(-1, 12))
def test_marks_in_any_shape_answer_alike(shape, seq, now, marked, held, push, num_blocks):
    """Whatever iterable carries the marks (and the pushes, as a list or a tuple), both
    indexes answer alike and are left alike, `bases` too; the gone marks leave `bases`,
    absent ones are skipped."""
    py, cpp = _indexes()
    for op in seq:
        assert _apply(py, op) == _apply(cpp, op)
    groups = dict(held)
    bases = [{sid: 1.0 for sid in "abcdef" if sid != "c"} for _ in range(2)]
    got = [_outcome(ix.refresh_marked, now, SHAPES[shape](marked), tuple(push), num_blocks,
                    100, groups, b) for ix, b in zip((py, cpp), bases, strict=True)]
    assert got[0] == got[1]
    assert bases[0] == bases[1]
    assert _state(py) == _state(cpp)
    for later in (0.5, 3.0, 50.0):
        assert py.due(later) == cpp.due(later)


@pytest.mark.parametrize("index", [PySessionHeap, lambda: make_session_heap(True)],
                         ids=["python", "cpp"])
def test_gone_marks_leave_bases_and_absent_ones_are_skipped(index):
    """By example: "b" and "z" are gone; "b" leaves `bases`, "z" (never there) is skipped
    with no error, "a" (held) stays."""
    ix = index()
    ix.push("a", (1, 0.0), 7, 1, 0.5, 0.0, None)
    ix.push("b", (1, 1.0), 8, 2, 1e9, 0.0, None)
    bases = {"a": 2.0, "b": 3.0}
    due, runs, victims = ix.refresh_marked(0.1, {"a", "b", "z"}, [], 4, 100, {"a": [7]},
                                           bases)
    assert (due, runs, victims, bases) == (None, [("a", 1)], [7], {"a": 2.0})


class _Fickle(str):
    """A session id whose `__eq__` answers True once, then False (hashing as its str): a
    second lookup of it in `bases` would miss what the first found."""

    def __init__(self, _value):
        self.asked = 0

    def __eq__(self, other):
        self.asked += 1
        return self.asked == 1 and str.__eq__(self, other)

    __hash__ = str.__hash__


@pytest.mark.parametrize("make", [PySessionHeap, lambda: make_session_heap(True)],
                         ids=["python", "cpp"])
def test_a_gone_mark_leaves_bases_with_one_lookup(make):
    """`bases` loses a gone session as `dict.pop(sid, None)` does: one lookup, so an id that
    answers differently when asked again still leaves (before, the C++ index looked twice
    and raised KeyError half-way through the call)."""
    ix = make()
    ix.push("a", (1, 0.0), 7, 1, 0.5, 0.0, None)
    bases = {"b": 3.0, "a": 2.0}
    ix.refresh_marked(0.1, [_Fickle("b")], [], 4, 100, {"a": [7]}, bases)
    assert bases == {"a": 2.0}


def _equal_twin(sid):
    """An object equal to `sid`, hashing alike, but not `sid` itself (made at run time)."""
    if isinstance(sid, str):
        return "".join(list(sid))
    if isinstance(sid, tuple):
        return tuple(list(sid))
    return int(str(sid))


@pytest.mark.parametrize("sid", ["session-17", ("w", 3), 100001, "s" * 40],
                         ids=["str", "tuple", "int", "long str"])
def test_cut_tails_refuses_a_session_named_twice_by_equal_ids(sid):
    """Runs naming one session twice, through two distinct but equal ids (str or not), are
    refused (nothing changed) by both twins, as by identical ids; runs naming two sessions
    are taken."""
    twin = _equal_twin(sid)
    assert twin == sid and twin is not sid
    cpp = make_session_heap(True)
    if isinstance(cpp, PySessionHeap):
        pytest.skip("kvsaga._evict is not built")
    for cut in (PySessionHeap.cut_tails, type(cpp).cut_tails):
        for second in (sid, twin):
            groups = {sid: [1, 2, 3, 4]}
            dirty = (set(),)
            assert cut(groups, [(sid, 1), (second, 1)], [1, 2], dirty) is False
            assert groups == {sid: [1, 2, 3, 4]} and dirty == (set(),)
        groups = {sid: [1, 2], "other": [5, 6]}
        dirty = (set(), set())
        assert cut(groups, [(twin, 1), ("other", 2)], [1, 5, 6], dirty) is True
        assert groups == {sid: [2]} and dirty == ({sid, "other"},) * 2


@needs_cpp
@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 40), dup=st.integers(0, 39))
def test_cut_tails_many_runs_alike(n, dup):
    """More runs than the pairwise compare takes (the set then): both twins alike, with
    and without a session named twice."""
    cpp_cut = type(make_session_heap(True)).cut_tails
    sids_ = [f"s{i}" for i in range(n)]
    runs = [(s, 1) for s in sids_]
    if dup < n and n > 1:
        runs[dup] = ("".join(list(sids_[(dup + 1) % n])), 1)
    outs = []
    for cut in (PySessionHeap.cut_tails, cpp_cut):
        groups = {s: [10 * i, 10 * i + 1] for i, s in enumerate(sids_)}
        ids = [groups[s][0] for s, _ in runs]
        dirty = (set(),)
        outs.append((cut(groups, runs, ids, dirty), groups, dirty))
    assert outs[0] == outs[1]
