"""Session 51 mutation testing: two survivors of session 50's run, now killed.

- `lookup_after` (kvsaga/manager_journal.py) answers None when the session keeps a live
  retained tail and hits were evicted (fewer hits may end where the tail starts, and
  `lookup` then counts the tail's tokens). Its test `tail >= 0` survived `tail > 0`: no
  test had the retained tail in block 0.
- `_give_owners_back` (kvsaga/manager_rollback.py) leaves a FREE block unowned. Its
  `state[b] != FREE` survived removal: no test looked at the owner of the exporter's blocks
  that a failed shared import dropped.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.policy import LRUPolicy
from kvsaga.pool import FREE
from tests.policy_hooks import CachedFails

BS = 4


class Picky(LRUPolicy):
    """LRU, but naming the victims in `pick` when set (the test chooses which hits go)."""

    pick: list[int] | None = None

    def choose_victims(self, num_blocks, now):
        if self.pick is not None:
            assert len(self.pick) == num_blocks
            return list(self.pick)
        return super().choose_victims(num_blocks, now)


def test_lookup_after_asks_again_when_the_retained_tail_is_block_0(core):
    """Session a's retained tail is block 0 (position 1, 2 tokens); its prompt's 3 full
    blocks hit c's blocks, so `lookup` counts no tail tokens. Evicting hits 1 and 2 leaves
    one hit, which ends where a's tail starts: `lookup` now counts the tail's 2 tokens.
    `lookup_after` must not answer "found less 2 hits" (no tail): None, or the fresh
    answer."""
    p = Picky()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 4, policy=p, clock=lambda: 0.0,
                       core=core.name)
    m.begin_step("z", [100, 101, 102])
    m.allocate_slots("z", 2)  # block 0, partial
    m.begin_step("c", list(range(12)))
    m.allocate_slots("c", 12)  # blocks 1, 2, 3
    m.finish_step("c")
    m.end_session("z")  # block 0 free again: the only free block
    start = m.begin_step("a", list(range(6)))
    m.allocate_slots("a", 6 - start.num_cached_tokens)
    m.finish_step("a")
    a, c_table = m.session("a"), list(m.session("c").block_ids)
    assert a.tail is not None and a.tail[0] == 0 and a.block_ids == [c_table[0], 0]
    prompt = [*range(12), 99]
    found = m.lookup("a", prompt)
    assert (found.gpu_hit_blocks, found.tail_tokens) == (3, 0)
    hashes: list[bytes] = []
    m.hasher.extend(hashes, a.root, prompt)

    m.begin_step("w", [50] * 8)
    m.start_journal()
    p.pick = [c_table[2], c_table[1]]  # hits 2 and 1; a's tail (block 0) survives
    m.allocate_slots("w", 8)
    p.pick = None
    evicted = m.journal()
    assert sorted(pos for _, _, pos in evicted) == [1, 2]

    fresh = m.lookup("a", prompt)
    assert (fresh.gpu_hit_blocks, fresh.tail_tokens) == (1, 2)
    after = m.lookup_after("a", found, hashes, evicted)
    assert after is None or after == fresh  # the mutant: 1 hit and no tail tokens
    m.check_integrity()


def test_a_failed_shared_import_leaves_the_dropped_blocks_unowned(core):
    """An all-hit import of a's blocks whose release hook raises drops them untold (FREE);
    giving the hits' owners back must skip them: a FREE block has no owner (as after any
    eviction), else a would own blocks that hold nothing of its."""
    p = CachedFails()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, policy=p, clock=lambda: 0.0,
                       core=core.name)
    m.begin_step("a", list(range(12)))
    m.allocate_slots("a", 12)
    m.append_tokens("a", [99])
    m.finish_step("a")
    table = list(m.session("a").block_ids)
    assert [m.block_owner[b] for b in table] == ["a"] * 3
    export = replace(m.export_session("a").export, session_id="b")
    p.fail = True
    with pytest.raises(RuntimeError, match="blocks_cached failed"):
        m.import_session(export)
    p.fail = False
    assert sorted(m.sessions) == ["a"]
    assert [m.pool.state[b] for b in table] == [FREE] * 3  # the precondition
    assert [m.block_owner[b] for b in table] == [None] * 3
    assert all(m.block_owner[b] is None for b in range(16) if m.pool.state[b] == FREE)
    m.check_integrity()
    start = m.begin_step("a", [*range(12), 99, 5])  # a computes them again
    assert start.num_cached_tokens == 0
    m.check_integrity()
