"""A search's runs off the session groups (kvsaga/policy/victim_runs.py, and csrc/
victim_runs.h's twin, both carried by the indexes): `tail_victims`, `cut_tails` and
`refresh_victims` answer alike in both, leave the groups and the marked sets alike, refuse
bad input alike (same error, same message) with nothing changed, and are what the Python
loops they replace did, even when Python code run mid-call changes what they read."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from kvsaga.policy.session_heap import PySessionHeap, make_session_heap
from kvsaga.policy.victim_runs import cut_tails, tail_victims
from tests.policy.test_session_heap import SessionHeap, _apply, needs_cpp, ops
from tests.policy.test_session_heap_refresh import refresh

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

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
    applied: 0 as named, 1 one block dropped, 2 one block changed, 3 reversed, 4 one
    trailing block that no run names (a group's last)."""
    out = []
    for sid, k in runs:
        out += groups.get(sid, [999])[:max(k, 0)]
    if mess == 1 and out:
        out.pop()
    elif mess == 2 and out:
        out[len(out) // 2] += 1000
    elif mess == 3:
        out.reverse()
    elif mess == 4 and groups:
        out.append(list(groups.values())[-1][-1])
    return out


@needs_cpp
@settings(max_examples=400, deadline=None)
@given(groups_st, runs_st, st.integers(0, 4))
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
    if mess == 4 and groups:  # a block no run names is never left behind as cut
        assert got_py != ("ok", True)


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
    ({"a": None}, "groups: a session's group must be a list", [("a", 1)]),
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


class _NotAnInt:
    def __index__(self):
        return "2"


# (twin, groups, runs, block_ids or None for `tail_victims`, outcome, groups after).
EDGES = {
    "trailing extra id": ({"a": [1, 2, 3], "b": [4, 5]}, [("a", 2)], [1, 2, 4],
                          ("ok", False), {"a": [1, 2, 3], "b": [4, 5]}),
    "None group, victims": ({"a": None}, [("a", 1)], None,
                            ("TypeError", "groups: a session's group must be a list"), None),
    "None group, cut": ({"a": None}, [("a", 1)], [1],
                        ("TypeError", "groups: a session's group must be a list"), None),
    "count beyond int64": ({"a": [1, 2]}, [("a", 2**70)], None, ("ok", [1, 2]), None),
    "count below int64": ({"a": [1, 2]}, [("a", -2**70)], None,
                          ("ValueError", "runs: a count must be >= 0"), None),
    "cut count beyond int64": ({"a": [1, 2]}, [("a", 2**70)], [1, 2], ("ok", False), None),
    "__index__ gives a str": ({"a": [1]}, [("a", _NotAnInt())], None,
                              ("TypeError", "__index__ returned non-int (type str)"), None),
}


@pytest.mark.parametrize("name", EDGES)
@pytest.mark.parametrize("cpp", [False, True])
def test_edges_alike(name, cpp):
    """Each twin's answer to input the hypothesis tests do not draw, and what it leaves."""
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    index = make_session_heap(cpp)
    groups, runs, block_ids, want, after = copy.deepcopy(EDGES[name])
    before = copy.deepcopy(groups)
    if block_ids is None:
        assert _outcome(index.tail_victims, groups, runs) == want
    else:
        assert _outcome(index.cut_tails, groups, runs, block_ids, (set(),)) == want
    assert groups == (before if after is None else after)


# -- Python code run mid-call -----------------------------------------------------------------
# A count's __index__, a session id's __hash__, a block's __eq__ run Python code in the middle
# of a call, which may change runs, groups, their lists, block_ids. The C++ twin must not read
# freed memory or a stale length (a crash), and must answer and leave all as the Python twin
# does. Run in a subprocess, so a crash fails the test instead of ending pytest.


class _Key:
    """A session id whose `__hash__` runs `state["hook"]` on the `state["fire"]`-th hash of
    any key of the state (counted from 1): Python code at each point a twin hashes an id."""

    def __init__(self, name, state):
        self.name, self.state = name, state

    def __hash__(self):
        self.state["hashes"] += 1
        if self.state["hashes"] == self.state["fire"]:
            self.state["hook"]()
        return hash(self.name)

    def __eq__(self, other):
        return isinstance(other, _Key) and other.name == self.name

    def __repr__(self):
        return self.name


class _Count:
    """A count whose `__index__` runs `hook` first."""

    def __init__(self, k, hook):
        self.k, self.hook = k, hook

    def __index__(self):
        self.hook()
        return self.k

    def __repr__(self):
        return f"C{self.k}"


class _Block:
    """A block id (as an int) whose `__eq__` runs `hook` first."""

    def __init__(self, v, hook):
        self.v, self.hook = v, hook

    def __eq__(self, other):
        self.hook()
        return self.v == other

    __hash__ = None

    def __repr__(self):
        return f"B{self.v}"


def _mid_call_scenarios():
    """(name, builder): each builder gives fresh (function name, args, what to report)."""
    def by_count(hook_of, cut):
        def build():
            groups = {"a": [10, 11, 12, 13], "b": [5, 6]}
            runs = [("a", 4 if not cut else 2)]
            ids = [10, 11, 5, 6]
            runs.append(("b", _Count(2, lambda: hook_of(groups, runs, ids))))
            args = (groups, runs, ids, (set(),)) if cut else (groups, runs)
            return ("cut_tails" if cut else "tail_victims"), args, (groups, runs, ids)
        return build

    count_hooks = {
        "clears a": lambda g, r, i: g["a"].clear(),
        "deletes a": lambda g, r, i: g.pop("a"),
        "clears runs": lambda g, r, i: r.clear(),
        "clears block_ids": lambda g, r, i: i.clear(),
    }
    out = []
    for hook, fn in count_hooks.items():
        for cut in (False, True):
            out.append((f"__index__ {hook}, {'cut' if cut else 'victims'}", by_count(fn, cut)))

    hash_hooks = {
        "clears the lists": lambda g, i: [x.clear() for x in g.values()],
        "clears groups": lambda g, i: g.clear(),
        "clears block_ids": lambda g, i: i.clear(),
        "replaces a": lambda g, i: g.update({next(iter(g)): [7]}) if g else None,
    }

    def by_hash(hook, fire, cut):
        def build():
            state = {"hashes": 0, "fire": 0}
            a, b = _Key("a", state), _Key("b", state)
            groups = {a: [1, 2, 3], b: [4, 5]}
            runs, ids = [(a, 2), (b, 2)], [1, 2, 4, 5]
            state.update(hashes=0, fire=fire, hook=lambda: hook(groups, ids))
            args = (groups, runs, ids, (set(), set())) if cut else (groups, runs)
            return ("cut_tails" if cut else "tail_victims"), args, (groups, runs, ids, *args[3:])
        return build

    for hook, fn in hash_hooks.items():
        for fire in range(1, 13):  # 11 hashes in the longest call, then none
            for cut in (False, True):
                out.append((f"__hash__ #{fire} {hook}, {'cut' if cut else 'victims'}",
                            by_hash(fn, fire, cut)))

    eq_hooks = {
        "clears a": lambda g, i: g["a"].clear(),
        "clears block_ids": lambda g, i: i.clear(),
        "deletes b": lambda g, i: g.pop("b", None),
        "drops a's tail": lambda g, i: g["a"].pop(),
    }

    def by_eq(hook, at):
        def build():
            groups = {"a": [1, 2, 3], "b": [4]}
            ids = [1, 2, 3, 4]
            groups["a"][at] = _Block(at + 1, lambda: hook(groups, ids))
            runs = [("a", 3), ("b", 1)]
            return "cut_tails", (groups, runs, ids, (set(),)), (groups, runs, ids)
        return build

    for hook, fn in eq_hooks.items():
        for at in range(3):
            out.append((f"__eq__ of a[{at}] {hook}, cut", by_eq(fn, at)))
    return out


def _mid_call_main():
    """The subprocess: each scenario on both twins, one line each: name, Python's answer
    and state after, the C++ twin's."""
    import kvsaga.policy.victim_runs as py_twin

    for name, build in _mid_call_scenarios():
        got = []
        for twin in (py_twin, SessionHeap):
            fn, args, report = build()
            answer = _outcome(getattr(twin, fn), *args)
            got.append(repr((answer, [sorted(map(repr, x)) if isinstance(x, tuple) else x
                                      for x in report])))
        print("\t".join([name, *got]), flush=True)


@needs_cpp
def test_python_code_mid_call_answers_alike():
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c",
         "from tests.policy.test_victim_runs import _mid_call_main; _mid_call_main()"],
        cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [line.split("\t") for line in proc.stdout.splitlines()]
    assert [line[0] for line in lines] == [name for name, _ in _mid_call_scenarios()]
    for name, py, cpp in lines:
        assert py == cpp, name
