"""A host hit's or a prefetch's failed load whose take-back release's `blocks_cached` hook
raises (the pool released the blocks; the policy was told of none): the blocks it cached are
dropped unseen, as the other take-backs do (s56 diffcuts MED-2: `_let_go` left them CACHED,
never queued by LRU: a retry raised 'block 2 is not queued', a later eviction 'named invalid
victims'); and the first error stays in the chain when prefetch's closing release raises too
(s56 diffcuts LOW-3: a KeyboardInterrupt was dropped)."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager
from kvsaga.pool import CACHED
from tests.test_host_load_hook_raises import run_step
from tests.test_host_take_run_cut import Chosen, X, host_layout

Z = list(range(900, 929))  # 7 full blocks and one token: evicts most of the GPU


class Faulty(Chosen):
    """LRU evicting `prefer` first; once `first_error` is set, the next `choose_victims`
    raises it and the next `bad_tells` calls of `blocks_cached` raise RuntimeError."""

    first_error: BaseException | None = None
    bad_tells = 0

    def bind(self, view):
        super().bind(view)
        push = self._order.push_many

        def blocks_cached(ids):
            if self.bad_tells:
                self.bad_tells -= 1
                raise RuntimeError("blocks_cached fault")
            push(ids)

        self.blocks_cached = blocks_cached
        self.victim_queue = None  # (the C++ core calls the hooks above)

    def choose_victims(self, num_blocks: int, now: float) -> list[int]:
        if self.first_error is not None:
            error, self.first_error = self.first_error, None
            raise error
        return super().choose_victims(num_blocks, now)


def _paused(core, gone) -> tuple[KVCacheManager, Faulty]:
    """x paused, its block `gone` (1: a GPU hit before it; "all": its three full blocks) on
    the host tier only, its tail alive on the GPU, the GPU full: a resume loads and evicts."""
    policy = Faulty()
    m = host_layout(core, policy, gone)
    assert m.pool.num_free == 0 and m._tail_alive(m.sessions["x"])
    return m, policy


def _chain(e: BaseException) -> list[BaseException]:
    out = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def _unqueued(m: KVCacheManager, policy: Faulty) -> list[int]:
    queued = set(policy.eviction_order())
    return [b for b in range(m.pool.num_blocks) if m.pool.state[b] == CACHED and b not in queued]


@pytest.mark.parametrize(("gone", "bad_tells"), [(1, 1), (1, 2), ("all", 1)])
def test_a_failed_load_whose_take_back_release_raises_leaves_every_cached_block_queued(
        core, gone, bad_tells):
    """The loads' eviction raises; the take-back's release (the run's resident blocks and
    the held tail; with 2, the GPU hits' release too: layout 1 has one) raises in
    `blocks_cached`."""
    m, policy = _paused(core, gone)
    policy.first_error, policy.bad_tells = RuntimeError("choose fault"), bad_tells
    with pytest.raises(RuntimeError, match="blocks_cached fault") as info:
        m.begin_step("x", X + [1])
    assert any(str(e) == "choose fault" for e in _chain(info.value))
    assert policy.bad_tells == 0  # (each faulty release happened)
    assert _unqueued(m, policy) == []  # was: [2, 3] (the held tail and a resident block)
    m.check_integrity()
    run_step(m, "x", X + [1])  # was: ValueError 'block 2 is not queued'
    run_step(m, "z", Z)  # was: 'named invalid victims'
    m.check_integrity()
    assert _unqueued(m, policy) == []


@pytest.mark.parametrize("gone", [1, "all"])
@pytest.mark.parametrize("first", [KeyboardInterrupt, RuntimeError])
def test_prefetch_keeps_the_first_error_when_its_closing_release_raises(core, gone, first):
    """An interrupt (or the policy's own error) in the loads' eviction, then every release's
    `blocks_cached` raising: the caller still sees the first error in the chain (layout 1:
    the closing release of the held head raises; "all": `_let_go`'s, the closing one
    releases nothing)."""
    m, policy = _paused(core, gone)
    policy.first_error, policy.bad_tells = first("first"), 2
    with pytest.raises(RuntimeError, match="blocks_cached fault") as info:
        m.prefetch("x")
    assert any(type(e) is first and str(e) == "first" for e in _chain(info.value))
    policy.bad_tells = 0
    assert _unqueued(m, policy) == []
    m.check_integrity()
    run_step(m, "x", X + [1])
    run_step(m, "z", Z)
    m.check_integrity()


def test_the_gpu_hits_release_error_stays_in_the_chain(core):
    """Layout 1 with 2 faulty tells: the loads' take-back release raises, then the GPU hits'
    release (`_drop_hits`) raises too: both errors are in the chain the caller sees, and the
    hits are freed tails first as every take-back frees (review s56 diffbegin LOW-1: the
    second was dropped without a trace)."""
    m, policy = _paused(core, 1)
    policy.first_error, policy.bad_tells = RuntimeError("choose fault"), 2
    with pytest.raises(RuntimeError) as info:
        m.begin_step("x", X + [1])
    chain = [str(e) for e in _chain(info.value)]
    assert chain.count("blocks_cached fault") == 2 and "choose fault" in chain
    assert policy.bad_tells == 0
    assert _unqueued(m, policy) == []
    m.check_integrity()
    run_step(m, "x", X + [1])
    m.check_integrity()
