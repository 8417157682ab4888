"""`_release_table` (finish_step, preempt, end_session) after a release cut at its entry
(nothing released, KVSAGA_CORE=python): a second interrupt before the release made again
began, or a release that never begins, leaves the session running as it was, its table
holding the references (session 55 pyint; review s54 diffpyfix LOW-3 and LOW-2).

Before: a second interrupt at the handler's first point (the return of its `getattr` of
`_releasing`) propagated with finish_step's and preempt's session PAUSED and its references
held by no one ("refcount 2 but 1 running tables hold it"); a release refused on every call
gave up with the session RUNNING but its pause time, hint and `cache_version` as changed.
"""

from __future__ import annotations

import pytest

from kvsaga.pool import BlockPool
from kvsaga.session import SessionState
from tests.test_manager_release_entry_interrupt import (
    CALLS,
    _AlwaysRefused,
    _books,
    _check,
    _EntryCut,
    _manager,
)


def _session(m):
    a = m.sessions["a"]
    return a.state, a.paused_at, a.hint, list(a.block_ids), a.num_computed, m.cache_version


class _SecondCut:
    """`BlockPool._releasing` as a property (the class's own, so the pool is still a
    `BlockPool`) whose first read once armed raises KeyboardInterrupt: an interrupt at the
    first point of the handler that reads it through a call (`getattr`)."""

    def __init__(self) -> None:
        self.armed, self.fired = False, False

    def get(self, pool):
        if self.armed and not self.fired:
            self.fired = True
            raise KeyboardInterrupt("second")
        return pool.__dict__.get("_releasing_v")

    def set(self, pool, value):
        pool.__dict__["_releasing_v"] = value


@pytest.mark.parametrize("policy", ["lru", "saga"])
@pytest.mark.parametrize("op", sorted(CALLS))
def test_a_second_interrupt_before_the_release_is_made_again(op, policy, monkeypatch):
    second = _SecondCut()
    monkeypatch.setattr(BlockPool, "_releasing", property(second.get, second.set),
                        raising=False)
    m, twin = _manager(policy), _manager(policy)
    before = _session(m)
    cut = _EntryCut(m.pool)
    m.pool.release_many = cut
    second.armed = True
    with pytest.raises(KeyboardInterrupt):
        CALLS[op](m)
    assert second.fired and cut.calls == 1  # no call made again
    del m.pool.release_many
    _check(m)  # was: "block 0: refcount 2 but 1 running tables hold it" (PAUSED)
    if op == "end_session":  # told the end (one more change): a retry only releases
        assert m.sessions["a"].ending
        before = before[:5] + ((before[5][0] + 1, before[5][1]),)
    assert _session(m) == before  # running as it was
    assert m.sessions["a"].state is SessionState.RUNNING
    CALLS[op](m)  # a retry goes through, as the uncut call
    CALLS[op](twin)
    assert _books(m) == _books(twin)
    _check(m)


@pytest.mark.parametrize("op", ["finish_step", "preempt"])
def test_a_release_never_begun_leaves_the_pause_untold_to_the_books(op):
    """Review s54 diffpyfix LOW-2: the give-up put back RUNNING only. The policy was told
    `step_finished` (finish_step): no hook takes that back; a retry tells it again."""
    m = _manager("lru")
    before = _session(m)
    m.pool.release_many = _AlwaysRefused()
    with pytest.raises(RuntimeError, match=r"release refused \(1\)"):
        CALLS[op](m)
    del m.pool.release_many
    assert _session(m) == before  # was: paused_at 0.0, a hint, cache_version + 1
    _check(m)
