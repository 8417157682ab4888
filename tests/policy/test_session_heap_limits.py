"""What the C++ victim index's layout limits (csrc/class_table.h packs a timed record's
(cls, k + 1) into one 64-bit key whose all-ones value marks an empty cell): both indexes
refuse a class or grid point that does not fit, alike, with nothing changed; and the csrc
prefetch hint is behind its one compiler guard (csrc/prefetch.h)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from kvsaga.policy.session_heap import PySessionHeap, make_session_heap
from kvsaga.policy.timed_keys import MAX_CLASS, MAX_POINT
from tests.policy.test_session_heap import SessionHeap

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True

INDEXES = [False, True]


def _index(cpp: bool):
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    return make_session_heap(True) if cpp else PySessionHeap()


def _timed(cls: int, k: int) -> tuple:
    return (cls, k, 2, 0.5, 0, 0.0, math.inf, math.inf, 1.0)


@pytest.mark.parametrize("cpp", INDEXES)
@pytest.mark.parametrize(("cls", "k", "message"), [
    (MAX_CLASS, MAX_POINT + 1, "timed: k must be -1 to 65533, got 65534"),
    (MAX_CLASS + 1, 0, f"timed: cls must be 0 to 2\\*\\*48 - 1, got {MAX_CLASS + 1}"),
    (2**70, 0, f"timed: cls must be 0 to 2\\*\\*48 - 1, got {2**70}"),
    (-1, 0, "timed: cls must be 0 to 2\\*\\*48 - 1, got -1"),
    (0, -2, "timed: k must be -1 to 65533, got -2"),
    (0, 2**64, f"timed: k must be -1 to 65533, got {2**64}"),
])
def test_a_class_or_point_past_the_table_key_is_refused(cpp, cls, k, message):
    index = _index(cpp)
    index.push("a", (1, 0.0), 1, 1, 0.5, 0.0, _timed(MAX_CLASS, MAX_POINT))
    with pytest.raises(ValueError, match=f"^{message}$"):
        index.push("b", (1, 1.0), 2, 1, 0.5, 0.0, _timed(cls, k))
    with pytest.raises(ValueError, match=f"^refresh_runs: push 0: {message}$"):
        index.refresh_runs(0.1, ["a"], [("b", (1, 1.0), 2, 1, 0.5, _timed(cls, k))], 4, 0)
    assert len(index) == 1
    # "a" (the largest class and point that fit) is re-keyed from its class's table entry
    # at its next grid point only when one is there: none is, so Python gets it.
    assert index.due(1.0) == ["a"]
    assert index.runs(4) == [("a", 1)]


@pytest.mark.parametrize("cpp", INDEXES)
def test_the_largest_class_and_point_key_as_any_other(cpp):
    index, ref = _index(cpp), PySessionHeap()
    for i in (index, ref):
        i.push("a", (1, 0.0), 1, 1, 0.5, 0.0, _timed(MAX_CLASS, MAX_POINT))
        i.push("b", (1, 1.0), 2, 1, 0.5, 0.0, _timed(MAX_CLASS, 0))
    assert index.timed_classes() == ref.timed_classes() == {MAX_CLASS: "a"}
    assert index.due(0.6) == ref.due(0.6)
    assert index.runs(4) == ref.runs(4)


def test_the_prefetch_builtin_is_used_behind_its_guard_only():
    csrc = Path(__file__).resolve().parents[2] / "csrc"
    found = [p.name for p in sorted(csrc.iterdir()) if p.suffix in (".h", ".cpp")
             and "__builtin_prefetch" in p.read_text()]
    assert found == ["prefetch.h"]
    guard = (csrc / "prefetch.h").read_text()
    assert "#if defined(__GNUC__) || defined(__clang__)" in guard
