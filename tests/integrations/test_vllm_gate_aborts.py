"""SessionGate regressions from the review of the gate (session 45): a request aborted before
vLLM allocated it restarts nothing (the idle clock, a deferred session's wait, the workflow's
pause log); a step preempted and then aborted teaches nothing; `admit` reports the sessions it
demoted. Plain Python, driven as the connector drives it."""

from __future__ import annotations

import pytest

from kvsaga.integrations.vllm import gate_waits
from kvsaga.integrations.vllm.gate import SessionGate

BS = 16


def _held(**kw) -> SessionGate:
    """A 20-block gate where A (15 blocks, paused on a tool hinted 600 s) leaves no room for a
    10-block session: only the idle rule or max_wait_s let one in."""
    g = SessionGate(20, BS, **{"room_admit": False, "reserve_wait_factor": None, **kw})
    assert g.admit("A", "w", 15 * BS, 0, now=0.0)
    g.started("a0", "A")
    g.finished("a0", "A", 15 * BS, 1.0, 600.0, False)
    return g


# -- aborts of requests that never ran ---------------------------------------------------------

def test_aborts_of_requests_that_never_ran_do_not_restart_the_idle_clock():
    """Nothing has run since A's step ended at 1.0 s. W's client resends its deferred request
    every second and another request is aborted in vLLM's queue meanwhile: each abort set the
    idle clock to its own time, so W never got in by `idle_admit_s` (nor by anything else
    until max_wait_s)."""
    g = _held(idle_admit_s=5.0, max_wait_s=1e9)
    for k in range(4):
        t = 2.0 + k
        assert not g.admit("W", "w", 10 * BS, 0, now=t)
        g.finished(f"w{k}", "W", 10 * BS, t + 0.5, None, False)  # W's client gives up
        g.finished(f"x{k}", None, 10, t + 0.5, None, False)  # some other queued request
    assert g.admit("W", "w", 10 * BS, 0, now=6.0)  # idle since 1.0 s: 5 s
    assert g.admitted_by == {"idle": 1}


def test_a_resent_deferred_session_keeps_its_first_deferral_for_max_wait():
    """W's client times out after 3 s and resends: each abort ended W's wait and the resend
    started a new one, so max_wait_s (10 s) never ran out."""
    g = _held(idle_admit_s=1e9, max_wait_s=10.0)
    g.started("busy")  # another request runs: never idle
    assert not g.admit("W", "w", 10 * BS, 0, now=2.0)  # its first deferral
    for k in range(3):
        g.finished(f"w{k}", "W", 10 * BS, 4.9 + 3 * k, None, False)  # timed out
        assert g.order.waiting == {} and g._waiting_since == {}  # holds no one back meanwhile
        assert not g.admit("W", "w", 10 * BS, 0, now=5.0 + 3 * k)  # resent: 3, 6, 9 s
    assert g.admit("W", "w", 10 * BS, 0, now=12.0)  # 10 s since its first deferral
    assert g.admitted_by == {"max_wait": 1} and g.wait_s == pytest.approx(10.0)


def test_resends_of_a_deferred_session_are_not_learned_as_tool_pauses():
    """Each abort of W's waiting request started a "pause" and the resend's probe learned it:
    40 resends drove the workflow's observed pauses to ~0 s, its expiry limit (their 0.8
    quantile, 10 s) to 0.49 s, and A, paused unhinted for 3 s, expired."""
    g = SessionGate(100, BS, room_admit=False, reserve_wait_factor=None, idle_admit_s=1e9,
                    max_wait_s=1e9)
    t = 0.0
    for i in range(8):  # eight sessions, each a step, a 10 s tool pause and a last step
        sid = f"B{i}"
        assert g.admit(sid, "w", 4 * BS, 0, now=t)
        g.started(f"{sid}a", sid)
        g.finished(f"{sid}a", sid, 4 * BS, t + 0.1, None, False)
        assert g.admit(sid, "w", 5 * BS, 0, now=t + 10.1)
        g.started(f"{sid}b", sid)
        g.finished(f"{sid}b", sid, 5 * BS, t + 10.2, None, True)
        t += 11
    assert g.pause_limit("w") == pytest.approx(10.0)
    g.started("busy")
    assert g.admit("A", "w", 60 * BS, 0, now=t)
    g.started("a0", "A")
    for k in range(40):  # W deferred, aborted and resent every 0.5 s
        assert not g.admit("W", "w", 60 * BS, 0, now=t + 0.01)
        g.finished(f"w{k}", "W", 60 * BS, t + 0.02, None, False)
        t += 0.5
    g.finished("a0", "A", 60 * BS, t, None, False)  # A pauses, unhinted
    assert len(g.pauses.observed["w"]) == 8 and g.pause_limit("w") == pytest.approx(10.0)
    assert g.expire(t + 3.0) == [] and "A" in g.sessions


