"""Regression (session 35, fuzz lane): a bad `now` given to a manager call is refused with an
InvalidRequest naming it, before anything changes.

The failing sequence found: begin_step("a", 9 tokens); allocate_slots("a", 9);
finish_step("a", now="x") under the graph, saga or adaptive policy: the session was marked
paused, then the policy's step_finished raised a TypeError, and the step's references were
never released (check_integrity: "block 0: refcount 1 but 0 running tables hold it").
begin_step(now="x") under lru or ttl left the session running with its hits referenced;
NaN and infinite times were taken silently by every call but `tick`, which refused them.
"""

from __future__ import annotations

import math

import pytest

from kvsaga import InvalidRequest, KVCacheManager, KVSpec
from kvsaga.policy import POLICIES
from tests.policy.helpers import build
from tests.test_core_parity import sessions_state

BAD_TIMES = ["x", math.nan, math.inf, -math.inf, [1.0], True]


def _manager(policy: str, core: str) -> KVCacheManager:
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 12, clock=lambda: 0.0,
                       policy=build(policy), core=core, num_host_blocks=4)
    m.begin_step("a", list(range(9)), now=0.0)
    m.allocate_slots("a", 9, now=0.0)
    m.finish_step("a", now=1.0)  # a paused: 2 full blocks and its tail cached
    m.begin_step("b", list(range(9)), now=1.0)  # b running on a's full blocks
    return m


def _snapshot(m: KVCacheManager):
    return (m.stats(), list(m.pool.refcount), list(m.pool.state), m.cache_version,
            sessions_state(m))


CALLS = {
    "begin_step": lambda m, t: m.begin_step("a", list(range(12)), now=t),
    "allocate_slots": lambda m, t: m.allocate_slots("b", 1, now=t),
    "decode_step": lambda m, t: m.decode_step(["b"], [1], now=t),
    "finish_step": lambda m, t: m.finish_step("b", now=t, tool="grep"),
    "finish_step_last": lambda m, t: m.finish_step("b", now=t, last_step=True),
    "pause_hint": lambda m, t: m.pause_hint("a", now=t, tool="grep"),
    "resume_hint": lambda m, t: m.resume_hint("a", now=t),
    "resume_withdrawn": lambda m, t: m.resume_withdrawn("a", now=t),
    "preempt": lambda m, t: m.preempt("b", now=t),
    "end_session": lambda m, t: m.end_session("a", now=t),
    "prefetch": lambda m, t: m.prefetch("a", now=t),
    "tick": lambda m, t: m.tick(t),
}


def test_finish_step_with_a_str_time_leaks_nothing(core):
    """The sequence the fuzzing found, as it was: graph's step_finished read the time."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 12, clock=lambda: 0.0,
                       policy=build("graph"), core=core.name)
    m.begin_step("a", list(range(9)), now=0.0)
    m.allocate_slots("a", 9, now=0.0)
    with pytest.raises(InvalidRequest, match=r"now must be a finite number of seconds, got 'x'"):
        m.finish_step("a", now="x")
    assert m.sessions["a"].is_running
    m.check_integrity()
    m.finish_step("a", now=1.0)  # the step still closes
    m.check_integrity()
    assert m.stats().num_used_blocks == 0


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("call", sorted(CALLS))
def test_bad_time_changes_nothing(policy, call, core):
    for bad in BAD_TIMES:
        m = _manager(policy, core.name)
        before = _snapshot(m)
        with pytest.raises(InvalidRequest, match=r"^now must be a finite number of seconds"):
            CALLS[call](m, bad)
        assert _snapshot(m) == before, (call, bad)
        m.check_integrity()


def test_good_times_still_pass(core):
    """ints and floats are times; None reads the clock."""
    for t in (2, 2.5, None):
        m = _manager("lru", core.name)
        for call in ("allocate_slots", "decode_step", "preempt", "resume_hint",
                     "resume_withdrawn", "prefetch", "end_session", "tick"):
            CALLS[call](m, t)
        m.check_integrity()


@pytest.mark.parametrize("bad", [-1, "2", 1.0, True])
def test_prefetch_max_blocks_checked(bad):
    m = _manager("lru", "python")
    before = _snapshot(m)
    with pytest.raises(InvalidRequest, match=r"max_blocks must be an int >= 0 or None"):
        m.prefetch("a", now=2.0, max_blocks=bad)
    assert _snapshot(m) == before
