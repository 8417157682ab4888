"""SessionGate regressions from the review of the vLLM integration: steps aborted before
vLLM allocated them, contexts that shrink, a session's concurrent requests (n > 1), and
parameters that cannot be used. Plain Python, driven as the connector drives it."""

from __future__ import annotations

import math

import pytest

from kvsaga.integrations.vllm.gate import SessionGate

BS = 16


def _gate(**kw) -> SessionGate:
    return SessionGate(100, BS, **{"prior_growth_tokens": 16, "horizon_steps": 1.0,
                                   "idle_admit_s": 1e9, "max_wait_s": 1e9, "room_admit": False,
                                   "reserve_wait_factor": None, "admission_order": "fifo",
                                   **kw})


# -- a step admitted, then aborted before vLLM allocated it -----------------------------------

def test_a_first_step_aborted_before_allocation_undoes_the_admission():
    g = _gate()
    assert g.admit("b", "w", 60 * BS, 0, now=1.0)  # admitted: 60 blocks (+1 of growth)
    assert g.finished("b0", "b", 60 * BS, 2.0, 5.0, False) == []  # aborted, never started
    assert g.sessions == {} and g.committed() == 0
    assert g.admit("c", "w", 60 * BS, 0, now=3.0)  # fits: nothing is reserved for b
    assert g.num_deferrals == 0


def test_first_steps_aborted_before_allocation_leave_no_record_behind():
    """An undone admission keeps nothing of the session (its shared prefix included): a
    client aborting first steps in a loop grew the gate's records, and a later session of
    the id read the old shared prefix."""
    g = _gate()
    for i in range(50):
        assert g.admit(f"s{i}", "w", 4 * BS, 2 * BS, now=float(i))
        g.finished(f"s{i}-0", f"s{i}", 4 * BS, float(i) + 0.5, None, False)
    assert g.sessions == {} and g._shared == {} and g._step_context == {}
    assert g.admit("s0", "w", 4 * BS, 0, now=100.0)
    assert g._shared["s0"] == 0  # the new session's, not the aborted one's


def test_a_later_step_aborted_before_allocation_restores_the_pause_and_learns_nothing():
    g = _gate()
    assert g.admit("a", "w", 10 * BS, 0, now=0.0)
    g.started("a0")  # (the session's id optional here: only concurrent requests need it)
    g.finished("a0", "a", 12 * BS, 1.0, 7.0, False)  # paused at 12 blocks, hinted 7 s
    before = (g.sessions["a"].context, g.sessions["a"].paused_at, g.sessions["a"].expected_s)
    mean = g._growth.mean("w")
    assert g.admit("a", "w", 30 * BS, 0, now=2.0)  # its next step, 30 blocks of prompt
    assert g.sessions["a"].paused_at is None
    assert g.finished("a1", "a", 30 * BS, 3.0, None, False) == []  # aborted, not allocated
    a = g.sessions["a"]
    assert (a.context, a.paused_at, a.expected_s) == before
    assert a.last_finish == 12 * BS and g._growth.mean("w") == mean
    assert g.order.done["a"] == ("w", 1)  # one step done, not two


def test_an_aborted_request_leaves_a_session_whose_other_request_runs_admitted():
    g = _gate()
    assert g.admit("a", "w", 10 * BS, 0, now=0.0)
    g.started("a0", "a")  # allocated: running
    assert g.admit("a", "w", 10 * BS, 0, now=0.1)  # a second request of the session
    g.finished("a1", "a", 10 * BS, 0.2, None, False)  # aborted before its allocation
    assert g.sessions["a"].paused_at is None  # still running: a0 holds its blocks
    g.finished("a0", "a", 11 * BS, 1.0, None, False)
    assert g.sessions["a"].paused_at == 1.0 and g.sessions["a"].last_finish == 11 * BS


def test_an_aborted_request_never_asked_about_leaves_a_paused_session_as_it_was():
    g = _gate()
    assert g.admit("a", "w", 10 * BS, 0, now=0.0)
    g.started("a0")
    g.finished("a0", "a", 12 * BS, 1.0, 7.0, False)
    g.finished("a1", "a", 40 * BS, 2.0, None, False)  # aborted in vLLM's queue, unasked
    a = g.sessions["a"]
    assert (a.context, a.paused_at, a.expected_s, a.last_finish) == (12 * BS, 1.0, 7.0, 12 * BS)


# -- a context that shrinks (an agent that compacts its context) --------------------------------

def test_a_compacted_context_is_no_negative_growth_and_admits_nothing_that_does_not_fit():
    """Session a grows 10 blocks a step, then compacts 40 blocks to 4. The drop was learned
    as growth -576 tokens: the mean went negative, a's working set below its own context
    (-2 blocks), and four 30-block sessions were admitted into 100 blocks (124 as they
    stand)."""
    g = _gate(horizon_steps=4.0)
    t = 0.0
    for i, blocks in enumerate([10, 20, 30, 40, 4]):
        t += 1
        assert g.admit("a", "w", blocks * BS, 0, t)
        g.started(f"a{i}", "a")
        t += 1
        g.finished(f"a{i}", "a", blocks * BS, t, 1.0, False)
    assert g._growth.mean("w") >= 0
    assert g.committed() >= 4  # a's context at least
    assert g._growth.tokens("w", 4.0, False) >= 0
    admitted = []
    for k in range(6):
        t += 1
        if g.admit(f"n{k}", "w", 30 * BS, 0, t):
            admitted.append(f"n{k}")
            g.started(f"n{k}0", f"n{k}")
    assert admitted and g.admitted_by == {}  # by fit alone (room, waits: off)
    assert g.committed(0.0) <= g.committed() <= g.capacity


