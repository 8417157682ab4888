"""An interrupt in `begin_step` between the rewrite of a paused session's context (`_open`)
and the hits' take-back (`_begin`'s try) cuts the context back to the tokens the old context
and the prompt share: no later step reuses K/V computed for the old tokens (s57 lane
interrupts, window 2).

Before: cut as the C++ core's `reopen_context` returned, at the Python hasher's entry or in
its loop, or at `_begin`'s `len`/`min` before its try, the session stayed PAUSED with the
prompt as its context but its old table, computed tokens and retained tail; the retry of the
same prompt reused the tail's K/V of a token the prompt had replaced ("cached 14 > shared
13"). Each cut lands at every interrupt point of those frames (tests/interrupts.py `Cut`, C
calls' returns), at the entry of each callee that runs there, and, for the cut-back itself, a
second interrupt at every point of it. Both cores."""

from __future__ import annotations

import contextlib

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.manager import KVCacheManager as _M
from kvsaga.prefix import BlockHasher
from tests.interrupts import Cut
from tests.test_host_take_run_cut import cut_first_entry

X = list(range(1, 15))  # 3 full blocks and a retained tail of 2 tokens (block size 4)
SHARED = 13  # the prompt keeps X's first 13 tokens: the tail's first one, not its second
PROMPT = X[:SHARED] + [99, 98, 97]

FIRST = {"_begin": _M._begin.__code__, "_open": _M._open.__code__,
         "extend": BlockHasher.extend.__code__}
SECOND = ["_cut_context", "_cut_paused"]
ENTRIES = ["_before_begin", "_time", "_open", "_full_block_hits"]
SECOND_ENTRIES = ["_unopen", "_cut_context", "_cut_paused", "_note_left",
                  "_tail_alive", "_drop"]


def _paused(core) -> KVCacheManager:
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 8, policy="lru", clock=lambda: 0.0,
                       core=core.name)
    start = m.begin_step("x", X)
    m.allocate_slots("x", len(X) - start.num_cached_tokens)
    m.finish_step("x")
    return m


def _after_cut(m: KVCacheManager) -> None:
    """The books whole, the session paused on its old context or what the prompt kept of
    it, and the retry of the prompt hits none of the replaced tokens."""
    m.check_integrity()
    s = m.sessions["x"]
    assert s.state.name == "PAUSED"
    n = len(s.token_ids)  # its old context whole (cut before the rewrite), or what it kept
    assert s.token_ids == X[:n] and (n == len(X) or n <= SHARED), s.token_ids
    assert s.num_computed <= n and len(s.block_hashes) == n // 4
    start = m.begin_step("x", PROMPT)
    assert start.num_cached_tokens <= SHARED  # was: 14, the tail's replaced token reused
    m.allocate_slots("x", len(PROMPT) - start.num_cached_tokens)
    m.finish_step("x")
    m.end_session("x")
    m.check_integrity()
    assert all(o is None for o in m.block_owner)


def _points(core, code) -> int:
    m = _paused(core)
    with Cut(code, -1, c_returns_only=True) as probe:
        m.begin_step("x", PROMPT)
    return probe.hits


@pytest.mark.parametrize("where", sorted(FIRST))
def test_a_cut_between_the_rewrite_and_the_take_back_cuts_the_context_back(core, where):
    n = _points(core, FIRST[where])
    if n == 0:
        pytest.skip("no point of it on this core's path")  # (the C++ hasher: no frame)
    for k in range(n):
        m = _paused(core)
        with Cut(FIRST[where], k, c_returns_only=True) as cut, \
                contextlib.suppress(KeyboardInterrupt):
            m.begin_step("x", PROMPT)
        assert cut.fired
        _after_cut(m)


@pytest.mark.parametrize("name", ENTRIES)
def test_a_cut_at_a_callee_entry_cuts_the_context_back(core, monkeypatch, name):
    m = _paused(core)
    fired = cut_first_entry(monkeypatch, type(m), name)
    with contextlib.suppress(KeyboardInterrupt):
        m.begin_step("x", PROMPT)
    monkeypatch.undo()
    if not fired:
        pytest.skip(f"{name} is not called with a rewritten context")
    _after_cut(m)


class _CutAfter:
    """Wraps the manager's C++ `_hot` (`reopen_context`) or Python `hasher` (`extend`):
    the first call of `name` runs, then raises KeyboardInterrupt as a signal would as it
    returns (the C++ call) or at its entry (`entry`: the Python hasher's), once."""

    def __init__(self, real, name: str, entry: bool) -> None:
        self.real, self.name, self.entry, self.fired = real, name, entry, False

    def __getattr__(self, attr):
        fn = getattr(self.real, attr)
        if attr != self.name or self.fired:
            return fn

        def cut(*args, **kwargs):
            self.fired = True
            if not self.entry:
                fn(*args, **kwargs)
            raise KeyboardInterrupt

        return cut


def _first_cut(m: KVCacheManager) -> _CutAfter:
    """The first interrupt, once `_open` rewrote the context: the C++ core's
    `reopen_context` cut as it returns (how far it kept unknown: the hashes tell), or the
    Python hasher cut at its entry."""
    if m._hot is not None:
        m._hot = _CutAfter(m._hot, "reopen_context", False)
        return m._hot
    m.hasher = _CutAfter(m.hasher, "extend", True)
    return m.hasher


def _restore(m: KVCacheManager, first: _CutAfter) -> None:
    if m._hot is first:
        m._hot = first.real
    else:
        m.hasher = first.real


@pytest.mark.parametrize("second", SECOND)
def test_a_second_interrupt_in_the_cut_back_still_cuts_it_back(core, second):
    """The second interrupt at each point of the cut-back."""
    k = 0
    while True:
        m = _paused(core)
        first, cut = _first_cut(m), Cut(getattr(_M, second).__code__, k, c_returns_only=True)
        with cut, contextlib.suppress(KeyboardInterrupt):
            m.begin_step("x", PROMPT)
        assert first.fired
        _restore(m, first)
        _after_cut(m)
        if not cut.fired:
            break
        k += 1
    if k == 0:
        pytest.skip(f"no point of {second} on this core's path")


@pytest.mark.parametrize("name", SECOND_ENTRIES)
def test_a_second_interrupt_at_a_cut_back_callee_entry_still_cuts_it_back(core, monkeypatch,
                                                                           name):
    m = _paused(core)
    first = _first_cut(m)
    fired = cut_first_entry(monkeypatch, type(m), name)
    with contextlib.suppress(KeyboardInterrupt):
        m.begin_step("x", PROMPT)
    monkeypatch.undo()
    _restore(m, first)
    assert first.fired
    if not fired:
        pytest.skip(f"{name} is not called in this core's cut-back")
    _after_cut(m)
