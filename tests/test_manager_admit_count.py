"""`StepLookup.blocks_to_admit` counts the session's retained tail once: its block is CACHED
and `begin_step` takes it from the free-or-evictable blocks as a new block would be, so it is
one of the prompt's blocks not hit on the GPU and not one of `gpu_cached_blocks` too (which
counted it twice: a step that fits the pool exactly was never admitted). Both cores."""

from __future__ import annotations

from kvsaga import KVCacheManager, KVSpec
from kvsaga.scheduler import FCFSScheduler
from tests.sched_helpers import ToyExecutor, ToyRequest


def _paused_with_tail(core) -> KVCacheManager:
    """A pool of 4 blocks of 4 tokens; session "a" paused on 2 full blocks and a tail of 2
    tokens: one block free, three CACHED."""
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=4), 4, core=core.name)
    m.begin_step("a", list(range(10)))
    m.allocate_slots("a", 10)
    m.finish_step("a")
    return m


def test_the_tail_is_counted_once(core):
    m = _paused_with_tail(core)
    prompt = list(range(10)) + [50, 51, 52]  # 13 tokens: 4 blocks, the whole pool
    lk = m.lookup("a", prompt)
    assert (lk.gpu_hit_blocks, lk.gpu_cached_blocks, lk.host_hit_blocks, lk.tail_tokens) == \
        (2, 2, 0, 2)
    assert lk.gpu_cached_blocks <= lk.gpu_hit_blocks
    assert lk.num_cached_tokens == 10
    assert m.pool.num_available == 4
    assert lk.blocks_to_admit(13) == 4  # was 5: more than the pool, for a step that fits
    start = m.begin_step("a", prompt)
    assert start.num_cached_tokens == 10
    m.allocate_slots("a", 13 - start.num_cached_tokens)
    assert m.pool.num_available == 0  # it took exactly blocks_to_admit(13)
    m.check_integrity()


def test_fcfs_admits_a_resumed_step_that_fits_the_pool_exactly(core):
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=4), 4, core=core.name, clock=lambda: 0.0)
    ex = ToyExecutor(m)
    sched = FCFSScheduler(m, max_num_batched_tokens=64)
    sched.add(ToyRequest("a", list(range(9)), max_new=2, last=False), 0.0)  # 10 tokens
    now = 0.0
    for _ in range(5):
        ex.run(sched, sched.schedule(now, ex), now)
        now += 1.0
    s = m.session("a")
    assert s.tail is not None and len(s.token_ids) == 10
    resumed = ToyRequest("a", list(s.token_ids) + [50, 51, 52], max_new=2, resumed=True)
    sched.add(resumed, now)
    for _ in range(5):
        ex.run(sched, sched.schedule(now, ex), now)
        now += 1.0
    assert ex.log.count(("begin", "a")) == 2  # the resumed step was admitted
    assert "a" not in m.sessions  # and ran to its end
    m.check_integrity()
