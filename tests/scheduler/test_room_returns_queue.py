"""`readmit_charge` "room_returns_queue" (kvsaga/scheduler/room_swap.py, `--fit` round 34): the
swap priced by forecasts on both sides, both read off round 33's restarted leave forecast
(`LeaveForecast._leave_wait_s` with `restart`): the demoted step's own wait for the room it
lacks (`_swap_gain_s`) against each victim's wait on its return (`_victim_wait_s`: the room
it and the waiting steps sorting ahead of it need, predicted gone after the swap, less its
time away) plus `PRICED_MARGIN` times the victims' recomputation. The forecast's inputs (the
overshoot, the victims left out, the queue ahead by the admission key), both sides of the
decision, the unknown forecast, names and the state machines."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.room_swap import (
    PRICED_MARGIN,
    READMIT_ROOM_RETURNS_QUEUE,
    READMIT_ROOM_RETURNS_QUEUE_SEEN,
    READMIT_ROOM_RETURNS_STAY,
    READMIT_ROOM_SWAP,
)
from tests.sched_helpers import ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import toks
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_priced import _price
from tests.scheduler.test_room_swap import _queued

Q = READMIT_ROOM_RETURNS_QUEUE
SEEN = READMIT_ROOM_RETURNS_QUEUE_SEEN


def test_queue_is_named_among_the_swap_values_and_keeps_the_margin():
    assert Q == "room_returns_queue" and READMIT_ROOM_SWAP[-8] == Q
    assert READMIT_ROOM_SWAP[-7] == SEEN == "room_returns_queue_seen"
    assert READMIT_ROOM_RETURNS_STAY in READMIT_ROOM_SWAP and PRICED_MARGIN == 2.0


def _leaves(s, wait_of):
    """Make the leave forecast answer `wait_of(over)` seconds at any `now`, and record what it
    is asked: (over, restart, the sessions it leaves out)."""
    asked: list[tuple[float, bool, frozenset]] = []

    def leave_wait_s(over, now, restart=False, skip=()):
        asked.append((over, restart, frozenset(skip)))
        return wait_of(over)
    s._leave_wait_s = leave_wait_s
    return asked


def o_swap_price(s) -> float:
    """Pin the returns' lost share at 1 (one return seen, all of it lost, and nothing more
    learned) and give o's swap price: `PRICED_MARGIN` times its recomputation."""
    s._return_lost, s._return_count = 1.0, 1
    s._observe_return = lambda req, hit: None
    return PRICED_MARGIN * _price(s, ["o"])


def _swap(s, big2):
    lookup = s.lookup(big2)
    victims, over = s._swap_shrink(big2, lookup, 2.0)
    assert victims == ["o"] and over > 0
    return lookup, victims, over


def pays_pinned(s, big2, lookup, victims, over, now=2.0, victim_wait_s=0.0) -> bool:
    """`_swap_pays_queue`'s answer at `now` with the gain pinned at 5 s and every victim's
    forecast wait at `victim_wait_s`."""
    s._swap_gain_s = lambda over_, now_: 5.0
    s._victim_wait_s = lambda *a, **k: victim_wait_s
    return s._swap_pays_queue(big2, lookup, victims, over, now)


def test_the_victims_wait_is_its_room_predicted_gone_less_its_time_away():
    """`_queued`: the swap admits big's step and demotes o alone (back at its pause's start
    plus 10 s). With nothing else waiting, o needs back the room it frees: the load after the
    swap plus its own blocks beyond the tiers is the overshoot itself. The forecast is asked
    for that, with the restart and o left out (its room is counted as freed); o's wait is
    that clearing less its return, and 0 when the room is back before it returns."""
    _, s, _, big2 = _queued(Q, 10.0)
    _, victims, over = _swap(s, big2)
    back = s._return_at("o")
    for wait, expected in ((back - 2.0 + 3.5, 3.5), (back - 2.0 - 1.0, 0.0)):
        asked = _leaves(s, lambda o, w=wait: w)
        assert s._victim_wait_s(big2, "o", victims, over, 2.0) == pytest.approx(expected)
        assert asked == [(over, True, frozenset({"o"}))]
    assert s._shrink_frees(s.sessions["o"]) == s.sessions["o"].blocks
    s.shrink_on = "contexts"
    assert s._shrink_frees(s.sessions["o"]) == s._own_blocks(s.sessions["o"])


