"""A hit or a hold whose pool hook `blocks_uncached` raises (a policy bug) leaves the manager,
the host tier and the session as they were, on both cores: the pool takes nothing then
(tests/test_pool_acquire_hook_raises.py), and each caller drops what it took before, keeping
the policy's error. Before, a resume's retained tail (`_reuse_tail`), a host run's resident
blocks or tail (`_take_run`) and a prefetch's resident head kept references that no table
held, the hits before them too, and the session lost its tail."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from tests.test_manager_hook_failure import (
    BS,
    CORES,
    Flaky,
    books,
    host_books,
    paused,
    split_on_tiers,
)


class UncachedFailsAt(Flaky):
    """Flaky whose `blocks_uncached` raises on its `at`-th call once `at` is set (0: never),
    before it records any block, as a batch hook must."""

    at = 0
    calls = 0

    def bind(self, view):
        super().bind(view)
        told = self.blocks_uncached

        def blocks_uncached(ids):
            if self.at:
                self.calls += 1
                if self.calls == self.at:
                    raise RuntimeError("blocks_uncached failed (a policy bug)")
            told(ids)

        self.blocks_uncached = blocks_uncached

    def arm(self, at: int) -> None:
        self.at, self.calls = at, 0


@pytest.mark.parametrize("core", CORES)
def test_a_tail_hit_whose_uncached_hook_raises_takes_the_step_back(core):
    """The resume hits a's 3 full blocks (the hook's 1st call), then its retained tail (the
    2nd), which raises. Before the fix the full blocks stayed referenced by the PAUSED
    session and its tail was forgotten (check_integrity failed on both cores)."""
    policy = UncachedFailsAt()
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 8, policy=policy, clock=lambda: 0.0,
                       core=core)
    paused(m, "a", list(range(14)))  # 3 full blocks and a tail of 2 tokens
    s = m.sessions["a"]
    assert s.tail is not None
    prompt = [*s.token_ids, 5]
    before = books(m), policy.eviction_order(), s.tail
    policy.arm(2)
    with pytest.raises(RuntimeError, match="blocks_uncached failed"):
        m.begin_step("a", prompt)
    assert policy.calls == 2
    policy.arm(0)
    m.check_integrity()
    assert (books(m), policy.eviction_order(), s.tail) == before
    assert m.begin_step("a", prompt).num_cached_tokens == 14
    m.check_integrity()


def nothing_held(m, policy, before, at: int) -> None:
    """After a raise at the hook's `at`-th call: the hook was called `at` times, the books
    are as `before` (host books, eviction order), and what was taken before the raise,
    released, is cached again as just used (a touch, as when the loads' eviction raises:
    `_unbegin`), so the order is the same set, in the same order when nothing was taken."""
    assert policy.calls == at
    policy.arm(0)
    m.check_integrity()
    assert host_books(m) == before[0]
    order = policy.eviction_order()
    assert sorted(order) == sorted(before[1]) and (order == before[1] or at > 1)


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("at", [1, 2, 3], ids=["hit", "resident", "tail"])
def test_a_host_run_whose_uncached_hook_raises_takes_the_step_back(core, at):
    """s's resume hits block 0 (the hook's 1st call), then, before the load of block 1,
    takes the resident block 2 (2nd) and its tail (3rd). Before the fix a raise at the 2nd
    or 3rd call kept the references taken before it (the hit on block 0 among them), the
    step taken back as if none were."""
    m, policy = split_on_tiers(core, UncachedFailsAt())
    prompt = [*m.sessions["s"].token_ids, 5]
    before = host_books(m), policy.eviction_order()
    policy.arm(at)
    with pytest.raises(RuntimeError, match="blocks_uncached failed"):
        m.begin_step("s", prompt)
    nothing_held(m, policy, before, at)
    assert m.begin_step("s", prompt).num_cached_tokens == 14
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("at", [1, 2, 3], ids=["head", "resident", "tail"])
def test_a_prefetch_whose_uncached_hook_raises_holds_nothing(core, at):
    """The prefetch holds s's resident head, block 0 (the hook's 1st call), then the run's
    resident block 2 (2nd) and the tail (3rd) before its load. Before the fix each raise
    left the blocks held before it (and, at the 1st, block 0 itself) referenced for good."""
    m, policy = split_on_tiers(core, UncachedFailsAt())
    before = host_books(m), policy.eviction_order()
    policy.arm(at)
    with pytest.raises(RuntimeError, match="blocks_uncached failed"):
        m.prefetch("s")
    nothing_held(m, policy, before, at)
    assert m.prefetch("s") == 1
    m.check_integrity()
    assert m.begin_step("s", [*m.sessions["s"].token_ids, 5]).num_cached_tokens == 14
    m.check_integrity()
