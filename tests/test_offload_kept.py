"""An eviction's victim whose content the host tier already holds gets no copy: it is counted
as kept on the host (`kept_on_host_blocks`: "it stays there"). Before the fix nothing held
that host copy while the same eviction planned the other victims' copies, so a copy that
needed room could evict it, as the host's least recently used block: the content was then
on neither tier, counted kept, not discarded. Both cores."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.policy import LRUPolicy
from kvsaga.policy.base import Action

CORES = ["python", *(["cpp"] if cpp_available() else [])]


class Named(LRUPolicy):
    """Evicts the block lists of `victims`, in turn; offloads the blocks in `offload` and
    discards the others."""

    def __init__(self) -> None:
        super().__init__()
        self.victims: list[list[int]] = []
        self.offload: set[int] = set()

    def choose_victims(self, num_blocks, now, *args):
        return self.victims.pop(0)

    def action(self, block_id, now):
        return Action.OFFLOAD if block_id in self.offload else Action.DISCARD


def step(m: KVCacheManager, sid: str, tokens: list[int]) -> None:
    st = m.begin_step(sid, tokens)
    m.allocate_slots(sid, len(tokens) - st.num_cached_tokens)
    m.finish_step(sid)
    m.take_transfers()
    m.check_integrity()


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("host_blocks", [1, 2])
def test_a_kept_host_copy_is_not_evicted_by_the_same_evictions_copies(core, host_blocks):
    policy = Named()
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 4, policy=policy, clock=lambda: 0.0,
                       num_host_blocks=host_blocks, core=core)
    step(m, "a", [1, 1])
    step(m, "c", [2, 2])
    hA, hC = m.sessions["a"].block_hashes[0], m.sessions["c"].block_hashes[0]
    g_a, g_c = m.index.get(hA), m.index.get(hC)
    policy.victims, policy.offload = [[g_a]], {g_a}
    step(m, "x", [9] * 6)  # a's block goes to the host
    x = m.sessions["x"].block_ids
    policy.victims, policy.offload = [[x[0]], [x[1]]], set()
    step(m, "b", [1, 1, 3])  # loads [1 1] back from the host (a host hit: the copy stays)
    policy.victims = [[x[2]]]
    if host_blocks == 2:  # a newer host copy beside [1 1]: this one is the LRU
        policy.offload = {x[2]}
    step(m, "w", [7, 7])
    g_a = m.index.get(hA)
    assert g_a is not None and m.host.has_copy(hA)
    assert [m.host.pool.block_hash[hb] for hb in m.host.order][0] == hA
    before = m.stats()
    # Both evicted: [1 1] kept (its host copy), [2 2] offloaded where there is room.
    policy.victims, policy.offload = [[g_a, g_c]], {g_a, g_c}
    step(m, "y", [8, 8, 8, 8])
    after = m.stats()
    assert m.host.has_copy(hA)  # before the fix: False (evicted for [2 2]'s copy)
    assert m.host.has_copy(hC) == (host_blocks == 2)
    made = host_blocks - 1  # with one host block, the kept copy leaves no room
    assert (after.num_evicted_blocks - before.num_evicted_blocks,
            after.kept_on_host_blocks - before.kept_on_host_blocks,
            after.offloaded_blocks - before.offloaded_blocks,
            after.discarded_blocks - before.discarded_blocks) == (2, 1, made, 1 - made)
    assert m.lookup("a", [1, 1, 5]).host_hit_blocks == 1
    m.check_integrity()