def test_the_waits_kept_for_resends_are_bounded(monkeypatch):
    """A client that gives up and never resends leaves its first deferral behind: the latest
    WITHDRAWN_WAITS_TRACKED are kept, and a session that ends leaves nothing."""
    monkeypatch.setattr(gate_waits, "WITHDRAWN_WAITS_TRACKED", 3)
    g = _held(idle_admit_s=1e9, max_wait_s=1e9)
    g.started("busy")
    for i in range(5):
        assert not g.admit(f"W{i}", "w", 10 * BS, 0, now=2.0 + i)
        g.finished(f"w{i}", f"W{i}", 10 * BS, 2.5 + i, None, False)
    assert g._withdrawn_waits == {"W2": 4.0, "W3": 5.0, "W4": 6.0}
    g.forget("W3")
    assert list(g._withdrawn_waits) == ["W2", "W4"]


# -- a step allocated, preempted, then aborted -------------------------------------------------

def test_a_withdrawn_step_learns_nothing_and_restores_the_pause():
    """vLLM preempted a's second step (freeing its blocks) and the client aborted it while it
    was requeued: the gate counted it as a completed step, learned growth from the aborted
    partial output and took that as a's context."""
    g = SessionGate(100, BS, prior_growth_tokens=16, horizon_steps=1.0, idle_admit_s=1e9)
    assert g.admit("a", "w", 10 * BS, 0, now=0.0)
    g.started("a0", "a")
    g.finished("a0", "a", 12 * BS, 1.0, 7.0, False)  # paused at 12 blocks, hinted 7 s
    a = g.sessions["a"]
    before = (a.context, a.paused_at, a.expected_s, a.last_finish)
    learned = (g._growth.mean("w"), g._growth.replies.mean("w"), g.order.done["a"])
    assert g.admit("a", "w", 14 * BS, 0, now=2.0)
    g.started("a1", "a")  # allocated; then preempted, then aborted
    assert g.finished("a1", "a", 40 * BS, 3.0, None, False, withdrawn=True) == []
    assert (a.context, a.paused_at, a.expected_s, a.last_finish) == before
    assert (g._growth.mean("w"), g._growth.replies.mean("w"), g.order.done["a"]) == learned
    assert g.num_in_flight == 0 and g._idle_since == 3.0  # it ran: the batch is idle now


def test_a_withdrawn_first_step_leaves_no_session():
    g = SessionGate(100, BS, idle_admit_s=1e9)
    assert g.admit("b", "w", 60 * BS, 0, now=0.0)
    g.started("b0", "b")
    assert g.finished("b0", "b", 70 * BS, 1.0, None, False, withdrawn=True) == []
    assert g.sessions == {} and g.committed() == 0 and g.order.done["b"] == ("w", 0)


# -- demotions made to let a waiting session in ------------------------------------------------

