"""The C++ victim index and its Python twin leave a policy in the same state after re-keys
by class (search.py `_rekey_by_class`): classes are walked in class-id order, not in the
order each index's map happens to hold them, so the new class ids come out alike."""

from __future__ import annotations

import pytest

import tests.policy.test_timed_rekey as walk
from kvsaga._core import cpp_available
from kvsaga.policy import make_policy
from tests.policy.test_timed_rekey import INDEXED, _bench_shape

# Builds its heaps and policies itself (tests/policy/conftest.py): runs once, not once a core.
READS_NO_CORE = True


def _run(name: str, core: str, monkeypatch) -> tuple[list, dict, dict]:
    """bench/eviction_scaling.py's shape, small, on one core: the victims of each search
    and the policy's classes (signature -> id, and back) at the end."""
    built = []
    monkeypatch.setattr(walk, "make_policy", lambda n: built.append(make_policy(n)) or built[-1])
    victims, _ = _bench_shape(name, True, core, paused=200)
    parts = walk._indexed_parts(built[0])
    return victims, [dict(p._classes) for p in parts], [dict(p._sig_of) for p in parts]


@pytest.mark.skipif(not cpp_available(), reason="the C++ core is not built")
@pytest.mark.parametrize("name", INDEXED)
def test_both_indexes_leave_the_same_classes_and_name_the_same_victims(name, monkeypatch):
    py = _run(name, "python", monkeypatch)
    cpp = _run(name, "cpp", monkeypatch)
    assert any(py[1])  # classes were made
    assert cpp == py
