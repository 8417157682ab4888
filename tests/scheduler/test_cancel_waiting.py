"""A step cancelled before it runs (the engine's abort of a waiting request: no
`finish_step`, then `finish(ended=False)`) teaches the workflow scheduler nothing and leaves
its session paused as before the step queued; one cancelled with its session
(`finish(ended=True)`: the engine's abort of a queued one-shot or last step) teaches nothing
either and leaves nothing of the session; and a session that leaves by any path (the
manager dropped it before a `finish`, or it ended behind the scheduler's back and `_demote`
forgets it) leaves no per-session state behind."""

from __future__ import annotations

import pytest

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, aborting
from tests.scheduler.helpers import manager, plain, toks, wf


def _paused_after_two_steps(charge):
    """Session A ran two steps (8-token replies) and is paused: (scheduler, A's last
    finished context)."""
    m = manager(64)
    s = wf(m, prior_growth_tokens=24, reserve_decode_tokens=0, paused_growth=False,
           growth_charge=charge)
    ex = ToyExecutor(m)
    s.add(ToyRequest("A", toks(0, 40), max_new=8, last=False), 0.0)
    for _ in range(20):
        ex.run(s, s.schedule(0.0, ex), 0.0)
    a2 = ToyRequest("A", toks(0, 48) + toks(900, 10), max_new=8, last=False, resumed=True,
                    arrival=1.0)
    s.add(a2, 1.0)
    for _ in range(20):
        ex.run(s, s.schedule(1.0, ex), 1.0)
    return s, a2.num_tokens


def _learned(s):
    """What the scheduler learns from finished steps."""
    return plain((s._reply, s._growth, s._cycles, s._last_finish, s._steps_seen))


def _record(s, sid):
    i = s.sessions[sid]
    return (i.context, i.steps, i.last_context, i.active, i.on_prompt, i.blocks, i.var,
            i.extra, i.demote_at, s._committed, s._committed_var, s._paused_extra,
            dict(s._tenant_blocks))


@pytest.mark.parametrize("charge", ["step", "once", "remaining", "prompt"])
def test_cancelled_waiting_step_learns_nothing_and_restores_the_pause(charge):
    s, last = _paused_after_two_steps(charge)
    before, learned = _record(s, "A"), _learned(s)
    assert s.sessions["A"].context == last and not s.sessions["A"].active
    # the next step queues (a 30-token observation in its prompt), then is cancelled
    a3 = ToyRequest("A", toks(0, 48) + toks(900, 10) + toks(0, 8) + toks(700, 30),
                    max_new=8, last=False, resumed=True, arrival=2.0)
    s.add(a3, 2.0)
    assert s.sessions["A"].active
    s.finish(a3, 2.5, ended=False)
    assert s.num_waiting == 0 and not s.running
    assert _record(s, "A") == before  # context, step count, charge: as before it queued
    assert _learned(s) == learned  # no 0-token reply, no growth, no step, no cycle
    assert s._committed == sum(i.blocks for i in s.sessions.values())


def test_cancelled_preempted_step_pauses_the_session():
    """A step preempted back to the queue, then cancelled there (the engine sees it waiting:
    no `finish_step`) is not learned either: the session pauses at its last finish's
    context, with a demotion deadline again."""
    s, last = _paused_after_two_steps("step")
    learned = _learned(s)
    a3 = ToyRequest("A", toks(0, 48) + toks(900, 10) + toks(0, 8) + toks(700, 30),
                    max_new=8, last=False, resumed=True, arrival=2.0)
    s.add(a3, 2.0)
    ex = ToyExecutor(s.manager)
    ex.run(s, s.schedule(2.0, ex), 2.0)
    assert a3 in s.running
    s.running.remove(a3)  # as `_allocate`'s preemption does
    ex.preempt(a3, 2.1)
    s._enqueue(a3, 2.1, retry=True)
    s.finish(a3, 2.5, ended=False)
    i = s.sessions["A"]
    assert (i.context, i.steps, i.active, i.on_prompt) == (last, 2, False, False)
    assert i.demote_at < float("inf") and s._demote_at <= i.demote_at
    assert _learned(s) == learned
    assert s._committed == sum(i.blocks for i in s.sessions.values())


