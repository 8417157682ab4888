"""The victim index (kvsaga/policy/session_heap.py): its Python reference and its C++ twin
(kvsaga._evict) answer every call sequence alike."""

from __future__ import annotations

import math
import sys
import types

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga.policy import search
from kvsaga.policy.search import grid_index
from kvsaga.policy.session_heap import PySessionHeap, make_session_heap

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

try:
    from kvsaga._evict import SessionHeap
except ImportError:  # not built: the Python index runs everywhere
    SessionHeap = None

needs_cpp = pytest.mark.skipif(SessionHeap is None, reason="kvsaga._evict is not built")

sids = st.sampled_from("abcdef")
keys = st.tuples(st.integers(0, 3), st.sampled_from([-math.inf, -1.5, 0.0, 0.25, 2.0]))
TIMES = [0.0, 0.5, 1.0, 2.0, 5.0]
times = st.sampled_from(TIMES)
# Timed records (session_heap.py's docstring) at grid points that the times above reach.
grid_points = st.sampled_from(sorted({grid_index(max(b - a, 0.0))[0]
                                      for a in TIMES for b in TIMES}))
record_ends = (times, st.sampled_from([math.inf, 0.5, 2.0]),
               st.sampled_from([math.inf, 1.0, 3.0]), st.sampled_from([1.0, 2.5]))
timed = st.one_of(st.none(), st.tuples(
    st.integers(0, 2), grid_points, st.integers(0, 3), st.sampled_from([-2.0, 0.0, 0.75]),
    st.integers(0, 1), *record_ends), st.tuples(  # a formula (mode 2), classes of their own
    st.integers(3, 4), grid_points, st.integers(0, 3),
    st.tuples(st.just(0.3), st.sampled_from([1.0, 0.7]), st.sampled_from([0.0, 0.45]),
              st.sampled_from([0.05, 0.2])), st.just(2), *record_ends), st.tuples(
    # ttl's (mode 3) and graph's (mode 4) formulas: classes of their own
    st.just(5), grid_points, st.just(1), st.tuples(
        st.sampled_from([-1.0, 0.5]), st.sampled_from([0.3, 1.5]), st.sampled_from([0.6, 1.0]),
        st.just(0.2), st.sampled_from([1e-3, 0.05]), st.just(4.0), st.just(2.5e-4),
        st.sampled_from([0.5, 4.0])), st.just(3), times, st.sampled_from([math.inf, 2.0]),
    st.sampled_from([math.inf, 3.0]), st.just(1.0)), st.tuples(
    st.just(6), grid_points, st.just(1), st.tuples(
        st.sampled_from([0.5, 2.0]), st.sampled_from([-1.0, 0.5]), st.sampled_from([0.3, 1.5]),
        st.sampled_from([0.6, 1.0]), st.sampled_from([0.0, 0.4]), st.sampled_from([1.0, 1.3]),
        st.just(1e-3), st.sampled_from([1.0, 20.085536923187668])), st.just(4), *record_ends))
ops = st.one_of(
    st.tuples(st.just("push"), sids, keys, st.integers(0, 9), st.integers(1, 5),
              st.sampled_from([math.inf, 0.0, 0.5, 1.0, 3.0]), times, timed),
    st.tuples(st.just("forget_keys")),
    st.tuples(st.just("drop"), sids),
    st.tuples(st.just("due"), times),
    st.tuples(st.just("top")),
    st.tuples(st.just("base"), sids),
    st.tuples(st.just("pop")),
    st.tuples(st.just("runs"), st.integers(0, 12)),
    st.tuples(st.just("restore")),
    st.tuples(st.just("compact")),
    st.tuples(st.just("clear")),
    st.tuples(st.just("timed_classes"), st.one_of(st.none(), st.lists(sids, max_size=4))),
    # A re-key of all (None) or some sessions: classes mapped to themselves or to others
    # (a formula's class or not).
    st.tuples(st.just("rekey_classes"),
              st.dictionaries(st.integers(0, 6), st.integers(0, 6), max_size=4), times,
              st.one_of(st.none(), st.lists(sids, max_size=4))),
)


def _apply(index, op: tuple):
    name, *args = op
    if name == "pop" and index.top() is None:
        return None  # pop needs a live entry
    if name == "base":
        try:
            return index.base(*args)
        except KeyError:
            return KeyError
    out = getattr(index, name)(*args)
    return out, len(index)