def test_admit_reports_the_overdue_sessions_it_demoted():
    """`_fits` demotes paused sessions past their deadline to let a new one in, but `admit`
    said only yes or no: the connector never released their blocks."""
    g = SessionGate(20, BS, prior_growth_tokens=16, horizon_steps=1.0, demote_factor=1.0,
                    demote_min_s=1.0, idle_admit_s=1e9, room_admit=False)
    for sid, t, hint in (("a", 0.0, 1.0), ("b", 1.0, 100.0)):
        assert g.admit(sid, "w", 8 * BS, 0, now=t)
        g.started(f"{sid}0", sid)
        g.finished(f"{sid}0", sid, 8 * BS, t + 0.5, hint, False)
        assert g.last_demoted == []
    assert g.admit("c", "w", 8 * BS, 0, now=5.0)  # a is past 1 x 1 s + 1 s: demoted for c
    assert g.last_demoted == ["a"] and set(g.sessions) == {"b", "c"}
    assert g.admit("b", "w", 9 * BS, 0, now=6.0) and g.last_demoted == []  # the next call's


def test_a_riding_step_whose_last_request_is_withdrawn_leaves_no_step_context():
    """Review s51 (vgate): an unadmitted session's step rode along as two requests (vLLM's
    n = 2); the first finished (its context kept for the step's end), the second was
    preempted and aborted (withdrawn). No request of the step is left, so nothing of it may
    stay behind: the context was kept for good, one entry per such session."""
    g = _held(idle_admit_s=1e9, max_wait_s=1e9)
    assert not g.admit("B", "w", 10 * BS, 0, now=1.5)
    g.rode_along("B", 1.5)
    g.started("b1", "B")
    g.started("b2", "B")
    assert g.finished("b1", "B", 12 * BS, 2.0, None, False) == []
    assert g._step_context == {"B": 12 * BS}  # the step goes on: b2 runs
    assert g.finished("b2", "B", 11 * BS, 2.5, None, False, withdrawn=True) == []
    assert g._step_context == {} and "B" not in g._flights and g.num_in_flight == 0


# -- a multi-request step whose last request is withdrawn (review s51 vgate LOW 5) ----------------

def _admitted_step_of_two(last_withdrawn: bool) -> SessionGate:
    """Admitted session B completes a step, is admitted again and runs its next step as two
    requests (vLLM's n = 2), driven as the connector drives the gate: the first finishes at
    20 blocks of context, the second is preempted and then aborted while requeued
    (`withdrawn`), or (the control) finishes too, with a shorter context."""
    g = SessionGate(100, BS, room_admit=False, reserve_wait_factor=None, idle_admit_s=1e9,
                    max_wait_s=1e9)
    assert g.admit("B", "w", 10 * BS, 0, now=0.0)
    g.started("b0", "B")
    g.finished("b0", "B", 12 * BS, 1.0, 5.0, False)
    g.started("other")  # (something else runs throughout)
    assert g.admit("B", "w", 14 * BS, 0, now=3.0)
    g.started("b1", "B")
    g.started("b2", "B")
    assert g.finished("b1", "B", 20 * BS, 4.0, 2.0, False) == []
    g.finished("b2", "B", 17 * BS, 4.5, 2.0, False, withdrawn=last_withdrawn)
    return g


def _state(g: SessionGate) -> tuple:
    s = g.sessions["B"]
    growth = [g._growth.tokens("w", 1.0, running) for running in (False, True)]
    return (vars(s), growth, g._growth.changes, g.order.done, g.pauses.paused_since,
            g._step_context, dict(g._flights), g.committed(), g.num_in_flight)


def test_a_step_whose_last_request_is_withdrawn_ran_with_the_requests_that_finished():
    """B's step ran (its first request finished at 20 blocks): the last request's withdrawal
    ends that step. Before, `finished` took it for a step that never ran: B's pause and
    context were put back as before the step (12 blocks, paused since 1.0), the step's growth
    was not learned nor the step counted, and no pause began."""
    g = _admitted_step_of_two(True)
    control = _admitted_step_of_two(False)
    assert _state(g) == _state(control)
    s = g.sessions["B"]
    assert (s.context, s.paused_at, s.expected_s) == (20 * BS, 4.5, 2.0)
    assert g.order.done["B"][1] == 2 and g.pauses.paused_since == {"B": 4.5}


def _riding_step_of_two(last_withdrawn: bool) -> SessionGate:
    g = _held(idle_admit_s=1e9, max_wait_s=1e9)
    assert not g.admit("B", "w", 10 * BS, 0, now=1.5)
    g.rode_along("B", 1.5)
    g.started("b1", "B")
    g.started("b2", "B")
    g.finished("b1", "B", 12 * BS, 2.0, None, False)
    g.finished("b2", "B", 11 * BS, 2.5, None, False, withdrawn=last_withdrawn)
    return g


