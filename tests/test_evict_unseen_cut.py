"""An interrupt inside `_evict_unseen` (the handler path that drops the blocks a release cached
while the policy's `blocks_cached` hook raised) finishes it before propagating (s55 ccut
"Remaining", s56 cuts item 3).

Before, a cut in its unindexing loop (the C++ index's `remove` returning, the loop's jump
back; the Python index's `remove` entry) or before its eviction left hashed CACHED blocks
unindexed (no hit can find them) that the policy never saw (no eviction picks them): lost for
good ("3 hashed blocks, 1 indexed"; LRU's queue short of the CACHED blocks). Now the work is
restartable (`_forget_unseen`, under `until_done`). Scenario: `begin_step`'s take-back after
`step_started` raised, whose release's `blocks_cached` raises too (`_unbegin`), both cores.
"""

from __future__ import annotations

import contextlib

import pytest

from kvsaga.manager_rollback import FailedWrites
from kvsaga.prefix import PrefixIndex
from kvsaga.session import SessionState
from tests.interrupts import Cut
from tests.test_manager_release_hook_raises import consistent, manager


def _paused(m, sid: str, tokens: list[int]) -> None:
    m.begin_step(sid, tokens)
    m.allocate_slots(sid, len(tokens))
    m.finish_step(sid)


def _setup(core):
    m, p = manager("lru", core.name, num_blocks=12)
    _paused(m, "other", list(range(50, 57)))
    _paused(m, "s", list(range(14)))  # 3 full blocks and a tail
    prompt = [*m.sessions["s"].token_ids, 7, 8]

    def step_started(session, now):
        raise RuntimeError("step_started failed (a policy bug)")

    p.step_started = step_started
    p.fail = True  # the take-back's release: its hook raises, `_evict_unseen` drops them
    return m, p, prompt


def _after(m, p, prompt) -> None:
    p.fail = False
    consistent(m, p)  # was: "3 hashed blocks, 1 indexed" / LRU's queue short
    assert m.sessions["s"].state is SessionState.PAUSED
    del p.step_started
    m.begin_step("s", prompt)
    m.allocate_slots("s", len(prompt) - m.sessions["s"].num_computed)
    m.finish_step("s")
    consistent(m, p)
    # every block is still usable: a session that needs the whole pool gets it
    m.end_session("s")
    m.end_session("other")
    m.begin_step("big", list(range(1000, 1000 + 4 * m.pool.num_blocks)))
    m.allocate_slots("big", 4 * m.pool.num_blocks)
    consistent(m, p)


def _codes():
    out = [FailedWrites._evict_unseen.__code__]
    if hasattr(FailedWrites, "_forget_unseen"):
        out.append(FailedWrites._forget_unseen.__code__)
    return out


@pytest.mark.parametrize("which", [0, 1], ids=["evict_unseen", "forget_unseen"])
def test_a_cut_inside_evict_unseen_finishes_it(core, which):
    codes = _codes()
    if which >= len(codes):
        pytest.skip("no _forget_unseen (the code before s56)")
    fired = k = 0
    while True:
        m, p, prompt = _setup(core)
        cut = Cut(codes[which], k, c_returns_only=True)
        with cut, contextlib.suppress(KeyboardInterrupt, RuntimeError):
            m.begin_step("s", prompt)
        _after(m, p, prompt)
        if not cut.fired:
            break
        fired += 1
        k += 1
    if which == len(codes) - 1:  # (the frame with the unindexing loop: old or new)
        assert fired >= 3


@pytest.mark.parametrize("name", ["index_remove", "_note_evicted"])
def test_a_cut_at_a_callee_entry_inside_evict_unseen_finishes_it(core, monkeypatch, name):
    """Entries (`Cut` does not model them): the Python index's `remove` (on the C++ core the
    index is C++, its call one point that `Cut` covers), the journal's `_note_evicted`."""
    if name == "index_remove" and core.name != "python":
        pytest.skip("the C++ index's remove has no Python entry")
    m, p, prompt = _setup(core)
    owner, attr = (PrefixIndex, "remove") if name == "index_remove" else (type(m), name)
    real, fired = getattr(owner, attr), []

    def entry(*args, **kwargs):
        if not fired:
            fired.append(1)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, entry)
    with contextlib.suppress(KeyboardInterrupt, RuntimeError):
        m.begin_step("s", prompt)
    monkeypatch.undo()
    assert fired
    _after(m, p, prompt)


def test_a_cut_inside_a_prefetch_s_drop_leaves_no_block_lost(core):
    """prefetch's closing release, its hook raising: `_evict_unseen` is its last step, so
    the cut shows alone: was "N hashed blocks, M indexed" (hashed CACHED blocks that no
    lookup finds and no eviction picks)."""
    from tests.test_host_load_hook_raises import run_step
    from tests.test_release_return_cut import X

    code = _codes()[-1]
    fired = k = 0
    while True:
        m, p = manager("lru", core.name, num_host_blocks=6)
        for sid, tokens in [("x", X), ("y", list(range(700, 713))),
                            ("z", list(range(900, 913))), ("w", list(range(1100, 1113)))]:
            run_step(m, sid, tokens)
        p.fail = True
        cut = Cut(code, k, c_returns_only=True)
        with cut, contextlib.suppress(KeyboardInterrupt, RuntimeError):
            m.prefetch("x")
        p.fail = False
        consistent(m, p)
        m.take_transfers()
        m.begin_step("x", X + [1])
        m.allocate_slots("x", len(X) + 1 - m.sessions["x"].num_computed)
        m.finish_step("x")
        consistent(m, p)
        if not cut.fired:
            break
        fired += 1
        k += 1
    assert fired >= 2
