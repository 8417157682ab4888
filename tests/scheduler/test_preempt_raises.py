"""A preempt that raises loses no request (review s56 diffcompact2, "not new").

`Scheduler._allocate` popped the victim from `running` before `executor.preempt`; when that
raised, the request was in neither `running` nor the waiting queues and never ran again.
The manager's `preempt` raises either with nothing done (the session still running) or after
the preempt (the session paused, its table released: here a raising pool hook
`blocks_cached`, as kvsaga/manager_signals.py `_release_table` completes the release and
propagates). The scheduler now keeps the request as the manager left it: requeued as a
preempt's retry, or still running. Both cores, the fcfs and workflow schedulers."""

from __future__ import annotations

import pytest

from kvsaga import KVCacheManager, KVSpec
from kvsaga.manager import SessionState
from kvsaga.scheduler import make_scheduler
from tests.policy_hooks import CachedFails
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import toks, wf


class _RaisingPreempt(ToyExecutor):
    """The first preempt raises: `after` True, from the policy's `blocks_cached` inside the
    manager's release (the preempt done); False, before the manager is called (nothing
    done: as an interrupt before the call)."""

    def __init__(self, m, after: bool) -> None:
        super().__init__(m)
        self.after, self.armed = after, True

    def preempt(self, req, now):
        if not self.armed:
            return super().preempt(req, now)
        self.armed = False
        if not self.after:
            raise KeyboardInterrupt
        self.m.policy.fail = True
        try:
            super().preempt(req, now)
        finally:
            self.m.policy.fail = False


def _setup(core, scheduler, after):
    """a and b (8-token prompts, 16 tokens each to decode) on an 8-block pool of 4 tokens:
    both admitted, they outgrow the pool and b, the newer, is preempted; the preempt raises.
    Returns (manager, scheduler, executor, a, b, time of the next call)."""
    m = KVCacheManager(KVSpec(1, 1, 4, block_size=4), 8, policy=CachedFails(),
                       clock=lambda: 0.0, core=core.name)
    if scheduler == "fcfs":
        s = make_scheduler("fcfs", m, max_num_seqs=4, max_num_batched_tokens=64)
    else:
        s = wf(m, overcommit=4.0, prior_growth_tokens=0, reserve_decode_tokens=0)
    ex = _RaisingPreempt(m, after)
    a = ToyRequest("a", toks(0, 8), max_new=16)
    b = ToyRequest("b", toks(100, 8), max_new=16, arrival=0.0)
    s.add(a, 0.0)
    s.add(b, 0.0)
    t = 0.0
    err = KeyboardInterrupt if not after else RuntimeError
    for _ in range(40):
        try:
            ex.run(s, s.schedule(t, ex), t)
        except err:
            return m, s, ex, a, b, round(t + 0.1, 6)
        t = round(t + 0.1, 6)
    raise AssertionError("no preempt")


def _drive_to_end(m, s, ex, t, reqs):
    for _ in range(200):
        if not s.has_work:
            break
        ex.run(s, s.schedule(t, ex), t)
        m.check_integrity()
        t = round(t + 0.1, 6)
    assert not s.has_work, "a request was lost"
    assert all(len(r.out) == r.max_new for r in reqs)
    assert not m.sessions and m.stats().num_used_blocks == 0


@pytest.mark.parametrize("scheduler", ["fcfs", "workflow"])
def test_a_preempt_raising_after_the_manager_paused_requeues_the_step(core, scheduler):
    """b's session is paused (the release done, the hook's error propagated): b waits as a
    preempt's retry (was: in neither list), is counted, and runs to its end later."""
    m, s, ex, a, b, t = _setup(core, scheduler, after=True)
    assert m.session("b").state is SessionState.PAUSED
    assert b not in s.running and b in s.waiting
    assert a in s.running and s.num_preemptions == 1
    m.check_integrity()
    _drive_to_end(m, s, ex, t, [a, b])


@pytest.mark.parametrize("scheduler", ["fcfs", "workflow"])
def test_a_preempt_raising_before_the_manager_keeps_the_step_running(core, scheduler):
    """Nothing done (b's session still running): b stays the last running request, not
    counted as preempted (was: dropped from `running`, its session running for ever); the
    next call preempts it and both finish."""
    m, s, ex, a, b, t = _setup(core, scheduler, after=False)
    assert m.session("b").state is SessionState.RUNNING
    assert s.running[-1] is b and b not in s.waiting and s.num_preemptions == 0
    _drive_to_end(m, s, ex, t, [a, b])
    assert ("preempt", "b") in ex.log
