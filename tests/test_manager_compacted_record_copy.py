"""`begin_step` copies a compacted session's disowned record (for a take-back to restore)
only when its hits touch the record (review s56 diffbegin MED-1).

The record stays until the session ends while later steps leave the old blocks alone, the
usual case after a compaction, so copying it on every step made each step of a compacted
session cost O(record) in Python (C++ core: 101-106 us against 16-17 us a step with a
2000-block record). `_reown` changes nothing when the hits miss the record, so there is
nothing a take-back would need to restore. Both cores."""

from __future__ import annotations

import pytest

from tests.test_manager_compacted_disown import PRICED, _check, _manager, _toks
from tests.test_manager_compacted_reown import _reverted, _step


def _copies(m, monkeypatch):
    calls = []
    real = m._disowned_before

    def spy(rec):
        calls.append(len(rec))
        return real(rec)

    monkeypatch.setattr(m, "_disowned_before", spy)
    return calls


@pytest.mark.parametrize("policy", PRICED)
def test_a_compacted_session_resuming_past_its_record_copies_nothing(core, policy,
                                                                      monkeypatch):
    """a compacted from 40 to 4 tokens (its record holds the 9 dead blocks), then grows its
    new context step by step: no step's hits touch the record, so no step copies it."""
    m = _manager(core, policy)
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    _step(m, "a", _toks(0, 4), 1.0, 1.0)
    assert len(m._disowned["a"]) == 9
    calls = _copies(m, monkeypatch)
    ids = _toks(0, 4)
    for k in range(4):
        ids = ids + _toks(1000 + 8 * k, 8)
        _step(m, "a", ids, 2.0 + k, 1.0)
    assert calls == []
    assert len(m._disowned["a"]) == 9  # kept for a later prompt that repeats the old one
    _check(m)


@pytest.mark.parametrize("policy", PRICED)
def test_a_resume_that_hits_the_record_still_copies_it(core, policy, monkeypatch):
    """The revert to the old context hits the record: begin_step copies it (what a
    take-back restores), once."""
    m = _manager(core, policy)
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    _step(m, "a", _toks(0, 4), 1.0, 1.0)
    calls = _copies(m, monkeypatch)
    _step(m, "a", _toks(0, 44), 2.0, 1.0)
    assert calls == [9]
    _check(m)


def test_the_revert_fixture_still_holds(core):
    m, old = _reverted(core, PRICED[0])
    assert m.session("a").block_ids[:10] == old
