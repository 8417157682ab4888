"""The manager state machine again, with a host tier: offloads, host hits, prefetches,
host evictions and transfer plans, checking both tiers after every operation."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import Phase, settings
from hypothesis.stateful import precondition, rule, run_state_machine_as_test

from kvsaga import KVCacheManager, KVSpec
from kvsaga.host_tier import HostTier
from tests.stateful_reach import reach_case
from tests.test_manager_stateful import BS, ManagerMachine


class OffloadMachine(ManagerMachine):
    """Simulated tiers check the data path: a block a running step takes from the cache (a
    GPU hit, or a host hit loaded by the plan) must hold its content before the forward
    pass, which writes only the blocks allocated since the last one; every host block the
    index names must hold its content once the plan ran. (Before review s50 hosttier's
    finding 5, the forward wrote every block a running step held, hits included, and a host
    block never written passed: the machine passed with no load or no offload copied.)"""

    def __init__(self):
        super().__init__()
        self.m = KVCacheManager(
            KVSpec(1, 1, 4, block_size=BS), 12, clock=lambda: 0.0, num_host_blocks=6
        )
        # Simulated tiers: the content (block hash) each slot holds after executed copies.
        self.gpu = [None] * 12
        self.host = [None] * 6
        # Blocks the next forward pass writes: those given slots since the last one.
        self.writing: set[int] = set()
        allocate_slots = self.m.allocate_slots

        def allocate(session_id, num_tokens, **kw):
            slots = allocate_slots(session_id, num_tokens, **kw)
            self.writing.update(slot // BS for slot in slots)
            return slots

        self.m.allocate_slots = allocate

    @rule()
    def run_transfers(self):
        pending = self.m.host.has_plan  # False: taking the plan would change nothing
        pinned = self.m.host.pool.refcount.copy()
        plan = self.m.take_transfers()
        assert not self.m.host.has_plan
        if not pending:
            assert not plan and self.m.host.pool.refcount == pinned
        for g, h in plan.offloads:
            self.host[h] = self.gpu[g]
        for h, g in plan.loads:
            self.gpu[g] = self.host[h]
        # Every host block the index names holds that content, copied from the GPU tier.
        for hsh, hb in self.m.host_index.items():
            assert self.host[hb] == hsh, "a host block holds other content, or none"

    @precondition(lambda self: self.m.sessions)
    @rule(data=st.data())
    def prefetch(self, data):
        sid = data.draw(st.sampled_from(sorted(self.m.sessions)))
        self.m.prefetch(sid, now=self.now)

    def after_allocate(self):
        self.forward()

    @rule()
    def forward(self):
        # The engine runs the step's copies, then its forward pass reads the K/V of every
        # block a running step holds and writes that of the blocks it was given slots in.
        self.run_transfers()
        pool = self.m.pool
        for b, h in enumerate(pool.block_hash):
            if h is not None and pool.refcount[b] and b not in self.writing:
                assert self.gpu[b] == h, f"block {b}, a hit, holds other content or none"
        for b in self.writing:
            self.gpu[b] = pool.block_hash[b]  # (None: a partial block, not a cache hit)
        self.writing.clear()


# Fails unless the examples evicted, were refused, copied out and loaded (stateful_reach.py).
TestOffloadStateful = reach_case(
    OffloadMachine, settings(max_examples=120, stateful_step_count=40, deadline=None), host=True)


def _no_load(self, host_block, gpu_block):
    self.num_loaded += 1  # counted, but no copy planned: the GPU block never gets the data


def _no_offload(self, gpu_block, block_hash):
    _copy_out(self, gpu_block, block_hash)
    self._offloads.pop()  # the host block indexed, its copy never planned


_copy_out = HostTier._copy_out


@pytest.mark.parametrize(("name", "mutant", "message"), [
    ("plan_load", _no_load, "a hit, holds other content or none"),
    ("_copy_out", _no_offload, "a host block holds other content, or none"),
])
def test_the_machine_sees_a_copy_never_made(monkeypatch, name, mutant, message):
    """The machine itself: with the host tier's loads, or its offloads, never copied, it
    fails (it passed with either before review s50 hosttier's finding 5). No shrinking:
    only that it fails matters here."""
    monkeypatch.setattr(HostTier, name, mutant)
    quick = settings(max_examples=120, stateful_step_count=40, deadline=None,
                     derandomize=True, phases=[Phase.explicit, Phase.generate],
                     print_blob=False)
    with pytest.raises(AssertionError, match=message):
        run_state_machine_as_test(OffloadMachine, settings=quick)


def test_offload_then_host_hit_then_prefetch():
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 4, clock=lambda: 0.0, num_host_blocks=4)
    a = list(range(100, 113))  # 3 full blocks + 1 token
    m.begin_step("a", a)
    m.allocate_slots("a", len(a))
    m.finish_step("a", tool="test")
    assert m.take_transfers().offloads == []
    b = list(range(200, 216))
    m.begin_step("b", b)
    m.allocate_slots("b", len(b))  # needs all 4 blocks: a's tail then its full blocks go
    plan = m.take_transfers()
    assert sorted(g for g, _ in plan.offloads) == [0, 1, 2]  # a's full blocks, copied out
    assert m.stats().offloaded_blocks == 3
    m.finish_step("b")
    m.end_session("b")
    st_ = m.begin_step("a", a + [7, 7, 7])
    assert st_.num_cached_tokens == 12  # 3 blocks from the host tier; the tail was dropped
    plan = m.take_transfers()
    assert len(plan.loads) == 3 and m.stats().host_hit_tokens == 12
    m.check_integrity()
    m.finish_step("a")
    # Prefetch: push a out again, then load it back before it resumes.
    m.begin_step("c", list(range(300, 316)))
    m.allocate_slots("c", 16)
    m.take_transfers()
    assert len(m.take_transfers().offloads) == 0  # a's blocks already have host copies
    m.finish_step("c")
    m.end_session("c")
    m.resume_hint("a")  # the tool returned: start loading a's blocks into free GPU blocks
    plan = m.take_transfers()
    assert len(plan.loads) >= 1 and m.stats().prefetched_blocks == len(plan.loads)
    st_ = m.begin_step("a", a + [7, 7])
    assert st_.num_cached_tokens >= 4 * len(plan.loads)
    m.check_integrity()


def test_end_session_releases_ownership_of_prefetched_blocks():
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 4, clock=lambda: 0.0, num_host_blocks=4)
    a = list(range(100, 113))
    m.begin_step("a", a)
    m.allocate_slots("a", len(a))
    m.finish_step("a")
    m.begin_step("b", list(range(200, 216)))
    m.allocate_slots("b", 16)
    m.take_transfers()
    m.finish_step("b")
    m.end_session("b")
    assert m.prefetch("a") > 0
    loaded = [g for _, g in m.take_transfers().loads]
    assert all(m.block_owner[g] == "a" for g in loaded)
    m.end_session("a")
    assert all(m.block_owner[g] is None for g in loaded)
    m.check_integrity()
