"""The "gittins" admission order's length estimate (kvsaga/scheduler/session_length.py):
censored Kaplan-Meier hazards shrunk to a pooled prior, the Gittins rank, its bad inputs,
and the order in the scheduler."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.session_length import SessionLengthModel, _gittins_terms
from tests.scheduler.helpers import (
    assert_fast_path_as_reference,
    manager,
    queued_big_small,
    two_finished_sessions,
    wf,
)


def approx(xs):
    return pytest.approx(xs, abs=1e-12)


def test_no_session_seen_gives_the_prior():
    m = SessionLengthModel()
    # a point mass at the prior mean, split so the mean is exact
    assert m.survival("w", 3.0) == approx([1, 1, 1, 0])
    assert m.survival("w", 2.5) == approx([1, 1, 0.5, 0])
    assert m.remaining_pmf("w", 0, 3.0) == approx([0, 0, 0, 1])
    assert m.remaining_pmf("w", 2, 2.5) == approx([0, 1])
    # no prior mean (no Agent Execution Graph): the least a session can take, one step
    assert m.survival("w", None) == approx([1, 0])
    assert m.remaining_pmf("w", 0, None) == approx([0, 1])
    assert m.remaining_pmf("w", 7, None) == approx([0, 1])  # past the support: one step


def _one_ended_one_live(model: SessionLengthModel) -> None:
    """a ended after 2 steps; b is live with 3 steps done (its length is > 3 so far)."""
    model.steps_done("w", 0, 1)
    model.ended_after("w", 1, 2)
    model.steps_done("w", 0, 3)


def test_live_sessions_count_as_censored_lengths():
    """By hand, prior weight 1, no prior mean (a point mass at 1 step). Pooled: reached
    2, 2, 1 at steps 1-3, ended 1 at step 2: hazards 1/3, 1/2, 0, then 1 where nobody
    reached; the workflow's shrunk to those: 1/9, 1/2, 0, 1."""
    m = SessionLengthModel(1.0)
    _one_ended_one_live(m)
    assert m.survival("w", None) == approx([1, 8 / 9, 4 / 9, 4 / 9, 0])
    # a new session: 1/9 chance of 1 step, 4/9 of 2, 4/9 of 4
    assert m.remaining_pmf("w", 0, None) == approx([0, 1 / 9, 4 / 9, 0, 4 / 9])
    # the finished session alone (no censoring) would say it is shorter
    finished_only = SessionLengthModel(1.0)
    finished_only.steps_done("w", 0, 1)
    finished_only.ended_after("w", 1, 2)

    def mean(q):
        return sum(j * p for j, p in enumerate(q))

    assert mean(finished_only.remaining_pmf("w", 0, None)) < mean(m.remaining_pmf("w", 0, None))


def test_an_unseen_workflow_gets_the_pooled_estimate():
    m = SessionLengthModel(1.0)
    _one_ended_one_live(m)
    assert m.survival("other", None) == approx([1, 2 / 3, 1 / 3, 1 / 3, 0])
    assert m.survival("other", None) == m.survival(None, None)  # pooled's own key
    assert "other" not in m.reached  # asking learned nothing


def test_the_prior_shrinks_to_the_data():
    """Many sessions of 4 steps: the estimate moves from the prior (10 steps) to 4."""
    m = SessionLengthModel(1.0)
    assert m.remaining_pmf("w", 0, 10.0)[10] == 1.0
    for _ in range(200):
        m.ended_after("w", 0, 4)
    q = m.remaining_pmf("w", 0, 10.0)
    assert q[4] > 0.99 and sum(q) == pytest.approx(1.0)
    heavy = SessionLengthModel(1000.0)  # a heavy prior moves less
    for _ in range(200):
        heavy.ended_after("w", 0, 4)
    assert heavy.remaining_pmf("w", 0, 10.0)[4] < 0.5


def test_steps_done_given_lowers_the_remaining_steps():
    m = SessionLengthModel(1.0)
    for n in (3, 5, 5, 8):
        m.ended_after("w", 0, n)
    q = m.remaining_pmf("w", 4, None)  # longer than 4: the 5, 5, 8 (and priors)
    assert sum(q) == pytest.approx(1.0)
    assert q[1] > q[4] > 0  # 5 (1 left) twice as likely as 8 (4 left)


def test_gittins_rank_ranks_by_the_chance_of_ending_soon():
    """R = 1 or 10 with even odds: the rank is 1 / 0.5 = 2 context-steps (stop after one
    step), not the mean 5.5; a point mass ranks as its work."""
    q = [0.0, 0.5] + [0.0] * 8 + [0.5]
    a1, a2 = _gittins_terms(q)
    assert min(a1) == pytest.approx(2.0)
    assert a1[-1] == pytest.approx(5.5)  # the longest horizon: the expected steps
    m = SessionLengthModel(1.0)
    # no data, prior mean 3: R = 3 surely; work 3 x (100 + 10 x 3 / 2)
    assert m.gittins_rank("w", 0, 100, 10, 3.0) == pytest.approx(3 * (100 + 15))
    assert m.gittins_rank("w", 0, 100, 10, None) == pytest.approx(100 + 5)


def test_the_rank_never_exceeds_the_expected_work():
    m = SessionLengthModel(1.0)
    for n in (2, 3, 9, 20, 20, 40):
        m.ended_after("w", 0, n)
    for done in (0, 2, 10, 30):
        q = m.remaining_pmf("w", done, 12.0)
        work = sum(p * j * (50 + 4 * j / 2) for j, p in enumerate(q))
        assert m.gittins_rank("w", done, 50, 4, 12.0) <= work + 1e-9


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "1", True, None])
def test_length_prior_must_be_a_positive_finite_number(bad):
    with pytest.raises(ValueError, match="length_prior must be a finite number > 0"):
        SessionLengthModel(bad)
    with pytest.raises(ValueError, match="length_prior must be a finite number > 0"):
        wf(manager(16), admission_order="gittins", length_prior=bad)


def test_bad_observations_change_nothing():
    m = SessionLengthModel(1.0)
    _one_ended_one_live(m)
    before = (m.version, {k: list(v) for k, v in m.reached.items()},
              {k: list(v) for k, v in m.ended.items()})
    for call in (lambda: m.ended_after("w", 3, 3), lambda: m.ended_after("w", 0, 0),
                 lambda: m.ended_after("w", 0, 2.0), lambda: m.steps_done("w", 4, 3),
                 lambda: m.steps_done("w", -1, 3)):
        with pytest.raises(ValueError, match="step"):
            call()
    assert (m.version, m.reached, m.ended) == before



def test_gittins_puts_the_least_ranked_work_first_and_learns_censored_steps():
    s, big, small = queued_big_small(admission_order="gittins", aging_s=1.0)
    assert s.remaining_cost(small) < s.remaining_cost(big)
    assert s.waiting == [small, big]
    # a's first step finished (it goes on): one session reached step 1, none ended
    assert s._length_model.reached["default"][1] == 1
    assert sum(s._length_model.ended["default"]) == 0


def test_gittins_learns_finished_lengths_in_the_scheduler():
    s = two_finished_sessions(admission_order="gittins")
    lm = s._length_model
    assert lm.reached["default"][1:3] == [2, 1] and lm.ended["default"][1:3] == [1, 1]
    assert not s._steps_seen


def test_the_simulators_fast_path_equals_its_reference_with_the_gittins_order():
    assert_fast_path_as_reference("graph", admission_order="gittins", aging_s=5.0)
