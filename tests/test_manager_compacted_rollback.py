"""A compacting `begin_step` taken back (`_unbegin`: its `step_started` raised) leaves the
session's ownership as before the call (review s56 compact2, item 2).

The take-back promises the manager's books as before the call, so that the caller may retry;
the session's context is cut to the common prefix (`_cut_paused`, documented: keeping a copy
of every context would cost each resume a pass), and with it its retained partial tail. Every
other block of the old context stays the session's own, and the policy files it where it
did: a rollback does not disown (that would call `blocks_disowned` on the error path of a
hook that just raised). The retry's finish, or its preempt, disowns them
(tests/test_manager_compacted_disown.py, tests/test_manager_compacted_preempt.py). Both
cores."""

from __future__ import annotations

import pytest

from kvsaga.pool import FREE
from tests.test_manager_compacted_disown import PRICED, _check, _manager, _toks, refused_begin
from tests.test_manager_compacted_reown import _step


def _paused(core, policy):
    """a (41 tokens: 10 full blocks and a partial tail) paused on a 1 s tool, p (16
    tokens) on a 100 s tool."""
    m = _manager(core, policy)
    _step(m, "a", _toks(0, 41), 0.0, 1.0)
    _step(m, "p", _toks(1000, 16), 0.5, 100.0)
    return m


def _filed(m):
    """Where a grouped policy (or adaptive's first expert) files each block, or None."""
    p = m.policy
    if hasattr(p, "experts"):
        p = p.experts[0].policy
    where = getattr(p, "_where", None)
    return None if where is None else list(where)


@pytest.mark.parametrize("policy", PRICED + ["lru"])
def test_a_refused_compacting_begin_keeps_the_pre_begin_ownership(core, policy):
    """Ownership and the policy's filing are those before the call, but for the partial
    tail the cut drops (freed); the old full blocks 1-9 are left-owned (for the next
    finish, preempt or end), none is disowned or recorded."""
    m = _paused(core, policy)
    owner, filed = list(m.block_owner), _filed(m)
    table = list(m.session("a").block_ids)
    tail = table[-1]
    refused_begin(m, "a", _toks(0, 4), 1.0)
    assert m.session("a").block_ids == table[:1] and len(m.session("a").token_ids) == 4
    assert m.pool.state[tail] == FREE
    changed = [b for b in range(16) if m.block_owner[b] != owner[b]]
    assert changed == [tail]
    if filed is not None:
        assert [b for b in range(16) if _filed(m)[b] != filed[b]] == [tail]
    assert m._left_owned["a"] == set(table[1:10])
    assert "a" not in m._disowned
    _check(m)


@pytest.mark.parametrize("policy", PRICED + ["lru"])
def test_under_pressure_a_refused_begin_changes_no_victim(core, policy):
    """A new 44-token session takes 11 blocks: p and a keep what they keep on a manager
    that never saw the refused begin (the take-back priced nothing differently)."""
    kept = []
    for refuse in (False, True):
        m = _paused(core, policy)
        if refuse:
            refused_begin(m, "a", _toks(0, 4), 1.0)
        m.begin_step("n", _toks(5000, 44), now=1.1)
        m.allocate_slots("n", 44, now=1.1)
        kept.append((m.lookup("p", _toks(1000, 17)).gpu_hit_blocks,
                     m.lookup("a", _toks(0, 42)).gpu_hit_blocks))
        _check(m)
    assert kept[0] == kept[1]


def test_the_old_context_stays_whole_for_a_retry_that_goes_back_to_it(core):
    """After the refused compaction the client retries with the old context: it hits all
    10 old blocks, and the session owns its whole table at the finish."""
    m = _paused(core, "graph")
    old = list(m.session("a").block_ids[:10])
    refused_begin(m, "a", _toks(0, 4), 1.0)
    start = _step(m, "a", _toks(0, 44), 1.2, 1.0)
    assert start.num_cached_tokens == 40
    assert m.session("a").block_ids[:10] == old
    assert sorted(b for b, o in enumerate(m.block_owner) if o == "a") == sorted(
        m.session("a").block_ids)
    _check(m)
