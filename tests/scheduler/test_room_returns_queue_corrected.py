"""`readmit_charge` "room_returns_queue_corrected" (kvsaga/scheduler/room_swap.py, session 32,
`--fit` round 37): "room_returns_queue" whose gain (the refused demoted step's forecast wait
for its room) is multiplied by the scheduler's own observed error of that forecast: each step
priced and refused, once admitted otherwise than by a swap, gives the mean over its pricings
of ln(actual wait / forecast); the factor is exp(sum / (n + 1)) per workflow (pooled until it
has its own; 1 before any). What is recorded and when, the censoring by a swap, the factor,
both sides of the decision, names and the state machines."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.room_swap import (
    READMIT_ROOM_RETURNS_QUEUE,
    READMIT_ROOM_RETURNS_QUEUE_CORRECTED,
    READMIT_ROOM_RETURNS_QUEUES,
    READMIT_ROOM_SWAP,
)
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import manager, wf
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_returns_queue import _leaves, _swap, o_swap_price
from tests.scheduler.test_room_swap import _queued

Q = READMIT_ROOM_RETURNS_QUEUE
C = READMIT_ROOM_RETURNS_QUEUE_CORRECTED


def test_corrected_is_named_among_the_swap_values():
    assert C == "room_returns_queue_corrected" and READMIT_ROOM_SWAP[-5] == C
    assert READMIT_ROOM_RETURNS_QUEUES[-5] == C and Q in READMIT_ROOM_RETURNS_QUEUES


def test_the_factor_is_the_shrunk_geometric_mean_per_workflow():
    s = wf(manager(16), readmit_charge=C)
    assert s._gain_factor("w") == 1.0  # nothing observed: no correction
    s._gain_errors.observe("w", math.log(0.25))
    # one observation of 1/4 and one pseudo-observation of 1: exp(ln(1/4) / 2) = 1/2
    assert s._gain_factor("w") == pytest.approx(0.5)
    assert s._gain_factor("other") == pytest.approx(0.5)  # pooled until it has its own
    s._gain_errors.observe("other", math.log(8.0))
    assert s._gain_factor("other") == pytest.approx(math.sqrt(8.0))
    assert s._gain_factor("w") == pytest.approx(0.5)
    s._gain_errors.observe("w", math.log(0.25))
    assert s._gain_factor("w") == pytest.approx(0.25 ** (2 / 3))  # towards the mean with n


def _priced(s, big2, at, gain):
    """Price big's swap at time `at` with the forecast gain `gain` and refuse it (the victims'
    waits made larger than any gain)."""
    lookup, victims, over = _swap(s, big2)
    s._swap_gain_s = lambda over_, now: gain
    s._victim_wait_s = lambda *a, **k: math.inf
    assert not s._swap_pays_queue(big2, lookup, victims, over, at)


@pytest.mark.parametrize("charge", [Q, C])
def test_a_refused_step_admitted_later_observes_its_pricings_error(charge):
    """Two refused pricings (at 2.0 with a gain of 4 s, at 3.0 with 2 s), then the step is
    admitted at 6.0: waits 4 and 3 against 4 and 2, one observation of the mean of ln(4/4)
    and ln(3/2), under both values (only "corrected" acts on it)."""
    _, s, _, big2 = _queued(charge, 10.0)
    _priced(s, big2, 2.0, 4.0)
    _priced(s, big2, 3.0, 2.0)
    assert [p for p in s._gain_priced["big"][1]] == [(2.0, 4.0), (3.0, 2.0)]
    s._step_admitted(big2, 6.0)
    assert "big" not in s._gain_priced
    total, n = s._gain_errors.sums["w"]
    assert n == 1 and total == pytest.approx((math.log(1.0) + math.log(1.5)) / 2)


def test_what_is_not_observed():
    """A pricing at the admission's own time is left out (no wait); a step only priced at
    that time gives no observation; an inf gain is not recorded; a swap drops the record
    (censored); a session leaving drops it; another request of the session starts anew."""
    _, s, _, big2 = _queued(C, 10.0)
    _priced(s, big2, 2.0, math.inf)
    assert "big" not in s._gain_priced
    _priced(s, big2, 2.0, 1.0)
    s._step_admitted(big2, 2.0)
    assert not s._gain_errors.sums
    _priced(s, big2, 2.0, 1.0)
    s._session_left("big")
    assert "big" not in s._gain_priced
    _priced(s, big2, 2.0, 1.0)
    lookup, victims, over = _swap(s, big2)
    s._victim_wait_s = lambda *a, **k: 0.0
    s._swap_gain_s = lambda over_, now: 1e9
    assert s._swap_pays_queue(big2, lookup, victims, over, 3.0)
    assert "big" not in s._gain_priced  # swapped in: its wait is cut short, not observed
    s._step_admitted(big2, 3.0)
    assert not s._gain_errors.sums


@pytest.mark.parametrize("error,q_swaps,c_swaps", [
    (None, True, True),     # nothing observed: decides as round 34's
    (0.25, True, False),    # the forecast seen 4x too long: the corrected gain is half
    (4.0, False, True),     # seen 4x too short: twice
])
def test_the_corrected_gain_decides(error, q_swaps, c_swaps):
    """o's room back long before it returns (its wait 0): round 34's rule swaps where the
    forecast gain exceeds `PRICED_MARGIN` times o's recomputation. With the gain 1.5x that
    price (made / error 4x too long) or 0.75x it (refused / error 4x too short), the
    corrected value multiplies it by the factor (1/2 or 2 after one observation)."""
    for charge, want in ((Q, q_swaps), (C, c_swaps)):
        m, s, ex, big2 = _queued(charge, 10.0)
        price = o_swap_price(s)
        scale = 0.75 if error is not None and error > 1 else 1.5
        _leaves(s, lambda over, p=price * scale: p)
        if error is not None:
            s._gain_errors.observe("w", math.log(error))
        assert (big2 in s.schedule(2.0, ex).admitted) is want, (charge, error)
        m.check_integrity()


def test_value_is_named_and_refused_values_name_it():
    assert_value_named(C, "room_returns_queue_correct", "corrected")


globals().update(machines("room_returns_queue_corrected", {**DEMOTING, "readmit_charge": C}))
