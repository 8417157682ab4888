"""An absurd finite time (a `now` near the float maximum) is refused by every manager call
that takes one, with an InvalidRequest naming `now`, before anything changes. It was taken:
the indexed policies' elapsed-time grid (kvsaga/policy/grid.py, csrc/elapsed_grid.h) then
overflowed, and allocate_slots raised OverflowError for ttl, graph and saga instead of
evicting. Times within +-1e15 s (`MAX_TIME_S`, about 31 million years) still work, their
elapsed times inside the grid's points, for every policy."""

from __future__ import annotations

import pytest

from kvsaga import InvalidRequest, KVCacheManager, KVSpec
from kvsaga._validate import MAX_TIME_S, check_time
from kvsaga.policy import POLICIES
from tests.policy.helpers import BS, build, make, run_step, tokens
from tests.test_bad_time import CALLS, _manager, _snapshot

HUGE = [1.7e308, -1.7e308, 1e16, -2e15, 10**400, 10**16]


def test_check_time_bounds():
    for t in (MAX_TIME_S, -MAX_TIME_S, 0, 2.5, 10**15):
        assert check_time("now", t) == t
    for t in HUGE:
        with pytest.raises(ValueError, match=r"^now must be a number of seconds within "
                                             r"-1e\+15\.\.1e\+15"):
            check_time("now", t)


@pytest.mark.parametrize("name", ["ttl", "graph", "saga"])
def test_a_huge_time_is_refused_and_changes_nothing(name):
    """huge_time.py, the review's repro: the pool full of a's blocks, b's allocation at
    now=1.7e308 raised OverflowError (b left running); now begin_step refuses the time."""
    m = make(name, num_blocks=8)
    run_step(m, "a", tokens(0, 32), now=0.0, tool="t")  # 8 cached blocks, pool full
    with pytest.raises(InvalidRequest, match="^now must be a number of seconds within"):
        m.begin_step("b", tokens(1000, 8), now=1.7e308)
    assert "b" not in m.sessions
    st = m.begin_step("b", tokens(1000, 8), now=1.0)
    before = _snapshot(m)
    with pytest.raises(InvalidRequest, match="^now must be a number of seconds within"):
        m.allocate_slots("b", 8 - st.num_cached_tokens, now=1.7e308)
    assert _snapshot(m) == before
    m.allocate_slots("b", 8 - st.num_cached_tokens, now=2.0)  # evicts a's: works
    m.check_integrity()
    m.policy.check_integrity()


@pytest.mark.parametrize("call", sorted(CALLS))
def test_every_call_refuses_a_huge_time_and_changes_nothing(call, core):
    for policy in ("lru", "ttl", "graph", "saga", "adaptive"):
        for bad in HUGE:
            m = _manager(policy, core.name)
            before = _snapshot(m)
            with pytest.raises(InvalidRequest, match=r"^now must be a number of seconds "):
                CALLS[call](m, bad)
            assert _snapshot(m) == before, (call, bad)
            m.check_integrity()


def test_a_huge_clock_is_refused_where_allocate_slots_evicts():
    """allocate_slots and decode_step with now=None read the clock when they must evict:
    a clock past the bound is refused there too, before anything changes (each core:
    conftest.py)."""
    t = [0.0]
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=BS), 8, policy="graph", clock=lambda: t[0])
    run_step(m, "a", tokens(0, 32), now=0.0, tool="t")  # the pool full of a's blocks
    st = m.begin_step("b", tokens(1000, 8), now=1.0)
    for clock, call in ((1.7e308, lambda: m.allocate_slots("b", 8 - st.num_cached_tokens)),
                        (-1e16, lambda: m.decode_step(["b"], [7]))):  # a 3rd block: evicts
        t[0] = clock
        before = _snapshot(m)
        with pytest.raises(InvalidRequest, match="^now must be a number of seconds within"):
            call()
        assert _snapshot(m) == before
        t[0] = 2.0
        call()
        m.check_integrity()
    assert m.stats().num_evicted_blocks == 3


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_times_at_the_bounds_still_evict(name):
    """A session paused at -1e15 s and a step at +1e15 s: an elapsed 2e15 s, evicting."""
    m = make(build(name), num_blocks=8)
    run_step(m, "a", tokens(0, 24), now=-MAX_TIME_S, tool="t", expected_s=5.0)  # 6 blocks
    run_step(m, "b", tokens(1000, 12), now=MAX_TIME_S, tool="t")  # needs 3: evicts 1
    m.tick(MAX_TIME_S)
    run_step(m, "a", tokens(0, 25), now=MAX_TIME_S, tool="t")  # needs 7: evicts again
    assert m.stats().num_evicted_blocks >= 2
    m.check_integrity()
    check = getattr(m.policy, "check_integrity", None)
    if check is not None:
        check()
