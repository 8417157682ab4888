"""Session 50 mutation testing: a `begin_step` taken back (the policy's `step_started`
raised) cuts the paused session's retained state only where its computed tokens ran past
the prompt's common prefix (kvsaga/manager_rollback.py `_cut_paused`): when they end
exactly there, the partial tail block and its computed tokens stay."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.policy import LRUPolicy

BS = 4


class StartFails(LRUPolicy):
    fail = False

    def step_started(self, session, now):
        if self.fail:
            raise RuntimeError("step_started failed (a policy bug)")
        super().step_started(session, now)


def test_a_taken_back_step_keeps_the_tail_its_prompt_still_extends(core):
    p = StartFails()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, policy=p, clock=lambda: 0.0,
                       core=core.name)
    m.begin_step("a", list(range(10)))
    m.allocate_slots("a", 10)
    m.append_tokens("a", [99])  # sampled, not computed
    m.finish_step("a")
    s = m.sessions["a"]
    assert (len(s.token_ids), s.num_computed) == (11, 10) and s.tail is not None
    table, tail = list(s.block_ids), s.tail
    prompt = [*range(10), 55, 56]  # diverges at token 10, where the computed ones end
    p.fail = True
    with pytest.raises(RuntimeError, match="step_started failed"):
        m.begin_step("a", prompt)
    p.fail = False
    m.check_integrity()
    assert (s.num_computed, s.block_ids, s.tail) == (10, table, tail)
    assert m.begin_step("a", prompt).num_cached_tokens == 10  # the tail's 2 tokens too
    m.check_integrity()


def test_discard_writes_inside_its_own_block_keeps_the_tokens_before_the_start(core):
    """A start inside the session's own (written) block cuts there: 5 of the 6 computed
    tokens stay, the partial block kept. (Inside another session's hit it would go back to
    that block's start: a partial tail must be the session's own block.)"""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 16, clock=lambda: 0.0, core=core.name)
    m.begin_step("a", list(range(6)))
    m.allocate_slots("a", 6)
    table = list(m.sessions["a"].block_ids)
    assert len(table) == 2 and all(m.block_owner[b] == "a" for b in table)
    m.discard_writes({"a": 5})
    assert m.num_computed_tokens("a") == 5
    assert m.sessions["a"].block_ids == table
    m.check_integrity()