@needs_cpp
@settings(max_examples=300, deadline=None)
@given(st.lists(ops, max_size=60))
def test_cpp_index_answers_as_the_python_reference(seq):
    py, cpp = PySessionHeap(), make_session_heap(True)
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


@pytest.mark.parametrize("cpp", [False, True], ids=["python", "cpp"])
def test_a_due_session_is_re_keyed_from_its_class_key_at_its_new_grid_point(cpp):
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    index = make_session_heap(cpp)
    k, lo, hi = grid_index(0.5)
    # "a" paused at 0 (key at grid point k: class 7), "b" at 1 keyed at its own point;
    # both are due once 1.5 passes, b at point k (a's key by class), a past its limit.
    index.push("a", (2, 1.0), 10, 4, hi, 0.5, (7, k, 2, 0.25, 0, 0.0, 1.2, math.inf, 4.0))
    kb, _, hb = grid_index(0.2)
    index.push("b", (2, 3.0), 20, 4, 1.0 + hb, 1.2, (7, kb, 2, 3.0, 0, 1.0, math.inf, 9.0, 1.0))
    assert index.due(1.5) == ["a"]  # past its limit: Python re-keys it
    assert index.top() == ((2, 0.25 * 1.0), 20)  # b: class 7's value at k, times its mult
    index.forget_keys()
    index.push("a", (1, 0.0), 10, 4, math.inf, 1.5)
    assert index.due(1.0 + 2 * hi) == ["b"]  # no key left for its class


# One bad field per record (timed_keys.py `check_timed`); good records of each mode first.
GOOD = {
    0: (1, 3, 2, 0.5, 0, 0.0, math.inf, math.inf, 1.0),
    2: (1, 3, 2, (0.3, 1.0, 0.0, 0.2), 2, 0.0, math.inf, math.inf, 1.0),
    3: (1, 3, 1, (0.5, 1.5, 0.6, 0.2, 1e-3, 4.0, 2.5e-4, 4.0), 3, 0.0, math.inf, math.inf,
        1.0),
    4: (1, 3, 1, (0.5, 0.5, 1.5, 0.6, 0.4, 1.3, 1e-3, 1.0), 4, 0.0, math.inf, math.inf, 1.0),
}
BAD_FIELDS = ["0.5", "x", None, math.nan, math.inf, -math.inf, 0.0, -1.0, 1.5, 0, True, 2.0]


def _with(record: tuple, at: int, x, inner: int | None = None) -> tuple:
    rec = list(record)
    if inner is None:
        rec[at] = x
    else:
        v = list(rec[at])
        v[inner] = x
        rec[at] = tuple(v)
    return tuple(rec)


bad_records = st.sampled_from(sorted(GOOD)).flatmap(lambda mode: st.one_of(
    st.builds(_with, st.just(GOOD[mode]), st.integers(0, 8), st.sampled_from(BAD_FIELDS)),
    st.builds(_with, st.just(GOOD[mode]), st.just(3), st.sampled_from(BAD_FIELDS),
              st.integers(0, len(GOOD[mode][3]) - 1)) if mode >= 2 else st.nothing()))


def _outcome(index, sid, timed):
    try:
        index.push(sid, (2, 0.0), 5, 1, 0.5, 0.0, timed)
    except Exception as e:  # noqa: BLE001 - the class and message are compared
        return type(e), str(e)
    return None


@needs_cpp
@settings(max_examples=400, deadline=None)
@given(bad_records, st.lists(st.sampled_from(sorted(GOOD)), max_size=3))
def test_bad_timed_records_raise_alike_and_change_nothing(timed, before):
    """The same error (class and message naming the field) from both, or both accept; a
    refused push leaves either index as it was, and what either accepts re-keys alike."""
    py, cpp = PySessionHeap(), make_session_heap(True)
    for i, mode in enumerate(before):
        for index in (py, cpp):
            index.push(f"s{i}", (2, float(i)), i, 1, 0.5, 0.0, GOOD[mode])
    out = _outcome(py, "s0", timed)
    assert out == _outcome(cpp, "s0", timed), timed
    assert len(py) == len(cpp)
    assert py.top() == cpp.top()
    for now in (0.7, 3.0, 50.0):
        assert py.due(now) == cpp.due(now)
        assert py.top() == cpp.top()