def _new_session(s, sid, tokens, at):
    r = ToyRequest(sid, toks(2000 + 10 * len(sid), tokens), max_new=1, last=False,
                   arrival=at, workflow="w")
    s.add(r, at)
    return r


def test_the_queue_ahead_of_the_victim_adds_its_room():
    """A new session waiting since 1.5 sorts ahead of o's next step (queued at its return,
    1.2 + 10 s) under the "fifo" order, whose key is the queueing time: o then needs the
    room that session's admission charges on top. One queued after o's return does not;
    under `readmit_order` "first" (demoted steps ahead of every new session, "predicted"
    order) neither does. The step being admitted and the victims' own steps never count."""
    _, s, _, big2 = _queued(Q, 10.0)
    _, victims, over = _swap(s, big2)
    back = s._return_at("o")
    early = _new_session(s, "n1", 30, 1.5)
    late = ToyRequest("n2", toks(3000, 30), max_new=1, last=False, arrival=back + 1.0,
                      workflow="w")
    s._pending[None].append(late)  # queued after o's return (only its key matters here)
    asked = _leaves(s, lambda o: 0.0)
    s._victim_wait_s(big2, "o", victims, over, 2.0)
    charge = s._working_set("w", early.num_tokens, 0)
    assert charge > 0
    assert asked[-1][0] == pytest.approx(over + charge)
    keys = s._waiting_keys(big2, victims)
    assert sorted(b for _, b in keys) == sorted([charge, s._working_set("w", 30, 0)])
    assert all(k != math.inf for k, _ in keys)
    s.admission_order, s.readmit_order = "predicted", "first"
    assert all(k == math.inf for k, _ in s._waiting_keys(big2, victims))
    s._victim_wait_s(big2, "o", victims, over, 2.0)
    assert asked[-1][0] == pytest.approx(over)


@pytest.mark.parametrize("margin,admitted", [(+0.01, True), (-0.01, False)])
def test_the_swap_is_made_where_the_gain_exceeds_the_victims_waits_and_recomputation(
        margin, admitted):
    """The step's own forecast wait (the leave forecast for the overshoot) against o's
    forecast wait on its return plus `PRICED_MARGIN` times its recomputation: just above,
    the swap is made (big's step admitted on room, over the tiers until the next finish);
    just below, refused (big's step waits, still demoted)."""
    m, s, ex, big2 = _queued(Q, 10.0)
    price = o_swap_price(s)
    _, victims, over = _swap(s, big2)
    back = s._return_at("o")
    o_wait = 0.75
    gain = o_wait + price + margin
    # the step's own wait (asked for the overshoot) and o's clearing (the same overshoot,
    # o left out) told apart by `skip`
    calls = []

    def leave_wait_s(over_, now, restart=False, skip=()):
        calls.append(frozenset(skip))
        return (back - 2.0 + o_wait) if skip else gain
    s._leave_wait_s = leave_wait_s
    assert s._swap_gain_s(over, 2.0) == pytest.approx(gain)
    assert s._victim_wait_s(big2, "o", victims, over, 2.0) == pytest.approx(o_wait)
    out = s.schedule(2.0, ex)
    assert (big2 in out.admitted) is admitted
    assert ("big" in s._deferred) is not admitted
    if admitted:
        assert s._committed > s.overcommit * s.capacity
    assert frozenset() in calls and frozenset({"o"}) in calls
    m.check_integrity()


