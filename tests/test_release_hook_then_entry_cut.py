"""A release whose pool hook `blocks_cached` raises, then ONE signal at `release_again`'s entry
(the handler's first interrupt point: a signal that came with the hook's error), in the
take-backs that release: `_unbegin`, `_drop_hits`, `_take_back` and prefetch's closing
release (s55 intfix "Residual", s56 cuts item 2).

The release was whole, its cached blocks untold to the policy; the handler must drop them
unseen (`_evict_unseen`). It asked `release_again` first, whose entry is a point: the signal
raised there skipped the rest. `_unbegin` and prefetch propagated before their cleanup (the
session left RUNNING on a table it held no reference on; blocks CACHED that LRU never
queued), `_drop_hits` and `_take_back` read the raise as "none began" (told). Now each reads
a raise there with no call (`pool.__class__`, `_releasing`): a release that began (the C++
pool's always) is untold. The signal is delivered by making `release_again` raise
KeyboardInterrupt at its entry, once.
"""

from __future__ import annotations

import contextlib

import pytest

import kvsaga.host_tier as host_tier
import kvsaga.manager_rollback as manager_rollback
from kvsaga._core import cpp_available
from kvsaga.session import SessionState
from tests.test_host_load_hook_raises import run_step
from tests.test_manager_release_hook_raises import consistent, manager
from tests.test_release_return_cut import X, _cut_at
from tests.test_release_return_second_cut import _EntryCut


def _entry_cut(monkeypatch, module) -> _EntryCut:
    entry = _EntryCut(module.release_again)
    monkeypatch.setattr(module, "release_again", entry)
    return entry


def _paused(m, sid: str, tokens: list[int]) -> None:
    m.begin_step(sid, tokens)
    m.allocate_slots(sid, len(tokens))
    m.finish_step(sid)


def test_unbegin(core, monkeypatch):
    m, p = manager("lru", core.name)
    _paused(m, "other", list(range(50, 57)))
    _paused(m, "s", list(range(10)))
    prompt = [*m.sessions["s"].token_ids, 7, 8]

    def step_started(session, now):
        raise RuntimeError("step_started failed (a policy bug)")

    p.step_started = step_started
    p.fail = True  # the take-back's release: its hook raises too
    entry = _entry_cut(monkeypatch, manager_rollback)
    with pytest.raises(KeyboardInterrupt):
        m.begin_step("s", prompt)
    assert entry.calls == 1
    monkeypatch.undo()
    consistent(m, p)  # was: 's' RUNNING over released blocks, LRU not told of them
    assert m.sessions["s"].state is SessionState.PAUSED
    p.fail = False
    del p.step_started
    m.begin_step("s", prompt)
    m.allocate_slots("s", len(prompt) - m.sessions["s"].num_computed)
    m.finish_step("s")
    consistent(m, p)


def test_take_back(core, monkeypatch):
    m, p = manager("lru", core.name)
    m.begin_step("a", list(range(1, 9)))
    m.allocate_slots("a", 8)
    assert m.begin_step("b", list(range(1, 13))).num_cached_tokens == 8
    m.allocate_slots("b", 4)  # 'b''s third block: full, hashed: cached by the take-back
    p.fail = True
    entry = _entry_cut(monkeypatch, manager_rollback)
    with pytest.raises((RuntimeError, KeyboardInterrupt)):
        m.discard_writes({"a": 4})
    assert entry.calls == 1
    monkeypatch.undo()
    p.fail = False
    consistent(m, p)  # was: the block it cached left CACHED, LRU never told
    for sid in ("a", "b"):
        s = m.sessions[sid]
        m.allocate_slots(sid, len(s.token_ids) - s.num_computed)
        m.finish_step(sid)
    consistent(m, p)


def test_prefetch_closing_release(core, monkeypatch):
    m, p = manager("lru", core.name, num_host_blocks=6)
    for sid, tokens in [("x", X), ("y", list(range(700, 713))), ("z", list(range(900, 913))),
                        ("w", list(range(1100, 1113)))]:
        run_step(m, sid, tokens)
    assert m.host.run(list(m.sessions["x"].block_hashes), 0, 3)
    p.fail = True
    entry = _entry_cut(monkeypatch, host_tier)
    with pytest.raises(KeyboardInterrupt):
        m.prefetch("x")
    assert entry.calls == 1
    monkeypatch.undo()
    p.fail = False
    consistent(m, p)  # was: the prefetched blocks CACHED, LRU never told
    m.take_transfers()
    m.begin_step("x", X + [1])
    m.allocate_slots("x", len(X) + 1 - m.sessions["x"].num_computed)
    m.finish_step("x")
    consistent(m, p)


@pytest.mark.skipif(not cpp_available(), reason="the C++ core is not built")
def test_drop_hits_cpp(monkeypatch):
    """`_full_block_hits` cut as the C++ pool's acquire returned: `_drop_hits` lets the hits
    go; its release's hook raises, then the signal at `release_again`'s entry."""
    from kvsaga.manager import KVCacheManager as M

    m, p = manager("lru", "cpp")
    _paused(m, "other", list(range(50, 57)))
    _paused(m, "s", list(range(10)))
    prompt = [*m.sessions["s"].token_ids, 7, 8]
    p.fail = True
    entry = _entry_cut(monkeypatch, manager_rollback)
    cut = _cut_at(M._full_block_hits.__code__, "acquire_many")
    with cut, contextlib.suppress(KeyboardInterrupt):
        m.begin_step("s", prompt)
    assert cut.fired and entry.calls == 1
    monkeypatch.undo()
    p.fail = False
    consistent(m, p)  # was: the hits released CACHED, LRU never told
    assert m.sessions["s"].state is SessionState.PAUSED
    m.begin_step("s", prompt)
    m.allocate_slots("s", len(prompt) - m.sessions["s"].num_computed)
    m.finish_step("s")
    consistent(m, p)
