"""The simulator's executor when the manager's `preempt` raises (review s57 vtier).

The manager raises either after the preempt (the session paused, its table released: a
policy hook, a cut after the release) or with nothing done (the session still running). The
scheduler keeps the request as the manager left it (`Scheduler._preempt_raised`: requeued as
a preempt's retry, or still running); the executor skipped its own bookkeeping on any raise,
so afterwards the preempted request was not a retry, its abandoned prefill and the
preemption were not counted (against the scheduler's count), and with nothing done the trace
oracle still took the running session for a waiting one."""

from __future__ import annotations

import pytest

from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.workloads import generate


def _sim(after: bool, policy: str, blocks: int, prefilling: bool):
    """A dense trace under pressure, vLLM's FCFS order (at 750 blocks lru preempts steps
    mid-prefill; at 380 belady, with its trace oracle, preempts decoding ones); the first
    preempt of a step `prefilling` or not raises: `after` True, once the manager has paused
    it (RuntimeError); False, before the manager is called (KeyboardInterrupt). Returns the
    simulator and what the victim was then."""
    sessions = generate("swe", 12, seed=1, scale=0.05, arrival_rate=1.0)
    sim = Simulator(sessions, SimConfig(num_gpu_blocks=blocks, scheduler="fcfs", policy=policy))
    seen = {}
    executor_preempt, manager_preempt = sim.preempt, sim.manager.preempt

    def preempt(req, now):
        if not seen and req.prefilling == prefilling:
            seen.update(req=req, left=req.attempt_len - req.num_computed,
                        counts=dict(sim._counts), preemptions=sim.scheduler.num_preemptions)
        return executor_preempt(req, now)

    def raising(sid, *, now=None):
        if seen and "raised" not in seen:
            seen["raised"] = True
            if not after:
                raise KeyboardInterrupt
            manager_preempt(sid, now=now)
            raise RuntimeError("a policy hook failed after the preempt")
        return manager_preempt(sid, now=now)

    sim.preempt, sim.manager.preempt = preempt, raising
    err = RuntimeError if after else KeyboardInterrupt
    with pytest.raises(err):
        sim.run()
    assert seen.get("raised"), "the trace must preempt such a step"
    return sim, seen


def _booked(sim, seen) -> None:
    """The victim is a preempt's retry, for the scheduler and the executor alike."""
    req, sid = seen["req"], seen["req"].session.id
    assert not sim.manager.sessions[sid].is_running and req in sim.scheduler.waiting
    assert sim.scheduler.num_preemptions == seen["preemptions"] + 1
    assert sim._counts["preemptions"] == seen["counts"]["preemptions"] + 1
    assert sim._counts["abandoned"] == seen["counts"]["abandoned"] + seen["left"]
    assert req.retried and req.slots_ahead == 0
    sim.manager.check_integrity()


def test_a_prefill_preempt_raising_after_the_manager_paused_is_booked():
    """Its prefill not computed is abandoned, as at any preemption (the retry's recompute
    is counted as after a preemption: `retried`)."""
    sim, seen = _sim(True, "lru", 750, prefilling=True)
    assert seen["left"] > 0
    _booked(sim, seen)


def test_a_decode_preempt_raising_after_the_manager_paused_is_booked_and_told():
    sim, seen = _sim(True, "belady", 380, prefilling=False)
    _booked(sim, seen)
    assert sim.oracle.is_waiting(seen["req"].session.id)


def test_a_preempt_raising_before_the_manager_leaves_the_step_running():
    """Nothing done: nothing booked, and the oracle has the session running again, as the
    manager does (it was told `preempted` first, for the release's hooks)."""
    sim, seen = _sim(False, "belady", 380, prefilling=False)
    req, sid = seen["req"], seen["req"].session.id
    assert sim.manager.sessions[sid].is_running and req in sim.scheduler.running
    assert sim.scheduler.num_preemptions == seen["preemptions"]
    assert sim._counts == seen["counts"] and not req.retried
    assert not sim.oracle.is_waiting(sid)
    sim.manager.check_integrity()