def test_a_victim_back_after_its_room_is_priced_at_its_recomputation_alone():
    """o's room predicted back long before o returns (its 10 s pause): its wait is 0, so the
    swap is made at any gain above `PRICED_MARGIN` times its recomputation, and refused
    below, with no learned wait needed (round 31 refused before one was observed)."""
    for factor, admitted in ((1.05, True), (0.95, False)):
        m, s, ex, big2 = _queued(Q, 10.0)
        price = o_swap_price(s)
        _leaves(s, lambda over, p=price * factor: p)
        assert s._readmit_waits.mean(None) is None
        assert (big2 in s.schedule(2.0, ex).admitted) is admitted, factor
        m.check_integrity()


def test_refused_while_the_forecast_is_unknown():
    """Before any step cycle the leave forecast is inf: the gain is unknown, no swap, whatever
    the victims' waits; with a cycle learned the same state prices the swap."""
    refused_while_the_forecast_is_unknown(Q)


def refused_while_the_forecast_is_unknown(charge):
    """`_queued` under `charge` with no step cycle learned: the gain is inf and the swap is
    refused (also test_room_returns_queue_leave.py's)."""
    m, s, ex, big2 = _queued(charge, 10.0)
    s._cycles = type(s._cycles)()
    lookup, victims, over = _swap(s, big2)
    assert s._swap_gain_s(over, 2.0) == math.inf
    assert not s._swap_pays_queue(big2, lookup, victims, over, 2.0)
    assert big2 not in s.schedule(2.0, ex).admitted
    m.check_integrity()


def test_the_real_forecast_restarts_and_skips_the_victims():
    """On the real leave forecast (a learned cycle): the step's gain is round 33's restarted
    clearing (`_shortage_clears_at` under "room_returns_stay") and o's wait reads the
    clearing without o, so never less than the clearing with it, less o's time away."""
    _, s, _, big2 = _queued(Q, 10.0)
    s._cycles.observe("w", 0.4)
    _, victims, over = _swap(s, big2)
    _, stay, _, big3 = _queued(READMIT_ROOM_RETURNS_STAY, 10.0)
    stay._cycles.observe("w", 0.4)
    assert 2.0 + s._swap_gain_s(over, 2.0) == pytest.approx(stay._shortage_clears_at(over, 2.0))
    back = s._return_at("o")
    without = s._leave_wait_s(over, 2.0, True, skip=["o"])
    assert without >= s._leave_wait_s(over, 2.0, True)
    assert s._victim_wait_s(big2, "o", victims, over, 2.0) == pytest.approx(
        max(2.0 + without - back, 0.0))


def test_value_is_named_and_refused_values_name_it():
    assert_value_named(Q, "room_return_queue", "queue")


@pytest.mark.parametrize("seen_scale,admitted", [(None, False), (0.9, False), (1.1, True),
                                                 (100.0, True)])
def test_seen_bounds_the_gain_by_the_waits_seen(seen_scale, admitted):
    """"room_returns_queue_seen": the same state, o's room back before it returns (its wait
    0) and a forecast gain of 10x its price: "room_returns_queue" swaps; the bounded value
    refuses before any wait to be admitted again was seen, and with one seen swaps where
    that wait exceeds the price (the gain is the smaller of the two), not below it."""
    for charge, want in ((Q, True), (SEEN, admitted)):
        m, s, ex, big2 = _queued(charge, 10.0)
        price = o_swap_price(s)
        _leaves(s, lambda over, p=price: 10.0 * p)  # o's room back long before its return
        if seen_scale is not None:
            s._readmit_waits.observe(None, seen_scale * price)
        assert (big2 in s.schedule(2.0, ex).admitted) is want, (charge, seen_scale)
        m.check_integrity()


def test_value_seen_is_named_and_refused_values_name_it():
    assert_value_named(SEEN, "room_returns_queue_sen", "queue_seen")


globals().update(machines("room_returns_queue", {**DEMOTING, "readmit_charge": Q}))
globals().update(machines("room_returns_queue_seen", {**DEMOTING, "readmit_charge": SEEN}))
