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


def _manager(policy: str, core: str = "python") -> KVCacheManager:
    """'a' runs a step over 3 full blocks and a partial one, its first two shared with 'b'."""
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 16, clock=lambda: 0.0,
                       core=core, policy=policy)
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


class _AlwaysRefused:
    """Stands in for the pool's release_many: every call raises before the pool begins (a
    refusing fault-injection wrapper)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, *a, **k):
        self.calls += 1
        raise RuntimeError(f"release refused ({self.calls})")


@pytest.mark.parametrize("policy", ["lru", "saga"])
@pytest.mark.parametrize("op", sorted(CALLS))
def test_a_release_refused_on_every_call_raises_with_the_table_held(op, policy):
    """Review s54 diffpyloops MED-1: `_release_table` retried such a call forever (the wrapper
    was called millions of times); now a few retries, then the first error, nothing
    released: the session still running, its table holding the references."""
    m, fresh = _manager(policy), _manager(policy)
    refused = _AlwaysRefused()
    m.pool.release_many = refused
    with pytest.raises(RuntimeError, match=r"release refused \(1\)"):
        CALLS[op](m)
    assert 1 < refused.calls <= 10
    del m.pool.release_many
    _check(m)
    p, q = m.pool, fresh.pool
    assert (list(p.refcount), list(p.state), p.num_free, p.num_cached) == (
        list(q.refcount), list(q.state), q.num_free, q.num_cached)
    a = m.sessions["a"]
    assert a.block_ids == fresh.sessions["a"].block_ids
    assert a.num_computed == fresh.sessions["a"].num_computed
    m.end_session("a")  # a retry (end_session's own included) releases it
    _check(m)
    assert "a" not in m.sessions


def test_a_cut_at_the_entry_wins_over_the_retry_hook_error():
    """Review s54 diffpyloops LOW-4 (manager part): after an entry cut, the retry's release
    whose `blocks_cached` hook raises no longer drops the interrupt: it reaches the caller,
    the hook's error its cause, the release done (the cached blocks dropped unseen)."""
    m = _manager("lru")
    cut = _EntryCut(m.pool)
    m.pool.release_many = cut
    obs = m.pool.observer

    def raising(ids):
        raise RuntimeError("blocks_cached failed")

    obs.blocks_cached = raising
    m.pool.observer = obs  # (the pool reads its hooks when its observer is set)
    with pytest.raises(KeyboardInterrupt) as info:
        m.finish_step("a")
    assert isinstance(info.value.__cause__, RuntimeError)
    assert cut.calls == 2
    del m.pool.release_many
    del obs.blocks_cached
    m.pool.observer = obs
    _check(m)
