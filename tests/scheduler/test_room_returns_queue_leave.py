"""`readmit_charge` "room_returns_queue_leave" (kvsaga/scheduler/room_swap.py, session 32,
`--fit` round 36): "room_returns_queue" whose forecast of a victim's wait on its return lets
the steps queued ahead of the victim leave again. Under "room_returns_queue" a step ahead is
charged its room as if it stayed for ever; here the queue ahead and then the victim are
admitted in order as room frees, and each step admitted leaves its expected stay later
(`_stay_s`: its expected remaining steps times its workflow's learned cycle, the leave
forecast anchored at its admission). The forecast against hand-worked timelines, its
equality with round 34's where nothing queued ahead leaves, both sides of the decision,
names and the state machines."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.room_swap import (
    READMIT_ROOM_RETURNS_QUEUE,
    READMIT_ROOM_RETURNS_QUEUE_LEAVE,
    READMIT_ROOM_RETURNS_QUEUES,
    READMIT_ROOM_SWAP,
)
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_returns_queue import (
    _new_session,
    _swap,
    o_swap_price,
    refused_while_the_forecast_is_unknown,
)
from tests.scheduler.test_room_swap import _queued

Q = READMIT_ROOM_RETURNS_QUEUE
L = READMIT_ROOM_RETURNS_QUEUE_LEAVE


def test_leave_follows_the_seen_value():
    assert L == "room_returns_queue_leave" and READMIT_ROOM_SWAP[-6] == L
    assert READMIT_ROOM_RETURNS_QUEUES[:3] == (Q, "room_returns_queue_seen", L)


def _times(s, leave_at, stay):
    """Make the admitted sessions leave at `leave_at[sid]` (whatever `now`) and every waiting
    step stay `stay` seconds once admitted."""
    s._leave_at = lambda sid, info, now, restart=False: leave_at[sid]
    s._stay_s = lambda sid, workflow: stay


def _state(charge, tokens, pause_s=10.0):
    """`_queued` (keep 16 own blocks and o 11 admitted, paused; big's demoted step at 2.0
    swaps o out, overshoot 13, o freeing its 13-block working set) with a new session n1
    waiting since 1.5 (`tokens` tokens), ahead of o's next step under the "fifo" order."""
    m, s, ex, big2 = _queued(charge, pause_s)
    lookup, victims, over = _swap(s, big2)
    assert (over, s._own_blocks(s.sessions["keep"]), s._shrink_frees(s.sessions["o"])) == (
        13, 16, 13)
    n1 = _new_session(s, "n1", tokens, 1.5)
    return m, s, ex, big2, victims, over, s._working_set("w", n1.num_tokens, 0)


def test_a_step_ahead_that_leaves_frees_the_victims_room():
    """n1 (30 tokens, 10 blocks) ahead of o: after the swap the tiers are full (the
    overshoot is o's room), so o needs n1's 10 blocks and its own 13 back; keep (16) leaving
    at 3.0 and o's return at 11.2 (a 10 s pause). Round 34's forecast keeps n1 for ever:
    keep's 16 blocks never cover 23, the wait is inf. Here n1 is admitted at 3.0 (16 free,
    6 left) and leaves `stay` later, when o's 13 fit: o is admitted at 3.0 + stay, its wait
    that less its return (0 before it)."""
    _, s, _, big2, victims, over, charge = _state(L, 30)
    assert charge == 10
    back = s._return_at("o")
    for stay, wait in ((1.0, 0.0), (20.0, 3.0 + 20.0 - back), (math.inf, math.inf)):
        _times(s, {"keep": 3.0, "o": 100.0}, stay)
        assert s._victim_wait_leave_s(big2, "o", victims, over, 2.0) == pytest.approx(wait)
        assert s._victim_wait_s(big2, "o", victims, over, 2.0) == math.inf


