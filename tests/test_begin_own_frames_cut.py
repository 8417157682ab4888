"""An interrupt in `begin_step`'s own frames (kvsaga/manager.py `_begin`, between the hits'
acquire and the step's registration, and as it returns) takes the step back whole: no hit's
reference held by no table, the session not left RUNNING by a begin_step that raised, and a
compacted session's ownership record as before the call (s56 cuts.md MED-4: `len(hits)`'s
return, `_reuse_tail`'s entry, `disown_shared`'s return, `_disowned.get`, `_reown`,
`_note_left`... leaked the hits: 'block 0: refcount 1 but 0 running tables hold it'; a cut
at `len(tokens)` or `list(hits)` left the session RUNNING).

Cut at every interrupt point of those frames (tests/interrupts.py `Cut`, C calls' returns;
and each callee's entry), both cores: a plain resume (its retained tail reused), a host hit
(tests/test_host_take_run_cut.py's layout 1) and a compacted session's revert to its old
context (`_reown` gives it back its disowned blocks)."""

from __future__ import annotations

import contextlib

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.manager import KVCacheManager as _M
from kvsaga.ownership import reown
from tests.interrupts import Cut
from tests.test_host_load_hook_raises import run_step
from tests.test_host_take_run_cut import X, _mixed, cut_first_entry
from tests.test_manager_compacted_disown import _check, _manager, _toks
from tests.test_manager_compacted_reown import _step

CODES = {"_begin": _M._begin.__code__, "_full_block_hits": _M._full_block_hits.__code__,
         "_reuse_tail": _M._reuse_tail.__code__,
         "reown": reown.__code__, "_note_left": _M._note_left.__code__}


def _plain(core) -> tuple[KVCacheManager, str, list[int]]:
    """x paused with a retained tail, no host tier: its resume hits 3 blocks and the tail."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 8, policy="lru", clock=lambda: 0.0,
                       core=core.name)
    run_step(m, "x", X)
    return m, "x", X + [1]


def _host(core) -> tuple[KVCacheManager, str, list[int]]:
    return _mixed(core, 1), "x", X + [1]


def _revert(core) -> tuple[KVCacheManager, str, list[int]]:
    """a (40 tokens) compacted to 4 (its finish disowns blocks 1..9), then back to 44."""
    m = _manager(core, "graph")
    _step(m, "a", _toks(0, 40), 0.0, 1.0)
    _step(m, "a", _toks(0, 4), 1.0, 1.0)
    assert m._disowned.get("a")
    return m, "a", _toks(0, 44)


CASES = {"plain": _plain, "host": _host, "revert": _revert}
REACHED = {"plain": {"_begin", "_full_block_hits", "_reuse_tail", "_note_left"},
           "host": {"_begin", "_full_block_hits", "_reuse_tail", "_note_left"},
           "revert": {"_begin", "_full_block_hits", "reown"}}
# (`_reown` calls only Python code: its entry is cut below; the revert's compacted tail is
# dropped at its finish; the Python core's `_full_block_hits` calls only Python code)


def _state(m: KVCacheManager, sid: str):
    """What a take-back gives back that these cases can change: the compacted record and
    its blocks' owners (`_reown`). (Blocks loaded from the host stay, as the session's
    left-owned blocks, and a dropped tail stays dropped: documented, `_unbegin`.)"""
    rec = {k: dict(v) for k, v in m._disowned.items()}
    named = sorted({b for r in rec.values() for b in r})
    return rec, [m.block_owner[b] for b in named]


def _after(m: KVCacheManager, sid: str, tokens: list[int], raised: bool, before) -> None:
    _check(m)  # was: "block b: refcount 1 but 0 running tables hold it"
    if m.host is not None:
        m.take_transfers()
        m.check_integrity()
    s = m.sessions[sid]
    if raised:
        assert s.state.name == "PAUSED"  # was: RUNNING after a begin_step that raised
        assert _state(m, sid) == before  # (a cut in `_reown`: was given back or lost)
        start = m.begin_step(sid, tokens)  # the retry
        assert start.num_cached_tokens >= len(tokens) - 5
    m.allocate_slots(sid, len(tokens) - s.num_computed)
    m.finish_step(sid)
    _check(m)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("where", sorted(CODES))
def test_a_cut_in_begin_steps_own_frames_takes_the_step_back(core, case, where):
    if where not in REACHED[case] or (where, core.name) == ("_full_block_hits", "python"):
        pytest.skip("no point of it on this case's path")
    fired = k = 0
    while True:
        m, sid, tokens = CASES[case](core)
        before = _state(m, sid)
        cut = Cut(CODES[where], k, c_returns_only=True)
        raised = False
        with cut:
            try:
                m.begin_step(sid, tokens)
            except KeyboardInterrupt:
                raised = True
        assert raised == cut.fired
        _after(m, sid, tokens, raised, before)
        if not cut.fired:
            break
        fired += 1
        k += 1
    assert fired


ENTRIES = ["_reuse_tail", "_tail_alive", "_reusable_tail", "_note_left", "_reown",
           "_load_from_host"]


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", ENTRIES)
def test_a_cut_at_a_callee_entry_takes_the_step_back(core, monkeypatch, case, name):
    """CPython checks for a signal at each Python function's entry (`Cut` does not model
    it): each callee cut there on its first call inside begin_step."""
    m, sid, tokens = CASES[case](core)
    if not hasattr(type(m), name):
        pytest.skip(f"no {name}")
    before = _state(m, sid)
    fired = cut_first_entry(monkeypatch, type(m), name)
    with contextlib.suppress(KeyboardInterrupt):
        m.begin_step(sid, tokens)
    monkeypatch.undo()
    if not fired:
        pytest.skip(f"{name} is not called on this case's path")
    _after(m, sid, tokens, True, before)
