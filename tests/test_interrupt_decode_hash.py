"""The Python core's `decode_step` and `append_tokens` + `allocate_slots` cut by an interrupt
between a token's append and its block's hashing, allocation or registration (s57 lane
interrupts, window 3): each session is left untouched, or with the token appended and every
full block of its context hashed, or with its slot too (the block allocated, owned, at its
position, and registered in the prefix index when full), so the engine's retry
(`_decoded_anyway`: decode what was not appended, allocate what was appended only) runs.

Before: cut after the append (as `list.append` returned, at the Python hasher's entry or in
its loop), the session's hashes missed the block the token filled and the retry's
`allocate_slots` raised IndexError; cut in `_register_full_blocks` (as `range` returned), the
full block was computed but never registered (no prefix hit on it, ever); cut as the table
took its new block, the table outgrew `num_computed`. Also a second interrupt in the
handlers that complete those (`_hash_all`, `_took_slots`), at their entries and points."""

from __future__ import annotations

import contextlib

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.manager import KVCacheManager as _M
from kvsaga.pool import BlockPool
from kvsaga.prefix import BlockHasher
from tests.interrupts import Cut, Cuts, rearm
from tests.test_host_take_run_cut import cut_first_entry

BS = 4
# a: its next token fills block 1 (registered); b: its next needs a new block; c: neither.
CONTEXTS = {"a": list(range(100, 107)), "b": list(range(200, 208)), "c": [300, 301]}
NEXT = {"a": 1, "b": 2, "c": 3}

CODES = {"decode_step": _M.decode_step, "_append": _M._append, "_take_slots": _M._take_slots,
         "_register_full_blocks": _M._register_full_blocks, "extend": BlockHasher.extend,
         "allocate": BlockPool.allocate}


def _running() -> KVCacheManager:
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 12, policy="lru", clock=lambda: 0.0,
                       core="python")
    for sid, toks in CONTEXTS.items():
        start = m.begin_step(sid, toks)
        m.allocate_slots(sid, len(toks) - start.num_cached_tokens)
    return m


def _decode(m: KVCacheManager) -> None:
    m.decode_step(list(NEXT), list(NEXT.values()))


def _one_by_one(m: KVCacheManager) -> None:
    for sid, t in NEXT.items():
        m.append_tokens(sid, [t])
        m.allocate_slots(sid, 1)


OPS = {"decode_step": _decode, "append_allocate": _one_by_one}


def _after(m: KVCacheManager) -> None:
    """Each session untouched, appended (hashed whole) or whole; then the engine's retry
    gives each its token and slot, every full block registered under its hash."""
    m.check_integrity()
    for sid, toks in CONTEXTS.items():
        s = m.sessions[sid]
        n = len(toks)
        assert s.token_ids in (toks, toks + [NEXT[sid]])
        assert s.num_computed in (n, len(s.token_ids))
        fresh: list[bytes] = []
        m.hasher.extend(fresh, s.root, s.token_ids)
        assert s.block_hashes == fresh  # was: the filled block's hash missing
        if len(s.token_ids) == n:
            m.decode_step([sid], [NEXT[sid]])
        elif s.num_computed == n:
            m.allocate_slots(sid, 1)  # was: IndexError
    m.check_integrity()
    for sid in CONTEXTS:
        s = m.sessions[sid]
        assert s.num_computed == len(s.token_ids) == len(CONTEXTS[sid]) + 1
        fresh = []
        m.hasher.extend(fresh, s.root, s.token_ids)
        for i, b in enumerate(s.block_ids):
            assert (m.block_owner[b], m.block_position[b]) == (sid, i)
            if i < len(fresh):  # was: computed, never registered
                assert m.pool.block_hash[b] == fresh[i] and m.index.get(fresh[i]) == b
    for sid in CONTEXTS:
        m.end_session(sid)
    m.check_integrity()


def _points(op, code) -> int:
    m = _running()
    with Cut(code, -1, c_returns_only=True) as probe:
        OPS[op](m)
    return probe.hits


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("where", sorted(CODES))
def test_a_cut_leaves_each_session_untouched_appended_or_whole(op, where):
    code = CODES[where].__code__
    n = _points(op, code)
    if n == 0:
        pytest.skip(f"no point of {where} in {op}")
    for k in range(n):
        m = _running()
        with Cut(code, k, c_returns_only=True) as cut, pytest.raises(KeyboardInterrupt):
            OPS[op](m)
        assert cut.fired
        _after(m)


# The first cuts whose handler completes: the hashing's (`_hash_all`), the slots' (`_took_slots`).
HANDLERS = {"_hash_all": "extend", "_took_slots": "_take_slots"}


@pytest.mark.parametrize("op", sorted(OPS))
@pytest.mark.parametrize("handler", sorted(HANDLERS))
def test_a_second_interrupt_at_the_handlers_entry_still_completes(op, handler, monkeypatch):
    code = CODES[HANDLERS[handler]].__code__
    fired = 0
    for k in range(_points(op, code)):
        m = _running()
        with monkeypatch.context() as mp:
            entry = cut_first_entry(mp, _M, handler)
            with Cut(code, k, c_returns_only=True), contextlib.suppress(KeyboardInterrupt):
                OPS[op](m)
        fired += bool(entry)
        _after(m)
    assert fired


@pytest.mark.parametrize("op", sorted(OPS))
def test_a_second_interrupt_in_took_slots_still_completes(op, monkeypatch):
    """The first cut at each point of `_take_slots`, the second at each of `_took_slots`'s
    (re-armed: CPython unsets a tracer that raised)."""
    code, undo = _M._take_slots.__code__, _M._took_slots.__code__
    seconds = 0
    for j in range(_points(op, code)):
        k = 0
        while True:
            m = _running()
            first, second = Cut(code, j, c_returns_only=True), Cut(undo, k, c_returns_only=True)
            with monkeypatch.context() as mp:
                both = Cuts(first, second)
                rearm(mp, both, [(_M, "_took_slots")])
                with both, pytest.raises(KeyboardInterrupt):
                    OPS[op](m)
            _after(m)
            if not second.fired:
                break
            seconds += 1
            k += 1
    assert seconds