@pytest.mark.parametrize("cpp", [False, True], ids=["python", "cpp"])
def test_timed_formulas_are_checked_at_push(cpp):
    """Each case the reviewer found: a str, a float mode, a zero n or r (Python divided by
    zero inside `due`, after popping the timer), a NaN mu (a NaN key)."""
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    index = make_session_heap(cpp)
    index.push("a", (2, 1.0), 1, 1, 0.5, 0.0, GOOD[3])
    cases = [
        (_with(GOOD[3], 3, "0.5", 0), TypeError, "timed: mode 3 mu must be a real number, got str"),
        (_with(GOOD[0], 4, 1.0), TypeError, "timed: mode must be an integer, got float"),
        (_with(GOOD[3], 3, 0.0, 5), ValueError, "timed: mode 3 n must be finite and > 0, got 0.0"),
        (_with(GOOD[3], 3, 0.0, 6), ValueError, "timed: mode 3 r must be finite and > 0, got 0.0"),
        (_with(GOOD[3], 3, math.nan, 0), ValueError, "timed: mode 3 mu must be finite, got nan"),
        (_with(GOOD[3], 3, 1.5, 2), ValueError, "timed: mode 3 p0 must be finite and in [0, 1]"),
        (_with(GOOD[4], 3, -0.1, 2), ValueError, "timed: mode 4 sigma must be finite and >= 0"),
        (_with(GOOD[4], 3, 0.0, 6), ValueError, "timed: mode 4 min_wait must be finite and > 0"),
        (_with(GOOD[4], 3, 0.0, 7), ValueError, "timed: mode 4 hedge must be finite and > 0"),
        (_with(GOOD[2], 3, 0.0, 1), ValueError, "timed: mode 2 s must be finite and > 0"),
        (_with(GOOD[0], 5, math.nan), ValueError, "timed: t0 must be not NaN, got nan"),
    ]
    for timed, error, message in cases:
        with pytest.raises(error) as raised:
            index.push("b", (0, 0.0), 2, 1, 0.5, 0.0, timed)
        assert str(raised.value).startswith(message)
        assert len(index) == 1 and index.top() == ((2, 1.0), 1)
    assert index.due(0.7) == []  # "a" re-keyed by its class's formula; "b" never entered
    assert len(index) == 2 and index.top()[1] == 1


@needs_cpp
def test_the_quantile_falls_back_to_normal_dist_inv_cdf(monkeypatch):
    """Without statistics' private `_normal_dist_inv_cdf` the C++ index calls the public
    NormalDist().inv_cdf and keys graph's formula (mode 4) to the same float."""
    import statistics

    def keys(index) -> list:
        out = []
        for t in (0.3, 2.0, 40.0, 900.0):
            index.push("g", (0, 0.0), 1, 1, 1e-9, 0.0, GOOD[4])
            assert index.due(t) == []
            out.append(index.top())
        return out

    want = keys(PySessionHeap())
    assert keys(make_session_heap(True)) == want
    # A statistics module without the private function (NormalDist's own module keeps it).
    public = types.ModuleType("statistics")
    public.NormalDist = statistics.NormalDist
    monkeypatch.setitem(sys.modules, "statistics", public)
    assert keys(make_session_heap(True)) == want