def test_a_riding_step_whose_last_request_is_withdrawn_ran_too():
    """The same for an unadmitted session's step that rode along: its pause begins and the
    step is counted, as when the last request finishes (before: it was taken for an abort
    while deferred, and no pause began)."""
    g, control = _riding_step_of_two(True), _riding_step_of_two(False)
    assert (g.pauses.paused_since, g.order.done, g._withdrawn_waits, g._step_context) == (
        control.pauses.paused_since, control.order.done, control._withdrawn_waits,
        control._step_context)
    assert g.pauses.paused_since["B"] == 2.5 and g.order.done["B"][1] == 1


# -- every request of a step withdrawn (review s52 diffvleft finding 1) ----------------------------

def test_a_step_whose_every_request_is_withdrawn_is_undone():
    """Both of B's requests were preempted and then aborted; the connector flags each one
    withdrawn (no blocks at its finish), not only the last. No request of the step ran to
    its end: B is paused again as before the step (its context, pause and hint), nothing is
    learned or counted, and the client's resend 0.2 s later is no pause of ~0 s."""
    g = SessionGate(100, BS, room_admit=False, reserve_wait_factor=None, idle_admit_s=1e9,
                    max_wait_s=1e9, pause_min_observed=1)
    assert g.admit("B", "w", 10 * BS, 0, now=0.0)
    g.started("b0", "B")
    g.finished("b0", "B", 12 * BS, 1.0, 5.0, False)
    g.started("other")
    s = g.sessions["B"]
    before = (dict(vars(s)), g._growth.changes, dict(g.order.done))
    assert g.admit("B", "w", 14 * BS, 0, now=3.0)
    g.started("b1", "B")
    g.started("b2", "B")
    assert g.finished("b1", "B", 19 * BS, 4.0, None, False, withdrawn=True) == []
    assert g._step_context == {}  # its partial output is no context of the step
    assert g.finished("b2", "B", 18 * BS, 4.0, None, False, withdrawn=True) == []
    assert (dict(vars(s)), g._growth.changes, dict(g.order.done)) == before
    assert "B" not in g.pauses.paused_since  # no pause began at the aborts (its pause from
    # 1.0 was learned at the admission, 3.0)
    assert (s.context, s.paused_at, s.expected_s) == (12 * BS, 1.0, 5.0)
    assert g.admit("B", "w", 14 * BS, 0, now=4.2)  # the client resends
    assert list(g.pauses.observed["w"]) == [2.0]  # 1.0 -> 3.0, B's one true pause


def test_a_riding_step_whose_every_request_is_withdrawn_starts_no_pause():
    """The same for an unadmitted session R riding along: no pause begins, so the resend
    0.1 s later teaches no pause of 0.1 s, and A (paused, unhinted) does not expire on it."""
    g = SessionGate(20, BS, room_admit=False, reserve_wait_factor=None, idle_admit_s=1e9,
                    max_wait_s=1e9, pause_min_observed=1)
    assert g.admit("A", "w", 15 * BS, 0, 0.0)
    g.started("a0", "A")
    g.finished("a0", "A", 15 * BS, 1.0, None, False)
    g.started("other")
    assert not g.admit("R", "w", 10 * BS, 0, 1.0)
    g.rode_along("R", 1.0)
    g.started("r1", "R")
    g.started("r2", "R")
    assert g.finished("r1", "R", 12 * BS, 2.0, None, False, withdrawn=True) == []
    assert g.finished("r2", "R", 11 * BS, 2.0, None, False, withdrawn=True) == []
    assert g.pauses.paused_since == {"A": 1.0} and g.order.done.get("R", ("w", 0))[1] == 0
    assert g._step_context == {} and not g._flights
    g.admit("R", "w", 10 * BS, 0, 2.1)
    assert list(g.pauses.observed.get("w", [])) == [] and g.expire(2.2) == []
