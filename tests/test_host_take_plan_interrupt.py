"""An interrupt inside `take_transfers` (HostTier.take_plan) leaves the pending plan whole.

Before (lane s52 carried, item 4): take_plan cleared the pending copies, then released
their host pins; a raise there lost the plan (never handed over), while the host index kept
copies whose bytes were never written. Now take_plan is all or nothing: raised at any of its
calls, the plan stays pending and pinned, the books hold, the interrupt propagates, and the
next take hands over exactly what an uninterrupted take would have. Both cores (the GPU
pool's generations are read for the loads; the host pool is the Python one in both).
"""

from __future__ import annotations

from contextlib import nullcontext

import pytest

import kvsaga.host_tier as host_tier
from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available
from kvsaga.pool import BlockPool
from tests.interrupts import Cut

CORES = ["python", *(["cpp"] if cpp_available() else [])]
# Each call take_plan makes, in order: building the plan, release_many (at its entry, between
# its first two blocks, its call to the observer), the observer's batch hook, and the
# per-block hooks (raising at the second block). (Its free-queue push is not called: the
# host's pinned blocks are hashed and become CACHED, none FREE; an interrupt at a free push
# is tests/test_pool_interrupt.py's.)
POINTS = ["plan", "release", "loop", "tell", "hook", "hook_per_block"]


def _step(m: KVCacheManager, sid: str, tokens: list[int]) -> None:
    st = m.begin_step(sid, tokens)
    m.allocate_slots(sid, len(tokens) - st.num_cached_tokens)
    m.finish_step(sid)


def _pending(core: str) -> KVCacheManager:
    """A manager whose pending plan has two offloads and two loads (four host pins)."""
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 4, clock=lambda: 0.0,
                       num_host_blocks=4, core=core)
    _step(m, "a", [1, 1, 2, 2, 3])
    m.take_transfers()
    _step(m, "b", [5, 5, 6, 6, 7, 7, 8])
    m.take_transfers()
    _step(m, "c", [1, 1, 2, 2, 3])
    h = m.host
    assert len(h._offloads) == 2 and len(h._loads) == 2 and len(h._pinned) == 4
    return m


def _books(m: KVCacheManager):
    h, hp, gp = m.host, m.host.pool, m.pool
    return (list(h._offloads), list(h._loads), list(h._pinned), sorted(h.index.items()),
            hp.reused_s,
            list(hp.refcount), list(hp.state), list(h.order), hp.num_free, hp.num_cached,
            list(gp.refcount), list(gp.state), gp.num_free)


class _Observer:
    """The host order's hooks, whose `blocks_cached` (or, per block, `block_cached` at the
    second block) raises KeyboardInterrupt once, before recording anything."""

    def __init__(self, order, batch: bool) -> None:
        self.order, self.armed = order, True
        self.block_uncached = order.remove
        self.blocks_uncached = order.remove_many
        if batch:
            self.blocks_cached = self._many
        self._seen = 0

    def _many(self, ids):
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        self.order.push_many(ids)

    def block_cached(self, b):
        self._seen += 1
        if self.armed and self._seen == 2:
            self.armed = False
            raise KeyboardInterrupt
        self.order.push(b)


def _arm(m: KVCacheManager, point: str, monkeypatch) -> Cut | None:
    """Arms the interrupt at `point`; returns the Cut to run around the take, if one."""
    hp = m.host.pool
    if point == "plan":
        def boom(*a, **k):
            raise KeyboardInterrupt
        monkeypatch.setattr(host_tier, "TransferPlan", boom)
    elif point == "release":
        real = hp.release_many

        def once(*a, **k):
            hp.release_many = real
            raise KeyboardInterrupt
        hp.release_many = once
    elif point == "loop":
        # An interrupt between the release's first two blocks: its loop's first jump back
        # (the pool finishes the release, untold; `_repin` takes it back). The caller runs
        # this Cut around the take (before: a list whose second store raised, a point
        # CPython never interrupts, inside a block's step).
        return Cut(BlockPool._release_loop.__code__, 0, c_returns_only=True)
    elif point == "tell":
        def tell(hook, ids):
            raise KeyboardInterrupt
        hp._tell = tell
    else:
        hp.observer = _Observer(m.host.order, batch=point == "hook")


@pytest.mark.parametrize("core", CORES)
@pytest.mark.parametrize("point", POINTS)
def test_interrupted_take_keeps_the_plan_whole(core, point, monkeypatch):
    m, twin = _pending(core), _pending(core)
    before = _books(m)
    cut = _arm(m, point, monkeypatch)
    with cut or nullcontext(), pytest.raises(KeyboardInterrupt):
        m.take_transfers()
    monkeypatch.undo()
    hp = m.host.pool
    hp.__dict__.pop("_tell", None)
    hp.refcount = list(hp.refcount)
    hp.observer = host_tier._QueueObserver(m.host.order)
    assert _books(m) == before  # nothing changed: the plan pending, pinned, indexed
    m.check_integrity()
    plan, expected = m.take_transfers(), twin.take_transfers()
    assert plan == expected and plan.offloads and plan.loads
    m.check_integrity()
    assert _books(m)[3:] == _books(twin)[3:]


@pytest.mark.parametrize("core", CORES)
def test_carried_repro_hands_the_offload_over(core):
    """The carried lane's repro: the offload's host copy is indexed and handed over next."""
    m = KVCacheManager(KVSpec(1, 1, 1, block_size=2), 4, clock=lambda: 0.0,
                       num_host_blocks=4, core=core)
    _step(m, "a", [1, 1, 2, 2])
    m.take_transfers()
    _step(m, "b", [5, 5, 6, 6, 7, 7])
    h = m.host
    real = h.pool.release_many

    def boom(*a, **k):
        raise KeyboardInterrupt

    h.pool.release_many = boom
    with pytest.raises(KeyboardInterrupt):
        m.take_transfers()
    h.pool.release_many = real
    m.check_integrity()
    plan = m.take_transfers()
    assert len(h.index) == 1 and [hb for _, hb in plan.offloads] == [b for _, b in h.index.items()]
    m.check_integrity()

