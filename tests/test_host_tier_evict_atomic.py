"""With a host tier, an eviction's host copies are decided before the GPU eviction and
planned only after it (review s50 hosttier, findings 3 and 4). Both cores.

Finding 3: `_offload` planned the copies (evicting other host copies for room, moving the
counters) before the GPU eviction, so an eviction whose policy `blocks_uncached` hook raised,
claimed to change nothing, had changed the host tier: other sessions' host copies were gone,
copies of blocks still on the GPU were planned, and `discarded_blocks` went negative.
Finding 4: `_offload` asked the policy's `action` about the first victim that found no host
room before it checked the room; graph's `action` counts a block it offloads as on the host,
so a discarded block was counted there (a prefetch trigger).
"""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.policy.base import Action
from tests.test_manager_pool_hook_raises import UncachedFails

BS = 4


def host_books(m: KVCacheManager) -> tuple:
    h = m.host
    st = m.stats()
    return (sorted(h.index.items()), list(h.pool.state), list(h.order), list(h._offloads),
            list(h._pinned), h.num_offloaded, h.num_kept, st.offloaded_blocks,
            st.kept_on_host_blocks, st.discarded_blocks)


def gpu_books(m: KVCacheManager) -> tuple:
    return (sorted(m.index.items()), list(m.pool.state), list(m.block_owner))


@pytest.mark.parametrize("per_block", [False, True], ids=["batch", "per_block"])
def test_an_eviction_whose_uncached_hook_raises_changes_neither_tier(core, per_block):
    p = UncachedFails()
    p.per_block = per_block
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 4, policy=p, clock=lambda: 0.0,
                       core=core.name, num_host_blocks=3)
    for sid, first, n in (("x", 500, 13), ("y", 700, 16)):  # x's 3 blocks fill the host tier
        m.begin_step(sid, list(range(first, first + n)))
        m.allocate_slots(sid, n)
        m.finish_step(sid)
    m.take_transfers()
    m.begin_step("a", list(range(12)))
    m.allocate_slots("a", 12)
    m.finish_step("a")  # a's 3 blocks cached on the GPU (y's went to no host room)
    m.take_transfers()
    m.begin_step("b", list(range(100, 116)))
    assert len(m.host.index) == 3 and m.stats().discarded_blocks >= 0
    before = host_books(m), gpu_books(m)
    p.fail = True
    with pytest.raises(RuntimeError, match="uncached failed"):
        m.allocate_slots("b", 16)  # evicts 3 of a's blocks, whose copies need x's room
    p.fail = False
    m.check_integrity()
    after = host_books(m), gpu_books(m)
    # before the fix: x's host copies gone, a's 3 copies planned, counters moved and
    # discarded_blocks negative; the GPU tier as it was
    assert after[0] == before[0]
    assert after[1][:2] == before[1][:2]
    m.allocate_slots("b", 16)  # the hook mended: the same eviction goes through, copied
    plan = m.take_transfers()
    assert len(plan.offloads) == 3 and m.stats().discarded_blocks >= 0
    m.check_integrity()


def test_a_victim_past_the_host_room_is_not_asked_about(core):
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 4, policy="graph", clock=lambda: 0.0,
                       core=core.name, num_host_blocks=2)
    p = m.policy
    asked: list[tuple[int, Action]] = []
    real = p.action

    def action(b, now):
        answer = real(b, now)
        asked.append((b, answer))
        return answer

    p.action = action
    m.begin_step("a", list(range(12)), now=0.0)
    m.allocate_slots("a", 12, now=0.0)
    m.finish_step("a", now=1.0, tool="t", expected_s=5.0)
    m.begin_step("b", list(range(100, 116)), now=2.0)
    m.allocate_slots("b", 16, now=2.0)  # evicts a's 3 full blocks; the host has room for 2
    plan = m.take_transfers()
    assert [a for _, a in asked] == [Action.OFFLOAD] * 2  # before the fix: asked 3 times
    assert len(plan.offloads) == 2
    assert p._on_host == {"a": 2}  # before the fix: 3 (a discarded block counted)
    m.check_integrity()
