"""A second interrupt inside `begin_step`'s take-back (`_unbegin`, the first interrupt's
cleanup cut in half) still takes the step back whole: the session PAUSED on what it kept
(or forgotten when new), every hit's reference dropped, no block owned by a session that
ended (s57 lane interrupts, window 1).

Before: cut after the take-back's release (as `_left_owned.pop` returned), the session was
left RUNNING on a table it held no reference on ("block 0: refcount 0 but 1 running tables
hold it"); cut before it (in `_loaded_owned`), RUNNING after a begin_step that raised, its
references held. The first interrupt is the policy's `step_started` raising
KeyboardInterrupt (the hits held and registered); the second lands at every interrupt point
of the take-back's frames (tests/interrupts.py `Cut`, C calls' returns) and at each of its
callees' entries. Both cores; a paused session whose prompt rewrote its tail, a new session
that hit another's blocks, and a resume with a host-tier load."""

from __future__ import annotations

import contextlib

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.manager import KVCacheManager as _M
from tests.interrupts import Cut
from tests.test_host_take_run_cut import X as HX
from tests.test_host_take_run_cut import _mixed, cut_first_entry

X = list(range(1, 15))  # 3 full blocks and a retained tail of 2 tokens (block size 4)
REWRITE = X[:13] + [99, 98, 97]  # keeps the tail's first token, not its second

UNDO = ["_unbegin_hits", "_unbegin", "_owners_back", "_loaded_owned", "_unbegun",
        "_cut_context", "_cut_paused", "_cut_before"]


def _paused(core) -> KVCacheManager:
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 10, policy="lru", clock=lambda: 0.0,
                       core=core.name)
    start = m.begin_step("x", X)
    m.allocate_slots("x", len(X) - start.num_cached_tokens)
    m.finish_step("x")
    return m


# case: (manager, session, its prompt, its old context or None when new, tokens it may hit)
CASES = {
    "rewrite": lambda core: (_paused(core), "x", REWRITE, X, 13),
    "new": lambda core: (_paused(core), "y", X[:9] + [7, 7], None, 8),
    "host": lambda core: (_mixed(core, 1), "x", HX + [1], HX, len(HX)),
}


def _first(m: KVCacheManager, monkeypatch) -> None:
    """The first interrupt: `step_started` raises KeyboardInterrupt (the hits held)."""
    def refuse(session, now):
        raise KeyboardInterrupt

    monkeypatch.setattr(m.policy, "step_started", refuse)


def _after(m: KVCacheManager, sid: str, prompt, old, shared: int) -> None:
    m.check_integrity()
    check = getattr(m.policy, "check_integrity", None)
    if check is not None:
        check()
    s = m.sessions.get(sid)
    if old is None:
        assert s is None
    else:
        assert s.state.name == "PAUSED"  # was: RUNNING (on references it no longer held)
        n = len(s.token_ids)
        assert s.token_ids == old[:n] and (n == len(old) or n <= shared)
    start = m.begin_step(sid, prompt)  # the retry
    assert start.num_cached_tokens <= shared
    m.allocate_slots(sid, len(prompt) - start.num_cached_tokens)
    m.finish_step(sid)
    if m.host is not None:
        m.take_transfers()
    for other in list(m.sessions):
        m.end_session(other)
    m.check_integrity()
    assert all(o is None for o in m.block_owner)


def _run(core, case, monkeypatch, arm) -> bool:
    """One begin_step with the first interrupt and the second `arm(m)` gives (a context
    manager); whether the second fired (its `fired` or `hits`)."""
    m, sid, prompt, old, shared = CASES[case](core)
    with monkeypatch.context() as mp:
        _first(m, mp)
        second = arm(m, mp)
        with second, pytest.raises(KeyboardInterrupt):
            m.begin_step(sid, prompt)
    fired = getattr(second, "fired", None)
    _after(m, sid, prompt, old, shared)
    return bool(fired)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", UNDO)
def test_a_second_interrupt_in_the_take_back_still_takes_it_back(core, monkeypatch, case,
                                                                  name):
    code = getattr(_M, name).__code__
    k = 0
    while _run(core, case, monkeypatch,
               lambda m, mp, k=k: Cut(code, k, c_returns_only=True)):
        k += 1
    if k == 0:
        pytest.skip(f"no point of {name} on this case's path")


class _Entry:
    """`cut_first_entry` as a context manager (its `fired`)."""

    def __init__(self, mp, cls, name: str) -> None:
        self.hit = cut_first_entry(mp, cls, name)

    @property
    def fired(self) -> bool:
        return bool(self.hit)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", UNDO)
def test_a_second_interrupt_at_a_take_back_callee_entry_still_takes_it_back(
        core, monkeypatch, case, name):
    """CPython checks for a signal at each Python function's entry: where a second pending
    signal lands first, in a handler."""
    if not _run(core, case, monkeypatch, lambda m, mp: _Entry(mp, type(m), name)):
        pytest.skip(f"{name} is not called on this case's take-back")


def test_the_first_interrupt_alone_takes_the_step_back(core, monkeypatch):
    for case in sorted(CASES):
        assert not _run(core, case, monkeypatch, lambda m, mp: contextlib.nullcontext())
