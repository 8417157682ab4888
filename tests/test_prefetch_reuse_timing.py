"""A prefetch holds a paused session's resident blocks while it makes room for the loads,
then releases them: a hold, not a hit. The pool's reuse timing (`BlockPool.reused_s`, the
simulator's kv_utilization "cached and later hit") credited each held block's cached time
at the hold and restarted it at the release, so blocks evicted before any hit counted as
reused, and a later hit counted only the time since the prefetch. Both cores."""

from __future__ import annotations

from tests.test_offload_walk import PROMPT, _gap_on_the_gpu


def test_a_prefetch_credits_no_reuse_and_a_later_hit_counts_the_whole_stay(core):
    m, (a0, c2) = _gap_on_the_gpu(core)  # all of a's blocks cached at clock 0
    before = m.pool.reused_s
    m.pool.clock = 5.0
    assert m.prefetch("a") == 1  # holds a0, c2 and the tail; loads h1
    assert m.pool.reused_s == before  # was + 5 s for each block held
    m.pool.clock = 8.0
    start = m.begin_step("a", PROMPT)
    assert start.num_cached_tokens == 7
    # a0, c2 and the tail cached since 0, the loaded h1 since the prefetch at 5.
    assert m.pool.reused_s == before + 3 * 8.0 + 3.0
    m.check_integrity()