def test_growth_charged_is_never_negative_even_from_a_negative_mean():
    from kvsaga.integrations.vllm.gate_growth import GateGrowth

    growth = GateGrowth(16.0, 0.5, "step")
    growth.steps.observe("w", -1000)  # (what the table held before observations were floored)
    assert growth.tokens("w", 4.0, False) == 0.0
    fresh = GateGrowth(16.0, 0.5, "step")
    fresh.finished("w", 100, 50, 400)  # shrank from 400 to 50 tokens: observed as no growth
    assert fresh.steps.mean("w") == 0.0


# -- a session's requests in flight together (n > 1, concurrent steps) -------------------------

def test_n_children_are_one_step_of_the_session():
    """vLLM fans a request with n > 1 out into n child requests with the same hint. Each
    child's finish was counted as a step: children after the first observed ~0 growth (n =
    3: 23.5 tokens learned for 80 a step) and the session's steps were counted n-fold."""
    for n in (1, 3):
        g = SessionGate(1000, BS)
        t, ctx = 0.0, 10 * BS
        for step in range(6):
            t += 1
            assert g.admit("a", "w", ctx, 0, t)
            for c in range(n):
                g.started(f"a{step}-{c}", "a")
            ctx += 5 * BS  # each step (reply + next observation) grows 5 blocks
            for c in range(n):
                t += 0.01
                g.finished(f"a{step}-{c}", "a", ctx - c, t, 1.0, False)
                assert (g.sessions["a"].paused_at is None) == (c < n - 1)  # the last ends it
        assert g._growth.mean("w") == 5 * BS
        assert g.order.done["a"] == ("w", 6)
        assert g.num_in_flight == 0 and not g._flights and not g._step_context


def test_an_aborted_child_does_not_take_the_steps_context():
    g = _gate()
    assert g.admit("a", "w", 10 * BS, 0, now=0.0)
    g.started("a0", "a")
    g.finished("a0", "a", 12 * BS, 1.0, None, False)
    assert g.admit("a", "w", 14 * BS, 0, now=2.0)
    g.started("a1", "a")
    g.started("a2", "a")
    g.finished("a1", "a", 20 * BS, 3.0, None, False)  # a2 still runs
    g.finished("a3", "a", 14 * BS, 3.5, None, False)  # a third child, aborted unallocated
    assert g.sessions["a"].paused_at is None
    g.finished("a2", "a", 18 * BS, 4.0, None, False)
    a = g.sessions["a"]
    assert (a.context, a.last_finish, a.paused_at) == (20 * BS, 20 * BS, 4.0)
    assert g.order.done["a"] == ("w", 2)


def test_a_child_allocated_before_and_finishing_after_the_step_ended_adds_no_step():
    g = _gate()
    assert g.admit("a", "w", 10 * BS, 0, now=0.0)
    g.started("a0", "a")
    g.finished("a0", "a", 12 * BS, 1.0, None, False)
    g.started("a1")  # (session not said: the late child is not known to be in flight)
    mean = g._growth.mean("w")
    g.finished("a1", "a", 12 * BS, 2.0, None, False)
    assert g.order.done["a"] == ("w", 1) and g._growth.mean("w") == mean
    assert g.sessions["a"].last_finish == 12 * BS


# -- parameters that cannot be used -------------------------------------------------------------

_NUMBERS = ("horizon_steps", "prior_growth_tokens", "demote_factor", "demote_min_s",
            "default_pause_s", "idle_admit_s", "max_wait_s", "shrink_horizon_steps",
            "room_steps", "reserve_fit_steps", "room_fit_steps", "reserve_wait_factor")


@pytest.mark.parametrize("name", _NUMBERS)
@pytest.mark.parametrize("value", [math.inf, 10**400], ids=["inf", "1e400"])
def test_an_infinite_or_overflowing_parameter_is_refused_at_construction_naming_it(name, value):
    """horizon_steps or prior_growth_tokens inf was accepted, then raised OverflowError at
    the first admission (math.ceil(inf)), inside vLLM's scheduler; a huge int, at
    construction but as OverflowError naming nothing."""
    with pytest.raises(ValueError, match=f"gate parameter {name} must be a finite number"):
        SessionGate(100, BS, **{name: value})


@pytest.mark.parametrize("name", ["aging_s", "prior_steps"])
def test_an_overflowing_order_parameter_is_refused_naming_it(name):
    with pytest.raises(ValueError, match=f"gate parameter {name} must be a finite number"):
        SessionGate(100, BS, **{name: 10**400})


def test_large_finite_parameters_still_work():
    g = SessionGate(100, BS, horizon_steps=1e6, prior_growth_tokens=1e6, idle_admit_s=1e9,
                    max_wait_s=1e9, room_fit_steps=None, reserve_wait_factor=None)
    assert g.admit("a", "w", BS, 0, now=0.0)
    assert not g.admit("b", "w", BS, 0, now=1.0)  # a's reserved growth fills the blocks
