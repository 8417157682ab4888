"""A full re-key that raises part way (a policy's keying, a push the index refuses) leaves
no session with a key the current statistics do not give: the next search re-keys every
session again (search.py `_index_victims`), so its order is the full scan's."""

from __future__ import annotations

import pytest

from kvsaga.policy import POLICIES
from tests.policy.helpers import build, make, run_step, tokens

INDEXED = sorted(n for n, c in POLICIES.items() if getattr(c, "indexed", False))


class Boom(RuntimeError):
    pass


def fail_keying(policy, after: int) -> dict[str, int]:
    """Make the policy's Python keying raise at its `after`-th call from now, once."""
    name = "_timed_base" if hasattr(policy, "_timed_base") else "_session_base"
    keying = getattr(policy, name)
    calls = {"n": 0}

    def keyed(sid, g, t):
        calls["n"] += 1
        if calls["n"] == after:
            raise Boom(sid)
        return keying(sid, g, t)

    setattr(policy, name, keyed)
    return calls


@pytest.mark.parametrize("after", [1, 2])
@pytest.mark.parametrize("name", INDEXED)
def test_a_full_re_key_that_raises_is_redone_whole(name, after):
    """After the error, the order is the full scan's and the index holds every cached
    block once. (On this small cache the order also held before the rollback, the stale
    keys ranking alike: the next test is the one that needs it.)"""
    policy = build(name, relearn_share=100.0)  # no relearning but `rekey_all`
    m = make(policy, num_blocks=24)
    for i, sid in enumerate("abcde"):
        run_step(m, sid, tokens(100 * i, 12), now=0.01 * i, tool="search")
    policy.choose_victims(1, 0.5)
    # Learning ("a" resumes after its pause on the tool the others wait on, and pauses
    # again on another), then a full re-key whose `after`-th Python keying raises.
    run_step(m, "a", tokens(0, 16), now=0.6, tool="edit")
    policy.rekey_all()
    calls = fail_keying(policy, after)
    with pytest.raises(Boom):
        policy.choose_victims(1, 0.6)
    assert calls["n"] == after
    policy.check_integrity()
    assert policy.eviction_order(0.6) == policy.scan_order(0.6)
    assert policy.choose_victims(2, 0.7) == policy.scan_order(0.7)[:2]


@pytest.mark.parametrize("name", INDEXED)
def test_a_failed_full_re_key_leaves_the_next_search_a_full_one(name):
    """The failed search changed no statistics it answers from: the next search takes the
    full re-key again (Python keys at least one session per class), not the usual one."""
    policy = build(name, relearn_share=100.0)
    m = make(policy, num_blocks=24)
    for i, sid in enumerate("abcde"):
        run_step(m, sid, tokens(100 * i, 12), now=0.01 * i, tool="search")
    policy.choose_victims(1, 0.5)
    policy.rekey_all()
    fail_keying(policy, 1)
    with pytest.raises(Boom):
        policy.choose_victims(1, 0.5)
    calls = fail_keying(policy, 10**9)  # counts only
    policy.choose_victims(1, 0.5)
    assert calls["n"] >= 1
    assert policy.eviction_order(0.5) == policy.scan_order(0.5)


@pytest.mark.parametrize("name", INDEXED)
def test_victims_that_raise_after_the_index_took_the_pushes(name):
    """The usual search's one index call (`refresh_victims`) can raise after the index
    applied the pushes: from its victims, here a group that is not a list. Python's classes
    and the index's key table then still agree (the twin's table is read; the C++ index's
    cannot be), and the next searches answer as the full scan."""
    policy = build(name, relearn_share=100.0)
    m = make(policy, num_blocks=24)
    for i, sid in enumerate("abcde"):
        run_step(m, sid, tokens(100 * i, 12), now=0.01 * i, tool="search")
    policy.choose_victims(1, 0.5)
    run_step(m, "f", tokens(600, 8), now=0.55, tool="edit")  # a session of a new class
    assert policy._dirty  # the failing search pushes keys (the usual search's path)
    groups = policy.groups
    lists = dict(groups)
    groups.update((sid, tuple(g)) for sid, g in lists.items())
    with pytest.raises(TypeError, match="list"):
        policy.choose_victims(1, 0.6)
    groups.update(lists)
    assert not policy._dirty.isdisjoint(groups)  # still marked: the pushes come again
    index = policy._index
    if type(index).__name__ == "PySessionHeap":
        ids = set(policy._classes.values())
        assert {cls for cls, _ in index._table} <= ids
        assert set(index._formulas) <= ids
    policy.check_integrity()
    assert policy.choose_victims(2, 0.7) == policy.scan_order(0.7)[:2]
    assert policy.eviction_order(0.8) == policy.scan_order(0.8)
