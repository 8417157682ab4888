"""An interrupt in a host hit's load once the GPU pool allocated its blocks leaks none of them.

`HostTierOps._load_into_gpu` allocates fresh GPU blocks, then indexes, owns and plans a load
into each. On the C++ core a signal that arrives during the pool's `allocate` is raised as
the call returns (CPython checks after a C call), the ids lost; on both cores the loop has
points of its own (enumerate's return, its calls, its jump back). Before (s55 ccut MED-3),
the caller (`_take_run`) dropped only the hits and the tail it took: the new blocks stayed
ACTIVE with no table ("block 4: refcount 1 but 0 running tables hold it"), some indexed,
their loads planned. Now `_load_into_gpu` reads the pool's `calls` first and, when the pool
allocated, takes the blocks back from its record (`last_result`) and unpins the host blocks.
"""

from __future__ import annotations

import contextlib

from kvsaga import KVCacheManager, KVSpec
from kvsaga.host_tier import HostTierOps
from tests.interrupts import Cut
from tests.test_host_load_hook_raises import run_step

BS = 4
X = list(range(500, 513))  # 3 full blocks and one token


def _manager(core) -> KVCacheManager:
    """x's 3 full blocks offloaded to the host tier (GPU: z's blocks)."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 4, policy="lru", clock=lambda: 0.0,
                       core=core.name, num_host_blocks=6)
    run_step(m, "x", X)
    run_step(m, "y", list(range(700, 713)))
    run_step(m, "z", list(range(900, 913)))
    assert len(m.host.run(list(m.sessions["x"].block_hashes), 0, 3)) == 3
    return m


def test_a_load_cut_after_the_allocation_takes_its_blocks_back(core):
    fired = k = 0
    while True:
        m = _manager(core)
        cut = Cut(HostTierOps._load_into_gpu.__code__, k, c_returns_only=True)
        with cut, contextlib.suppress(KeyboardInterrupt):
            m.begin_step("x", X + [1])
        m.check_integrity()  # was: "block b: refcount 1 but 0 running tables hold it"
        if cut.fired:
            fired += 1
            assert not m.host._loads and m.host.num_loaded == 0
            m.take_transfers()  # (the evictions' offloads, if any)
            m.check_integrity()
            assert not any(m.host.pool.refcount), "host blocks left pinned"
            assert "x" not in m.sessions or not m.sessions["x"].block_ids or (
                m.sessions["x"].state.name != "RUNNING")
            start = m.begin_step("x", X + [1])  # a retry loads them
        else:
            start = m.begin_step("x", X + [1]) if "x" not in m.sessions or (
                m.sessions["x"].state.name != "RUNNING") else None
        if start is not None:
            assert start.num_cached_tokens == 12  # the host hits, still there
        m.allocate_slots("x", 1)
        m.finish_step("x")
        m.take_transfers()
        m.check_integrity()
        if not cut.fired:
            break
        k += 1
    assert fired >= 2  # (the C++ core: the allocate's return among them)
