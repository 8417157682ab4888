"""`readmit_charge` "room_returns_queue_cleared" (kvsaga/scheduler/room_forecast.py, session 33,
`--fit` round 40): round 39's victims ("room_returns_queue_shrink", the ones the shrink is
forecast to demote at the next predicted step finish), and a swap whose overshoot that
forecast shrink cannot clear is refused (`_priced_victims` None) where round 39 fell back to
the victims now. Pinned on `_queued`'s state (keep and o paused, big's demoted step refused):
the refusal, the cleared case, the fallbacks, the decision against round 39's, names and the
state machines."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.room_forecast import (
    READMIT_ROOM_RETURNS_QUEUE_CLEARED,
    READMIT_ROOM_RETURNS_QUEUE_SHRINK,
)
from kvsaga.scheduler.room_swap import (
    READMIT_ROOM_RETURNS_QUEUE,
    READMIT_ROOM_RETURNS_QUEUES,
    READMIT_ROOM_SWAP,
)
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_returns_queue import pays_pinned
from tests.scheduler.test_room_returns_queue_shrink import pinned_state as _state

CL = READMIT_ROOM_RETURNS_QUEUE_CLEARED
SH = READMIT_ROOM_RETURNS_QUEUE_SHRINK
Q = READMIT_ROOM_RETURNS_QUEUE


def test_cleared_is_named_among_the_swap_values():
    assert CL == "room_returns_queue_cleared" and READMIT_ROOM_SWAP[-2] == CL
    assert READMIT_ROOM_RETURNS_QUEUES[-2] == CL


@pytest.mark.parametrize("charge,priced", [(SH, ["o"]), (CL, None), (Q, ["o"])])
def test_an_overshoot_the_forecast_shrink_cannot_clear(charge, priced):
    """A return's growth of 10,000 blocks taken before the finish at 2.5: even demoting
    both paused sessions leaves the load over the tiers then. Round 39 prices the victims
    now (o); round 40 refuses (None); round 34's value prices the victims now."""
    s, big2, lookup, victims, _ = _state(charge, lambda over: [(2.1, -10_000)])
    assert s._priced_victims(big2, lookup, victims, 2.0) == priced


def test_both_paused_back_before_the_finish_leave_nobody_to_demote():
    """keep and o both back by the finish (active then, the shrink skips them): no one
    left to clear the overshoot, so round 40 refuses; round 39 prices o, as now."""
    back = {"o": 2.4, "keep": 2.3}
    s, big2, lookup, victims, _ = _state(CL, lambda over: [], back)
    assert s._priced_victims(big2, lookup, victims, 2.0) is None
    s, big2, lookup, victims, _ = _state(SH, lambda over: [], back)
    assert s._priced_victims(big2, lookup, victims, 2.0) == ["o"]


def test_cleared_overshoots_price_as_round_39():
    """Where the forecast frees the overshoot by the finish: no victim; where the shrink
    then clears it with o back skipped: keep; where it needs both: both."""
    s, big2, lookup, victims, _ = _state(CL, lambda over: [(2.5, over), (9.0, 100)])
    assert s._priced_victims(big2, lookup, victims, 2.0) == []
    s, big2, lookup, victims, _ = _state(CL, lambda over: [], {"o": 2.4})
    assert s._priced_victims(big2, lookup, victims, 2.0) == ["keep"]
    s, big2, lookup, victims, _ = _state(CL, lambda over: [(2.1, -13)])
    assert s._priced_victims(big2, lookup, victims, 2.0) == ["o", "keep"]


def test_unknown_forecast_keeps_the_victims_now():
    """Before any step time was seen and under `shrink_on` "contexts" the forecast shrink
    is unknown: the victims now are priced, as under round 39 (no refusal)."""
    s, big2, lookup, victims, _ = _state(CL, lambda over: [(2.1, -10_000)], step_s=None)
    assert s._priced_victims(big2, lookup, victims, 2.0) == ["o"]
    s, big2, lookup, victims, _ = _state(CL, lambda over: [(2.1, -10_000)])
    s.shrink_on = "contexts"
    assert s._priced_victims(big2, lookup, victims, 2.0) == ["o"]


@pytest.mark.parametrize("charge,made", [(SH, True), (CL, False)])
def test_the_uncleared_swap_is_refused_where_round_39_swaps(charge, made):
    """The same uncleared state, a gain of 5 s and victims' waits and recomputation priced
    at nothing: round 39 swaps (cost 0 < gain), round 40 refuses. The refused pricing is
    recorded for the gain's error as any refusal is."""
    s, big2, lookup, victims, over = _state(charge, lambda over: [(2.1, -10_000)])
    s._victims_recompute_s = lambda vs: 0.0
    assert pays_pinned(s, big2, lookup, victims, over) is made
    assert (big2.session_id in s._gain_priced) is not made


def test_a_cleared_swap_is_made_by_both():
    s, big2, lookup, victims, over = _state(CL, lambda over: [(2.5, over)])
    assert pays_pinned(s, big2, lookup, victims, over) is True


def test_value_is_named_and_refused_values_name_it():
    assert_value_named(CL, "room_returns_queue_clear", "cleared")


globals().update(machines("room_returns_queue_cleared", {**DEMOTING, "readmit_charge": CL}))
