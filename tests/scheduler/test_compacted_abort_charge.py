"""A preempted compacted step aborted while its retry waits is charged the context its
session holds, not the old, pre-compaction one (review s56 diffcompact2 LOW-1), and under
`growth_charge` "once" the retry is charged as under "step" (its last finish's context is
not one it holds).

`_preempted_charge` lowers the charge to the retry's context at the preempt (the manager's
preempt disowned the old context's blocks: tests/scheduler/test_compacted_preempt_charge.py).
The abort (the engine's: manager `resume_withdrawn`, then `Scheduler.finish`, not run) went
through `WorkingSetGate._unqueue`, which put back `last_context`, the old context: 41 tokens
(12 blocks) where the session holds 29, and the session's next step was charged that while
it ran (`_admitted`'s max). Both cores."""

from __future__ import annotations

import pytest

import tests.scheduler.test_compacted_preempt_charge as harness
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import toks, wf


def _aborted(core):
    """The harness's preempted compacted step (a: 41 tokens finished, its compacted step
    preempted at 29 tokens), aborted while its retry waits."""
    m, s, ex, a2, _, t = harness._preempted_compaction(core)
    assert (s.sessions["a"].context, s.sessions["a"].last_context) == (29, 41)
    m.resume_withdrawn("a", now=t)
    assert s.finish(a2, t) is False
    return m, s, ex, t


def test_the_aborted_retry_is_charged_the_context_the_session_holds(core):
    m, s, _, _ = _aborted(core)
    info = s.sessions["a"]
    held = len(m.session("a").token_ids)
    assert held == 29
    assert (info.context, info.last_context, info.blocks) == (29, 29, 9)  # was 41, 41, 12
    assert not info.active
    assert s._committed == sum(i.blocks for i in s.sessions.values())
    m.check_integrity()


def test_the_next_step_is_charged_its_own_prompt(core):
    """The session's next step extends the 29 tokens it holds by 4: charged that 33-token
    prompt while it runs (was the old 41), and it finishes on its context."""
    m, s, ex, t = _aborted(core)
    a3 = ToyRequest("a", list(m.session("a").token_ids) + toks(7000, 4), max_new=4,
                    last=False, resumed=True, arrival=t)
    s.add(a3, t)
    for _ in range(100):
        out = s.schedule(t, ex)
        ex.run(s, out, t)
        if a3 in out.admitted:
            assert s.sessions["a"].context == 33 == len(a3.prompt)
        t = round(t + 0.1, 6)
        if len(a3.out) == a3.max_new:
            break
    assert len(a3.out) == a3.max_new
    assert s.sessions["a"].context == s.sessions["a"].last_context == 37
    m.check_integrity()


def test_an_ordinary_aborted_retry_goes_back_to_its_last_finish(core):
    """Not compacted: a preempted step's retry aborted is charged its last finish's context,
    as before (its manager context is that, less the last sampled token the toy executor
    does not append)."""
    from tests.scheduler.helpers import manager
    m = manager(8, policy="lru", core=core.name)
    s = wf(m, overcommit=4.0, prior_growth_tokens=0, reserve_decode_tokens=0)
    ex = ToyExecutor(m)
    s.add(ToyRequest("b", toks(100, 6), max_new=2, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    ex.run(s, s.schedule(0.1, ex), 0.1, tool_s=50.0)
    assert s.sessions["b"].last_context == 8
    a = ToyRequest("a", toks(0, 8), max_new=16)
    b2 = ToyRequest("b", list(m.session("b").token_ids) + toks(200, 4), max_new=16,
                    last=False, resumed=True, arrival=0.2)
    s.add(a, 0.2)
    ex.run(s, s.schedule(0.2, ex), 0.2)
    s.add(b2, 0.3)  # admitted after a: the newest, preempted first
    t, preempted = 0.3, False
    for _ in range(40):
        out = s.schedule(t, ex)
        ex.run(s, out, t)
        t = round(t + 0.1, 6)
        if b2 in out.preempted:
            preempted = True
            break
    assert preempted
    m.resume_withdrawn("b", now=t)
    assert s.finish(b2, t) is False
    assert s.sessions["b"].context == s.sessions["b"].last_context == 8
    m.check_integrity()


@pytest.mark.parametrize("growth_charge", ["step", "once"])
def test_the_retry_under_growth_charge_once_is_charged_as_under_step(core, monkeypatch,
                                                                     growth_charge):
    """"once" charges a step on its prompt max(prompt, last finish's context + growth):
    for the compacted retry (29 tokens, below its last finish's 41) that is the old context
    its preempt disowned. It is charged as under "step" now: 29 + the 4-token prior, 9
    blocks (was 12 under "once")."""
    monkeypatch.setattr(harness, "wf", lambda m, **kw: wf(m, growth_charge=growth_charge, **kw))
    m, s, _, a2, _, _ = harness._preempted_compaction(core)
    assert a2.num_tokens == 29
    assert (s.sessions["a"].context, s.sessions["a"].blocks) == (29, 9)
    m.check_integrity()
