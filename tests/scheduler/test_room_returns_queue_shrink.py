"""`readmit_charge` "room_returns_queue_shrink" (kvsaga/scheduler/room_forecast.py, session 33,
`--fit` round 39): "room_returns_queue" whose victims are the ones the shrink is forecast to
demote at the next predicted step finish (`_victims_at_shrink`): the load then less what the
forecast events up to that finish free, the paused sessions back by then skipped. The
victims pinned on `_queued`'s state (keep and o paused, big's demoted step refused), the
fallbacks, the decision, names and the state machines."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.room_forecast import READMIT_ROOM_RETURNS_QUEUE_SHRINK
from kvsaga.scheduler.room_swap import (
    READMIT_ROOM_RETURNS_QUEUE,
    READMIT_ROOM_RETURNS_QUEUES,
    READMIT_ROOM_SWAP,
)
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_returns_queue import _swap, pays_pinned
from tests.scheduler.test_room_swap import _queued

SH = READMIT_ROOM_RETURNS_QUEUE_SHRINK
Q = READMIT_ROOM_RETURNS_QUEUE


def test_shrink_is_named_among_the_swap_values():
    assert SH == "room_returns_queue_shrink" and READMIT_ROOM_SWAP[-3] == SH
    assert READMIT_ROOM_RETURNS_QUEUES[-3] == SH


def _state(events, back=None, step_s=0.5):
    return pinned_state(SH, events, back, step_s)


def pinned_state(charge, events, back=None, step_s=0.5):
    """`_queued`'s swap under `charge` (victims now: o alone, overshoot `over` > 0) with the
    forecast events `events(over)` (time, blocks) and the returns `back` (sid -> time)
    pinned; steps take `step_s` (None: none seen). Nobody is active, so the next finish is
    big's own step's, at 2.0 + `step_s`. (Round 40's tests take it too.)"""
    _, s, _, big2 = _queued(charge, 10.0)
    lookup, victims, over = _swap(s, big2)
    s._step_times = type(s._step_times)()  # the toy run's step times replaced
    if step_s is not None:
        s._step_times.observe("w", step_s)
    assert not any(i.active for i in s.sessions.values()) and big2.workflow == "w"
    s._release_events = lambda now: events(over)
    s._return_at = lambda sid: (back or {}).get(sid)
    return s, big2, lookup, victims, over


def test_no_victim_where_the_forecast_frees_the_overshoot_by_the_next_finish():
    s, big2, lookup, victims, _ = _state(lambda over: [(2.5, over), (9.0, 100)])
    assert victims == ["o"]
    assert s._victims_at_shrink(big2, lookup, victims, 2.0) == []
    # the same blocks freed after the finish (2.5) do not count
    s, big2, lookup, victims, _ = _state(lambda over: [(2.6, over)])
    assert s._victims_at_shrink(big2, lookup, victims, 2.0) == ["o"]


def test_a_victim_back_before_the_next_finish_is_skipped():
    """o back at 2.4 (active by the finish at 2.5): the shrink takes keep instead; back at
    2.6 it is still o."""
    s, big2, lookup, victims, _ = _state(lambda over: [], {"o": 2.4})
    assert s._victims_at_shrink(big2, lookup, victims, 2.0) == ["keep"]
    s, big2, lookup, victims, _ = _state(lambda over: [], {"o": 2.6})
    assert s._victims_at_shrink(big2, lookup, victims, 2.0) == ["o"]


def test_room_taken_by_the_finish_adds_victims_and_fallbacks():
    """A return's growth taken before the finish (13 blocks: o's own context no longer
    covers the overshoot) makes the shrink take keep too; where even both cannot, the
    victims now are kept; so before any step time was seen and under "contexts"."""
    s, big2, lookup, victims, over = _state(lambda over: [(2.1, -13)])
    assert s._victims_at_shrink(big2, lookup, victims, 2.0) == ["o", "keep"]
    s, big2, lookup, victims, _ = _state(lambda over: [(2.1, -10_000)])
    assert s._victims_at_shrink(big2, lookup, victims, 2.0) == victims == ["o"]
    s, big2, lookup, victims, _ = _state(lambda over: [(2.5, over)], step_s=None)
    assert s._victims_at_shrink(big2, lookup, victims, 2.0) == ["o"]
    s, big2, lookup, victims, _ = _state(lambda over: [(2.5, over)])
    s.shrink_on = "contexts"
    assert s._victims_at_shrink(big2, lookup, victims, 2.0) == ["o"]


@pytest.mark.parametrize("charge,made", [(SH, True), (Q, False)])
def test_the_victims_at_the_shrink_are_priced(charge, made):
    """With o's forecast wait inf (any swap pricing o refuses) and the shrink forecast to
    demote nobody, "room_returns_queue_shrink" swaps at a finite gain; round 34's value,
    pricing o, refuses."""
    _, s, _, big2 = _queued(charge, 10.0)
    lookup, victims, over = _swap(s, big2)
    s._victims_at_shrink = lambda req, lk, vs, now: []
    assert pays_pinned(s, big2, lookup, victims, over, 3.0, math.inf) is made


def test_value_is_named_and_refused_values_name_it():
    assert_value_named(SH, "room_returns_queue_shrinks", "shrink")


globals().update(machines("room_returns_queue_shrink", {**DEMOTING, "readmit_charge": SH}))
