"""An interrupt at the pure-Python pool's release entry (KVSAGA_CORE=python) does not leak the
session's references.

CPython checks for a pending signal at a Python function's entry (its RESUME: measured in
/work/lanes/findings/s54/pyloops.md), so `BlockPool.release_many` can raise before any of its
code ran, nothing released. Before (s53 interrupt "remaining", s54 pyloops): the manager's
`_release_table` took every raise of the release for a release done (its `blocks_cached` hook
raising) and marked the session PAUSED: finish_step, preempt and end_session then left the
table's references held by no one (check_integrity: "refcount 2 but 1 running tables hold
it"). Now the pool's first store (`_releasing`) says whether the call began; the manager,
which may have told the policy the pause already, releases then, and the interrupt
propagates after. The C++ pool's call has no such point (its cut lands inside a Python hook
or at its return: both a release done).
"""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.errors import UnknownSession


def _manager(policy: str) -> KVCacheManager:
    """'a' runs a step over 3 full blocks and a partial one, its first two shared with 'b'."""
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 16, clock=lambda: 0.0,
                       core="python", policy=policy)
    m.begin_step("a", [1, 2, 3, 4, 5, 6, 7])
    m.allocate_slots("a", 7)
    st = m.begin_step("b", [1, 2, 3, 4, 70, 71])
    m.allocate_slots("b", 6 - st.num_cached_tokens)
    return m


class _EntryCut:
    """Stands in for the pool's release_many: its first call raises KeyboardInterrupt before
    the real one runs (an interrupt at its entry); later calls are the real one's."""

    def __init__(self, pool) -> None:
        self.real, self.calls = pool.release_many, 0

    def __call__(self, *a, **k):
        self.calls += 1
        if self.calls == 1:
            raise KeyboardInterrupt
        return self.real(*a, **k)


def _books(m: KVCacheManager):
    p = m.pool
    return (sorted(m.sessions), list(p.refcount), list(p.state), p.num_free, p.num_cached,
            sorted(m.index.items()), list(m.block_owner),
            {sid: (s.state, list(s.block_ids), s.num_computed, s.tail)
             for sid, s in m.sessions.items()})


def _check(m: KVCacheManager) -> None:
    m.check_integrity()
    check = getattr(m.policy, "check_integrity", None)
    if check is not None:
        check()


CALLS = {
    "finish_step": lambda m: m.finish_step("a"),
    "preempt": lambda m: m.preempt("a"),
    "end_session": lambda m: m.end_session("a"),
}


@pytest.mark.parametrize("policy", ["lru", "saga"])
@pytest.mark.parametrize("op", sorted(CALLS))
def test_a_release_cut_at_its_entry_still_releases(op, policy):
    m, twin = _manager(policy), _manager(policy)
    cut = _EntryCut(m.pool)
    m.pool.release_many = cut
    with pytest.raises(KeyboardInterrupt):
        CALLS[op](m)
    assert cut.calls == 2  # cut at its entry, then released
    del m.pool.release_many
    _check(m)  # was: the table's references held by no one
    CALLS[op](twin)
    assert _books(m) == _books(twin)
    if op == "end_session":
        with pytest.raises(UnknownSession):
            m.end_session("a")
    else:
        m.end_session("a")
    _check(m)