@pytest.mark.parametrize("cpp", [False, True], ids=["python", "cpp"])
def test_a_full_re_key_moves_sessions_to_their_class_under_new_statistics(cpp):
    """`rekey_classes`: a session of a forgotten class (old statistics) is keyed from the
    class its signature has now when that class has a formula (ttl's: its limit and
    deadline from the new break-even time), itself re-keyed from its own class while
    those keys hold; the others, and sessions without a record, go back to Python."""
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    from kvsaga.policy.timed_keys import ttl_window_key

    index = make_session_heap(cpp)
    old, new = GOOD[3][3], _with(GOOD[3], 3, 2.5, 7)[3]  # the break-even time 4 -> 2.5
    k, _, _ = grid_index(0.2)
    index.push("a", (2, 1.0), 10, 4, 0.3, 0.2, (5, k, 1, old, 3, 0.0, 4.0, 4.0, 1.0))
    index.push("b", (2, 2.0), 20, 4, 0.3, 0.2, (1, k, 2, 0.5, 0, 0.0, math.inf, math.inf, 2.0))
    index.push("c", (3, 0.0), 30, 4, math.inf, 0.2)  # no timed record
    index.push("d", (2, 0.0), 40, 4, 0.3, 0.2, (8, k, 1, new, 3, 0.1, 2.5, 2.6, 1.0))
    assert index.timed_classes() == {5: "a", 1: "b", 8: "d"}
    index.forget_keys()
    index.push("d", (2, 5.0), 40, 4, 0.3, 0.2, (9, k, 1, new, 3, 0.1, 2.5, 2.6, 1.0))
    # a: class 5 -> 9 (a formula); b: class 1 -> 1, but the table was forgotten; d: its
    # class is not mapped (as the session a full re-key keyed in Python to learn it).
    assert index.rekey_classes({5: 9, 1: 1}, 1.0) == {"b", "c", "d"}
    _, lo, _ = grid_index(1.0)
    assert index.top() == (ttl_window_key(new, 0.0, lo), 10)
    assert "a" not in index.due(2.4)  # re-keyed at its grid points below the new limit
    assert index.due(2.5) == ["a"]  # past the new break-even time: Python keys it
    index.drop("a")
    index.drop("d")
    index.push("e", (2, 0.0), 50, 4, 0.3, 3.0, (1, k, 2, 0.5, 0, 2.8, math.inf, math.inf, 1.0))
    # b and e move to class 9: b is past its break-even time, e (paused at 2.8) is not.
    assert index.rekey_classes({1: 9}, 3.0) == {"b", "c"}
    assert index.top() == (ttl_window_key(new, 2.8, grid_index(0.2)[1]), 50)


# Elapsed times at, just below and just above every grid point held, and past them.
_EDGES = [x for p in search._GRID_POINTS for x in (p, math.nextafter(p, 0.0),
                                                   math.nextafter(p, math.inf))]


@needs_cpp
@settings(max_examples=500, deadline=None)
@given(st.one_of(st.floats(-1.0, 1e300, allow_nan=False), st.sampled_from(_EDGES),
                 st.floats(1e15, 1e18)))
def test_the_cpp_grid_reads_elapsed_times_as_the_python_reference(e):
    # csrc/elapsed_grid.h: what keying calls for grid_index when the index is built
    from kvsaga._evict import Grid

    grid = Grid(search.GRID_S, search.GRID_RATIO, search._LOG_RATIO,
                list(search._GRID_POINTS))
    assert grid.index(e) == search.grid_index_py(e)
    assert search.grid_index is not search.grid_index_py  # the policies read the C++ one


@needs_cpp
@pytest.mark.parametrize(("e", "error"), [(math.inf, OverflowError), (math.nan, ValueError),
                                          (1.7e308, OverflowError)])
def test_the_cpp_grid_refuses_what_the_reference_refuses(e, error):
    with pytest.raises(error):
        search.grid_index_py(e)
    with pytest.raises(error):
        search.grid_index(e)


@needs_cpp
@pytest.mark.parametrize("args", [(0.0, 1.2, 0.18, [0.0, 1.0]), (1e-3, 1.0, 0.0, [1e-3, 2e-3]),
                                  (1e-3, 1.2, 0.18, [1e-3])])
def test_a_grid_without_points_or_growth_is_refused(args):
    from kvsaga._evict import Grid

    with pytest.raises(ValueError, match="grid"):
        Grid(*args)


@pytest.mark.parametrize("among", [None, ["b", "c"], ["c", "b"]])
def test_timed_classes_breaks_a_tie_by_the_latest_keyed_in_both_twins(among):
    """Sessions of one class paused at the same time with the same tail block: both twins
    pick the latest keyed, whatever order they meet them in (the C++ index reuses a dropped
    session's slot, so its slots' order is not the reference's insertion order)."""
    if SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    rec = (0, 3, 2, 0.5, 0, 0.0, math.inf, math.inf, 1.0)
    got = []
    for index in (PySessionHeap(), make_session_heap(True)):
        index.push("a", (2, 1.0), 7, 1, math.inf, 0.0, rec)
        index.push("b", (2, 1.0), 7, 1, math.inf, 0.0, rec)
        index.drop("a")
        index.push("c", (2, 1.0), 7, 1, math.inf, 0.0, rec)  # a's slot, in C++
        first = index.timed_classes(among)
        index.push("b", (2, 1.0), 7, 1, math.inf, 0.0, rec)  # b re-keyed: now the latest
        got.append((first, index.timed_classes(among)))
    assert got[0] == got[1] == ({0: "c"}, {0: "b"})