def _lengths_learned(s):
    """What the scheduler learns from sessions' ends: their lengths (the "predicted" and
    "gittins" orders'), step cycles and times less waits (the tail guard's)."""
    return plain((s._lengths, s._length_model, s._cycles, s._budgets._served))


def test_a_one_shot_cancelled_while_waiting_is_no_finished_session():
    """Five one-shot sessions of w queue behind a full pool, and their clients give up
    (the engine's abort: `finish(ended=True)`, nothing begun). Each was learned as a
    finished 1-step session: w's predicted remaining steps fell from 10 (the prior) to
    2.5, moving w's sessions ahead in the "predicted" order."""
    m = manager(16)
    s = wf(m, admission_order="predicted")
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 40), max_new=1, last=False, workflow="w"), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    learned = _lengths_learned(s)
    for i in range(5):
        x = ToyRequest(f"x{i}", toks(1000 * (i + 1), 30), max_new=1, workflow="w",
                       arrival=1.0)
        s.add(x, 1.0)
        assert not s.schedule(1.0, ex).admitted
        assert s.finish(x, 2.0, ended=True) is False
        assert _per_session(s, f"x{i}") == []
    assert _lengths_learned(s) == learned
    assert s._lengths.remaining("w", 0, 10.0) == 10.0


def test_a_last_step_cancelled_while_waiting_teaches_nothing():
    """Session a ran one step; its last step queues and is aborted before it runs (the
    manager ends the session). It was learned as a 2-step session with a cycle of 9 s."""
    m = manager(16)
    s = wf(m, admission_order="predicted")
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 40), max_new=1, last=False, workflow="w")
    s.add(a, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    learned = _lengths_learned(s)
    a2 = ToyRequest("a", a.prompt + a.out + [5, 6], max_new=1, last=True, workflow="w",
                    resumed=True, arrival=3.0)
    s.add(a2, 3.0)
    m.end_session("a", now=9.0)
    assert s.finish(a2, 9.0, ended=True) is False
    assert _lengths_learned(s) == learned
    assert _per_session(s, "a") == [] and s._committed == 0


def _per_session(s, sid):
    """The per-session dicts that still name `sid`."""
    held = {"sessions": s.sessions, "_last_finish": s._last_finish,
            "_steps_seen": s._steps_seen, "_started": s._started,
            "_times_demoted": s._times_demoted, "_deferred": s._deferred,
            "_undoable": s._undoable, "_returns_seen": s._returns_seen,
            "budgets._start": s._budgets._start, "budgets._waited": s._budgets._waited}
    return sorted(k for k, d in held.items() if sid in d)


def _two_paused():
    m = manager(64)
    s = wf(m, readmit_charge="cost_leave", paused_growth=False, demote_min_s=0.0,
           demote_factor=0.0)
    ex = ToyExecutor(m)
    for sid, base in (("A", 0), ("B", 1000)):
        s.add(ToyRequest(sid, toks(base, 20), max_new=2, last=False), 0.0)
    for _ in range(5):
        ex.run(s, s.schedule(0.0, ex), 0.0)
    assert _per_session(s, "A") and _per_session(s, "B")
    return m, s


def test_session_ended_behind_the_schedulers_back_leaves_nothing():
    m, s = _two_paused()
    m.end_session("A", now=1.0)
    s._demote(5.0)
    assert _per_session(s, "A") == []


def test_finish_after_the_manager_dropped_the_session_leaves_nothing():
    m, s = _two_paused()
    b2 = ToyRequest("B", toks(1000, 22) + toks(50, 3), max_new=2, last=False, resumed=True,
                    arrival=6.0)
    s.add(b2, 6.0)
    m.end_session("B", now=6.5)
    s.finish(b2, 6.5, ended=False)
    assert _per_session(s, "B") == []
    assert s._committed == sum(i.blocks for i in s.sessions.values())


# The scheduler state machine with aborts of waiting steps, under each growth charge: the
# books (`DemotingMachine.books`) and the manager's integrity hold after every rule, an
# aborted step's session is paused as at its last finish, and nothing stays of one that left.
for _charge in ("step", "once", "prompt"):
    globals()[f"TestAbortWaiting_{_charge}"] = aborting(
        "lru", {**DEMOTING, "growth_charge": _charge})