def test_without_stays_it_is_round_34s_forecast():
    """A step ahead of 3 blocks (1 token): keep's 16 blocks cover o's 3 + 13. With every
    stay inf (nothing queued leaves) the forecast is round 34's exactly, at keep's leave less
    o's return (pauses of 0.6 and 1.5 s: o back at 1.6 or 2.5, after n1 queued), and so it
    is with a stay
    too long to matter; a short stay changes nothing here either (keep frees all at once).
    With the queue empty both read the same clearing."""
    for pause in (0.6, 1.5):
        _, s, _, big2, victims, over, charge = _state(L, 1, pause)
        assert charge == 3
        back = s._return_at("o")
        assert [b for k, b, _ in s._waiting_steps(big2, victims) if k < back] == [3]
        for stay in (math.inf, 50.0, 0.1):
            _times(s, {"keep": 4.0, "o": 100.0}, stay)
            assert s._victim_wait_leave_s(big2, "o", victims, over, 2.0) == pytest.approx(
                s._victim_wait_s(big2, "o", victims, over, 2.0))
            assert s._victim_wait_s(big2, "o", victims, over, 2.0) == pytest.approx(
                max(4.0 - back, 0.0))
        s._pending[None].clear()
        s._pending[None].append(big2)
        assert s._waiting_steps(big2, victims) == []
        assert s._victim_wait_leave_s(big2, "o", victims, over, 2.0) == pytest.approx(
            s._victim_wait_s(big2, "o", victims, over, 2.0))


def test_the_queue_is_admitted_in_key_order_each_leaving_after_its_own_admission():
    """Two steps ahead of o (back at 11.0: n1 30 tokens, 10 blocks, since 1.5; n2 1 token,
    3 blocks, since 1.6) and keep leaving at 3.0: n1 is admitted at 3.0 (6 left), n2 then (3
    left), each leaving `stay` (10 s) later, when o's 13 fit (3 + 10 = 13): o waits 13.0 -
    11.0. One queued after o's return (n3, since 12.0) never counts."""
    _, s, _, big2, victims, over, _ = _state(L, 30)
    n2 = _new_session(s, "n2", 1, 1.6)
    _new_session(s, "n3", 30, 12.0)
    assert s._working_set("w", n2.num_tokens, 0) == 3
    back = s._return_at("o")
    assert back == pytest.approx(11.0)
    _times(s, {"keep": 3.0, "o": 100.0}, 10.0)
    assert s._victim_wait_leave_s(big2, "o", victims, over, 2.0) == pytest.approx(2.0)
    steps = s._waiting_steps(big2, victims)
    assert [(k, b) for k, b, _ in steps] == s._waiting_keys(big2, victims)
    assert sorted(steps) == [(1.5, 10, 10.0), (1.6, 3, 10.0), (12.0, 10, 10.0)]


def test_the_stay_is_the_leave_forecast_from_admission():
    """`_stay_s`: inf before any step cycle; then the expected remaining steps (the graph-less
    prior: one more step, pooled with the ended sessions' lengths) times the learned cycle."""
    _, s, _, _, _, _, _ = _state(L, 30)
    assert s._stay_s("n1", "w") == math.inf
    s._cycles.observe("w", 0.4)
    assert s._stay_s("n1", "w") == pytest.approx(
        s._lengths.remaining("w", 0, 1.0) * 0.4)
    s._lengths.observe("w", 5)
    assert s._stay_s("n1", "w") == pytest.approx((1.0 + 5.0) / 2 * 0.4)


@pytest.mark.parametrize("stay,admitted", [(1.0, True), (50.0, False)])
def test_the_swap_round_34_refuses_is_made_where_the_queue_leaves_in_time(stay, admitted):
    """n1 (10 blocks) ahead of o, keep leaving at 2.0 + gain: the step's own wait for its
    13 blocks is that gain (keep's 16 cover it), well above twice o's recomputation. Round
    34's value refuses (o's forecast wait inf: n1 never leaves); this one swaps where n1
    leaves before o returns (a stay of 1 s: o's wait 0), and refuses where o would wait
    longer than the gain (a stay of 50 s)."""
    for charge, want in ((Q, False), (L, admitted)):
        m, s, ex, big2, victims, over, _ = _state(charge, 30)
        gain = o_swap_price(s) + 1.0
        _times(s, {"keep": 2.0 + gain, "o": 100.0}, stay)
        assert s._swap_gain_s(over, 2.0) == pytest.approx(gain)
        out = s.schedule(2.0, ex)
        assert (big2 in out.admitted) is want, (charge, stay)
        assert ("big" in s._deferred) is not want
        m.check_integrity()


def test_refused_while_the_forecast_is_unknown():
    """Before any step cycle the gain is inf (unknown): no swap, as round 34's."""
    refused_while_the_forecast_is_unknown(L)


def test_value_is_named_and_refused_values_name_it():
    assert_value_named(L, "room_returns_queue_leaves", "queue_leave")


globals().update(machines("room_returns_queue_leave", {**DEMOTING, "readmit_charge": L}))
