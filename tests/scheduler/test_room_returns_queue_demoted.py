"""`readmit_charge` "room_returns_queue_demoted" (kvsaga/scheduler/room_forecast.py, session 33,
`--fit` round 41): round 40's refusal ("room_returns_queue_cleared": a swap whose overshoot
the forecast shrink at the next predicted finish cannot clear is refused) with no predicted
leave counted toward the clearing (`_release_events`' `leaves` off): only the step finishes'
growth frees and the shrink's demotions. Pinned on `_queued`'s state (keep and o paused,
big's demoted step refused): the events, the decision against round 40's, names and the
state machines."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.room_forecast import (
    READMIT_ROOM_RETURNS_QUEUE_CLEARED,
    READMIT_ROOM_RETURNS_QUEUE_DEMOTED,
)
from kvsaga.scheduler.room_swap import READMIT_ROOM_RETURNS_QUEUES, READMIT_ROOM_SWAP
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_returns_queue import _swap, pays_pinned
from tests.scheduler.test_room_swap import _queued

DM = READMIT_ROOM_RETURNS_QUEUE_DEMOTED
CL = READMIT_ROOM_RETURNS_QUEUE_CLEARED


def test_demoted_is_named_among_the_swap_values():
    assert DM == "room_returns_queue_demoted" and READMIT_ROOM_SWAP[-1] == DM
    assert READMIT_ROOM_RETURNS_QUEUES[-1] == DM


def _state(charge, back, leave):
    """`_queued`'s swap under `charge` (victims now: o alone, overshoot `over` > 0), steps
    taking 0.5 s (the next finish is big's own, at 2.5: nobody is active), the returns
    `back` and leaves `leave` (sid -> time) pinned."""
    _, s, _, big2 = _queued(charge, 10.0)
    lookup, victims, over = _swap(s, big2)
    s._step_times = type(s._step_times)()
    s._step_times.observe("w", 0.5)
    assert not any(i.active for i in s.sessions.values())
    s._return_at = lambda sid: back.get(sid)
    s._leave_at = lambda sid, info, now, restart=False: leave[sid]
    return s, big2, lookup, victims, over


def test_the_leaves_are_left_out_of_the_events():
    """keep and o paused, not predicted back: their leaves are their only events; without
    `leaves` none. Back before their leaves, their returns' takes and frees stay."""
    s, *_ = _state(DM, {}, {"keep": 2.1, "o": 2.2})
    assert sorted(s._release_events(2.0)) == [(2.1, 18), (2.2, 13)]
    assert s._release_events(2.0, leaves=False) == []
    s, *_ = _state(DM, {"keep": 2.05, "o": 2.06}, {"keep": 2.1, "o": 2.2})
    with_leaves = s._release_events(2.0)
    without = s._release_events(2.0, leaves=False)
    assert sorted(with_leaves) == sorted(without + [(2.1, 18), (2.2, 13)])
    assert len(without) == 4 and all(t < 2.6 for t, _ in without)


@pytest.mark.parametrize("charge,priced", [(CL, []), (DM, None)])
def test_an_overshoot_cleared_only_by_predicted_leaves(charge, priced):
    """keep and o both back (2.2, 2.3) before the next finish (2.5), so the shrink then may
    demote neither; both predicted to leave at 2.4 (their whole blocks freed before the
    finish). Round 40 counts those leaves as clearing the overshoot (no victim priced);
    round 41 counts none, no demotion can clear it, and refuses."""
    s, big2, lookup, victims, over = _state(charge, {"o": 2.2, "keep": 2.3},
                                            {"o": 2.4, "keep": 2.4})
    assert s._priced_victims(big2, lookup, victims, 2.0) == priced


def test_without_leaves_the_shrink_demotes_to_clear():
    """keep and o not back, predicted to leave at 2.1: round 40 prices nobody (the leaves
    clear it); round 41 prices the shrink's victim then, o (as the shrink now)."""
    leave = {"keep": 2.1, "o": 2.1}
    s, big2, lookup, victims, _ = _state(CL, {}, leave)
    assert s._priced_victims(big2, lookup, victims, 2.0) == []
    s, big2, lookup, victims, _ = _state(DM, {}, leave)
    assert s._priced_victims(big2, lookup, victims, 2.0) == ["o"]


@pytest.mark.parametrize("charge,made", [(CL, True), (DM, False)])
def test_the_swap_decision(charge, made):
    s, big2, lookup, victims, over = _state(charge, {"o": 2.2, "keep": 2.3},
                                            {"o": 2.4, "keep": 2.4})
    assert pays_pinned(s, big2, lookup, victims, over) is made


def test_value_is_named_and_refused_values_name_it():
    assert_value_named(DM, "room_returns_queue_demote", "demoted")


globals().update(machines("room_returns_queue_demoted", {**DEMOTING, "readmit_charge": DM}))
