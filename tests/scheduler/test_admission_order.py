"""`workflow`'s admission order: "fifo" vs "predicted" (least predicted remaining work first,
with aging), the session-length table it learns, its bound, and its bad parameters."""

from __future__ import annotations

import math

import pytest

from kvsaga import InvalidRequest
from kvsaga.scheduler.admission_order import (
    MAX_COST,
    SessionLengths,
    order_key,
    predicted_cost,
)
from tests.sched_helpers import ToyRequest, drive
from tests.scheduler.helpers import (
    assert_fast_path_as_reference,
    manager,
    queued_big_small,
    toks,
    two_finished_sessions,
    wf,
)


def test_remaining_steps_are_the_mean_residual_of_longer_finished_sessions():
    t = SessionLengths()
    assert t.remaining("w", 0, 5.0) == 5.0  # the prior session alone
    assert t.remaining("w", 7, 5.0) == 1.0  # past the prior: at least this next step
    for n in (2, 4, 4, 10):
        t.observe("w", n)
    # done 3: the longer ones are 4, 4, 10 (1, 1, 7 left) and the prior's 5 (2 left)
    assert t.remaining("w", 3, 5.0) == pytest.approx((1 + 1 + 7 + 2) / 4)
    assert t.remaining("other", 3, 5.0) == 2.0  # tables are per workflow
    with pytest.raises(ValueError, match="at least one step"):
        t.observe("w", 0)
    assert t.counts["w"] == {2: 1, 4: 2, 10: 1}  # the bad one changed nothing


def test_predicted_cost_counts_the_context_and_half_the_growth_over_the_steps_left():
    assert predicted_cost(3, 100, 10) == 3 * (100 + 15)
    assert predicted_cost(1, -5, 0) == 0.0


def test_the_aging_bound_orders_any_two_sessions_by_their_queueing_times():
    """A session queued aging_s x ln(MAX_COST) seconds before another goes ahead of it,
    however large its prediction and small the other's."""
    gap = 10.0 * math.log(MAX_COST)
    assert order_key(1e30, 0.0, 10.0) < order_key(0.0, gap + 1e-6, 10.0)
    assert order_key(1e30, 0.0, 10.0) > order_key(0.0, gap - 1e-3, 10.0)



def test_fifo_keeps_queue_order():
    s, big, small = queued_big_small(admission_order="fifo")
    assert s.waiting == [big, small]


def test_predicted_puts_the_least_remaining_work_first():
    s, big, small = queued_big_small(admission_order="predicted", aging_s=1.0)
    assert s.remaining_cost(small) < s.remaining_cost(big)
    assert s.waiting == [small, big]


def test_predicted_ages_a_session_that_waited_longer():
    """big waited 0.1 s longer: worth ln(cost ratio) x aging_s of it once aging_s is short."""
    s, big, small = queued_big_small(admission_order="predicted", aging_s=0.05)
    assert math.log(s.remaining_cost(big) / s.remaining_cost(small)) < 0.1 / 0.05
    assert s.waiting == [big, small]


def test_the_scheduler_learns_session_lengths_from_finished_sessions():
    s = two_finished_sessions(admission_order="predicted")
    assert s._lengths.counts == {"default": {1: 1, 2: 1}}
    assert not s._steps_seen  # nothing kept of ended sessions


def test_a_waiting_session_near_its_workflows_end_goes_first():
    """Steps done lower the expected steps left: with every finished session 3 steps long, a
    session that did 2 has 1 left and goes before a new one of the same context."""
    s, big, small = queued_big_small(admission_order="predicted")
    for _ in range(5):
        s._lengths.observe("default", 3)
    fresh = ToyRequest("fresh", toks(300, 24), max_new=1, arrival=0.2)
    s.manager.sessions["big"] = type("S", (), {"num_steps": 2})()  # big did 2 steps
    try:
        assert s.remaining_cost(big) < s.remaining_cost(fresh)
    finally:
        del s.manager.sessions["big"]


def test_predicted_is_the_default_with_the_fitted_aging_and_wait_bound():
    """`--fit` rounds 4 and 8 (docs/scheduling_fit_history.md, seeds 101-106)."""
    from kvsaga.scheduler import make_scheduler
    s = make_scheduler("workflow", manager(16))
    assert (s.admission_order, s.aging_s, s.max_wait_s) == ("predicted", 80.0, 120.0)


@pytest.mark.parametrize("bad", ["shortest", None, 1])
def test_admission_order_must_be_known(bad):
    with pytest.raises(ValueError, match="admission_order must be one of fifo, predicted"):
        wf(manager(16), admission_order=bad)


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, "10", True])
def test_aging_s_must_be_a_positive_number(bad):
    with pytest.raises(ValueError, match="aging_s must be a number > 0"):
        wf(manager(16), admission_order="predicted", aging_s=bad)


def test_aging_s_must_be_finite():
    """Without aging a session with a large prediction could wait forever."""
    with pytest.raises(ValueError, match="aging_s must be finite"):
        wf(manager(16), admission_order="predicted", aging_s=math.inf)


@pytest.mark.parametrize("policy", ["ttl", "graph"])
def test_the_simulators_fast_path_equals_its_reference_with_the_predicted_order(policy):
    """The order changes only at events, so refusals held across decode runs (the fast
    path) take the reference's decisions."""
    assert_fast_path_as_reference(policy, admission_order="predicted", aging_s=5.0)


def _migrated(num_steps_done: int):
    """A session that ran `num_steps_done` steps on one manager, exported and imported into
    another, whose predicted-order scheduler then runs its last step. Returns (scheduler,
    the destination manager's session as imported)."""
    from dataclasses import replace

    from kvsaga.migration import plan_export, plan_import

    src, dst = manager(16), manager(16)
    tokens = toks(0, 8)
    for _ in range(num_steps_done):
        src.begin_step("m", tokens, now=0.0)
        src.allocate_slots("m", len(tokens) - src.num_computed_tokens("m"), now=0.0)
        src.finish_step("m", now=0.0)
        tokens = tokens + toks(500 + len(tokens), 4)
    export = plan_export(src, "m").export
    assert export.num_steps == num_steps_done
    with pytest.raises(InvalidRequest, match="num_steps"):
        plan_import(dst, replace(export, num_steps=-1), now=0.0)
    assert "m" not in dst.sessions  # the bad export changed nothing
    plan_import(dst, export, now=0.0)
    imported = dst.sessions["m"].num_steps
    s = wf(dst, admission_order="predicted")
    last = ToyRequest("m", tokens, max_new=1, resumed=True)
    s.add(last, 0.0)
    drive(s, [])
    return s, imported


def test_a_migrated_session_keeps_its_step_count_and_is_learned_at_its_full_length():
    """The export carries the steps the session ran (`SessionExport.num_steps`): the
    receiver predicts its remaining work from there and, when it ends, learns its whole
    length, not the one step it saw."""
    s, imported = _migrated(3)
    assert imported == 3
    assert s._lengths.counts == {"default": {4: 1}}
