"""`readmit_order` "waited" (`--fit` round 42, session 34): a waiting step is aged from its
queueing less the admission waits its session has had so far (`AdmissionOrder._aged_since`),
so a session demoted again and again keeps the aging credit of its earlier waits."""

from __future__ import annotations

import math

import pytest

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, queued_big_small, toks, wf


def _demoted_big_and_new_small():
    """One admitted session (a, 44 tokens) fills the pool; a demoted session's step (`big`,
    24 tokens, queued again at 0.05) and a new session (`small`, 8 tokens, at 0.1) wait,
    ordered by "predicted" with aging_s 1 under "waited"."""
    return queued_big_small(readmitted_at=0.05, admission_order="predicted", aging_s=1.0,
                            readmit_order="waited")


def test_with_no_earlier_wait_it_sorts_as_sorted():
    s, big, small = _demoted_big_and_new_small()
    assert s.remaining_cost(small) < s.remaining_cost(big)
    assert s.waiting[0] is small


@pytest.mark.parametrize("margin,first", [(0.01, "big"), (-0.01, "small")])
def test_earlier_waits_age_a_step_as_if_queued_that_much_sooner(margin, first):
    """Keys: ln(cost) + (queued - waited) / aging_s. big goes first exactly when its
    earlier waits exceed ln(cost big / cost small) less the 0.05 s it queued first."""
    s, big, small = _demoted_big_and_new_small()
    gap = math.log(s.remaining_cost(big) / s.remaining_cost(small))
    s._waited["big"] = gap - 0.05 + margin
    assert s._aged_since("big", big.arrival) == pytest.approx(big.arrival - s._waited["big"])
    assert s._aged_since("small", small.arrival) == small.arrival
    s._order_changed()
    s._sort_pending()  # as the next admission attempt does
    assert s.waiting[0].session_id == first


@pytest.mark.parametrize("order", ["sorted", "first", "session_age"])
def test_other_orders_keep_their_aging(order):
    s, big, small = queued_big_small(admission_order="predicted", readmit_order=order)
    s._waited["big"] = 100.0  # read only under "waited"
    since = s._aged_since("big", 7.0)
    assert since == (s._started["big"] if order == "session_age" else 7.0)


def _admit_after_a_ends(order: str, earlier: float = 0.0):
    """queued_big_small's state (both sessions given `earlier` seconds of earlier admission
    waits); a's next step, its last, runs at 1.0 and frees the pool; then the waiting
    sessions are admitted at 1.0."""
    s, big, small = queued_big_small(admission_order="predicted", readmit_order=order)
    if earlier:
        s._waited.update(big=earlier, small=earlier)
    ex = ToyExecutor(s.manager)
    a2 = ToyRequest("a", toks(0, 44) + [7], max_new=1, arrival=1.0, resumed=True)
    s.add(a2, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)
    assert "a" not in s.sessions
    out = s.schedule(1.0, ex)
    return s, {r.session_id for r in out.admitted}


@pytest.mark.parametrize("earlier", [0.0, 5.0])
def test_a_session_admission_adds_its_wait_and_its_end_forgets_it(earlier):
    s, admitted = _admit_after_a_ends("waited", earlier)
    assert admitted, "the freed pool admits a waiting session"
    arrival = {"big": 0.0, "small": 0.1}
    for sid in admitted:
        assert s._waited[sid] == pytest.approx(earlier + 1.0 - arrival[sid])
    for sid in set(arrival) - admitted:
        assert s._waited.get(sid, 0.0) == earlier  # still waiting: nothing added yet
    s._session_left(next(iter(admitted)))
    assert next(iter(admitted)) not in s._waited


def test_under_sorted_no_wait_is_kept():
    s, admitted = _admit_after_a_ends("sorted")
    assert admitted and not s._waited


def test_the_value_is_accepted_and_an_unknown_one_refused():
    assert wf(manager(16), readmit_order="waited").readmit_order == "waited"
    with pytest.raises(ValueError, match="readmit_order must be one of .*waited"):
        wf(manager(16), readmit_order="longest")
