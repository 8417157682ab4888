"""`end_session` leaves no block owned by the ended session: the blocks of an abandoned branch
of its context (its prompt edited its history) and a block past a gap in its hits left its
table while it still owned them, and kept its id as their owner (a policy would rank them as
that session's, and a new session of the same id would take them for its own). Both
cores."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.pool import CACHED


def _owned_by(m: KVCacheManager, sid: str) -> list[int]:
    return [b for b, o in enumerate(m.block_owner) if o == sid]


@pytest.mark.parametrize("policy", ["lru", "graph"])
def test_an_abandoned_branch_is_disowned_at_end_session(core, policy):
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 8, core=core.name, policy=policy)
    m.begin_step("a", [1, 2, 3, 4, 5, 6, 7])
    m.allocate_slots("a", 7)
    m.finish_step("a")
    branch = m.session("a").block_ids[1:3]  # [3 4] [5 6]: the edit below abandons them
    m.begin_step("a", [1, 2, 9, 9, 9])
    m.allocate_slots("a", 3)
    # (owned while the edited step runs; its finish would disown them itself:
    # tests/test_manager_compacted_disown.py)
    assert all(m.pool.state[b] == CACHED and m.block_owner[b] == "a" for b in branch)
    m.end_session("a")
    assert _owned_by(m, "a") == []  # was: the branch's two blocks
    m.check_integrity()
    check = getattr(m.policy, "check_integrity", None)
    if check is not None:
        check()


def test_a_block_past_a_gap_in_the_hits_is_disowned_at_end_session(core):
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 8, core=core.name, policy="graph")
    m.begin_step("a", [1, 2, 3, 4, 5, 6, 7])
    m.allocate_slots("a", 7)
    m.finish_step("a")
    a0, a1, a2, _ = m.session("a").block_ids
    victims = [a1]  # a gap at a's block 1; then the filler's blocks
    m.policy.choose_victims = lambda n, now, *rest: [
        b for b in victims if m.pool.state[b] == CACHED][:n]
    m.begin_step("w", [50, 51, 52, 53, 54, 55, 56, 57])
    m.allocate_slots("w", 8)  # 4 blocks: the 4 free ones
    victims += m.block_table("w")
    m.end_session("w")
    m.begin_step("x", [60, 61])
    m.allocate_slots("x", 2)  # evicts a1
    m.finish_step("x")
    start = m.begin_step("a", [1, 2, 3, 4, 5, 6, 7, 8])
    assert start.block_ids == [a0]  # a2 holds its hash still, past the miss at block 1
    m.allocate_slots("a", 8 - start.num_cached_tokens)
    m.finish_step("a")
    assert a2 not in m.session("a").block_ids and m.block_owner[a2] == "a"
    assert m.pool.state[a2] == CACHED
    m.end_session("a")
    assert _owned_by(m, "a") == []  # was: a2
    m.check_integrity()
    m.policy.check_integrity()


def test_blocks_cut_back_by_a_failed_host_load_are_disowned_at_end_session(core):
    """A failed host load (`drop_transfer` -> `_take_back`) cuts a resumed step back past
    blocks it owns that stay cached by their hash: `end_session` disowned none of them
    (found by a stateful fuzz of the manager; `check_integrity` now checks owners too)."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=2), 8, policy="graph", num_host_blocks=16,
                       core=core.name, clock=lambda: 0.0)
    m.begin_step("b", [0, 1, 1], workflow=None)
    m.append_tokens("b", [2, 0])
    m.decode_step(["b"], [2])
    m.allocate_slots("b", 4)
    m.begin_step("c", [0, 0, 2], workflow="w2")
    m.begin_step("d", [0, 2, 0, 1, 2], workflow="w1")
    m.allocate_slots("d", 2)
    m.take_transfers()
    m.finish_step("d", tool="grep", expected_s=0.5)
    m.begin_step("a", [0, 2, 2, 1, 2], workflow=None)
    m.decode_step(["b"], [2])
    m.decode_step(["b", "a"], [1, 0])
    m.append_tokens("a", [1, 2, 2])
    m.allocate_slots("a", 5)
    m.take_transfers()
    m.finish_step("a", tool="test", expected_s=30.0)
    m.allocate_slots("c", 2)  # the policy offloads a's first block to the host
    st = m.begin_step("a", [0, 2, 2, 1, 2, 0, 2, 1, 1, 2, 2], workflow="w1")
    plan = m.take_transfers()
    assert plan.loads and all(m.block_owner[b] == "a" for b in st.block_ids)
    m.discard_writes({"c": 0})  # the pass failed: the engine discards it, then the plan
    assert m.drop_transfer(plan) == {"a": 0} and m.block_table("a") == []
    m.end_session("a")
    assert _owned_by(m, "a") == []  # was: the two cached blocks past the failed load
    m.check_integrity()
