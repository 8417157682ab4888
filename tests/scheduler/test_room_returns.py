"""`readmit_charge` "room_returns" (kvsaga/scheduler/room_swap.py, `--fit` round 31): round
30's priced swap ("room_priced") with each victim predicted back (`_return_at`) before the
shortage the swap covers is predicted to clear (round 23's leave forecast for the swap's
overshoot, `_shortage_clears_at`) charged the learned wait to be admitted again on top of its
recomputation; a victim predicted back at or after it costs its recomputation alone. With
`PRICED_MARGIN` (2) such a charge refuses the swap. Both sides of the rule, the overshoot
forecast, no timer, the fallback, the value's name and the state machines."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.room_swap import (
    PRICED_MARGIN,
    READMIT_ROOM_PRICED,
    READMIT_ROOM_RETURNS,
    READMIT_ROOM_SWAP,
)
from kvsaga.scheduler.working_set import working_set_blocks
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import assert_charged_uncached
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_priced import _price
from tests.scheduler.test_room_swap import _queued


def _clears_in(s, wait_s):
    """Make the leave forecast predict the shortage clears `wait_s` after any `now`, and
    record the overshoots it is asked about."""
    asked: list[float] = []

    def leave_wait_s(over, now, restart=False):
        asked.append(over)
        return wait_s
    s._leave_wait_s = leave_wait_s
    return asked


def assert_clearing_never_earlier(s, dt: float, n: int) -> None:
    """For a few overshoots, the shortage's predicted clearing at `n` instants `dt` apart
    from 2.0 never moves earlier nor before 2.0, and no refusal bound is set (no timer)."""
    for over in (1.0, 8.0, 20.0, 10 ** 6):
        times = [s._shortage_clears_at(over, 2.0 + dt * k) for k in range(n)]
        assert all(a <= b for a, b in zip(times, times[1:], strict=False))
        assert all(t >= 2.0 for t in times)
    assert s._overdue_next(2.0) == math.inf


def test_returns_is_a_swap_value_named_after_round_30s_and_keeps_the_margin():
    assert READMIT_ROOM_RETURNS == "room_returns" and READMIT_ROOM_SWAP[3] == "room_returns"
    assert READMIT_ROOM_PRICED in READMIT_ROOM_SWAP and PRICED_MARGIN == 2.0


@pytest.mark.parametrize("shift,admitted", [(+0.01, True), (0.0, True), (-0.01, False)])
def test_a_victim_back_before_the_shortage_clears_refuses_the_swap(shift, admitted):
    """`_queued`: the swap would demote o alone, predicted back at its pause's start plus
    10 s. The observed wait to be admitted again is far above the margin times o's
    recomputation (round 30's rule swaps). With the shortage predicted to clear just before
    / at o's return, o costs its recomputation alone and the swap is made; just after it, o
    would itself wait to be admitted again, is charged that wait too and the swap is
    refused (big's step waits, charged "uncached")."""
    m, s, ex, big2 = _queued(READMIT_ROOM_RETURNS, 10.0)
    back = s._return_at("o")
    _clears_in(s, back - 2.0 - shift)
    s._readmit_waits.observe(None, 100.0 * PRICED_MARGIN * _price(s, ["o"]) + 1.0)
    out = s.schedule(2.0, ex)
    assert (big2 in out.admitted) is admitted
    assert ("big" in s._deferred) is not admitted
    if admitted:
        assert s._committed > s.overcommit * s.capacity
    m.check_integrity()


@pytest.mark.parametrize("ratio,admitted", [(1.01, True), (0.99, False)])
def test_a_victim_back_after_it_is_priced_as_round_30s(ratio, admitted):
    """o back well after the shortage clears: the price is round 30's (the wait against
    `PRICED_MARGIN` times o's recomputation), just above made, just below refused; and
    "room_priced" answers alike on the same state."""
    for charge in (READMIT_ROOM_RETURNS, READMIT_ROOM_PRICED):
        m, s, ex, big2 = _queued(charge, 10.0)
        _clears_in(s, 0.5)
        s._return_lost, s._return_count = 1.0, 1
        s._observe_return = lambda req, hit: None  # keep the lost share at 1
        s._readmit_waits.observe(None, ratio * PRICED_MARGIN * _price(s, ["o"]))
        assert (big2 in s.schedule(2.0, ex).admitted) is admitted, charge
        m.check_integrity()


def test_the_charged_wait_is_the_learned_one_so_no_margin_above_one_swaps():
    """A victim back early is charged the learned wait itself: at any learned wait the
    price is then above half the wait, so `PRICED_MARGIN` 2 refuses; the same state with
    the victim back late swaps."""
    _, s, _, big2 = _queued(READMIT_ROOM_RETURNS, 10.0)
    lookup = s.lookup(big2)
    back = s._return_at("o")
    victims, over = s._swap_shrink(big2, lookup, 2.0)
    assert victims == ["o"]
    for wait in (1e-3, 1.0, 1e6):
        s._readmit_waits = type(s._readmit_waits)()
        s._readmit_waits.observe(None, wait)
        _clears_in(s, back - 2.0 + 1.0)
        assert not s._swap_pays(big2, lookup, victims, over, 2.0)
        _clears_in(s, back - 2.0 - 1.0)
        assert s._swap_pays(big2, lookup, victims, over, 2.0) is (
            wait > PRICED_MARGIN * s._victims_recompute_s(victims))


def test_the_forecast_is_asked_for_the_swaps_overshoot():
    """The shortage is the load's overshoot with big charged its whole context (the
    shrink's measure, here the working sets) before any victim is demoted."""
    _, s, ex, big2 = _queued(READMIT_ROOM_RETURNS, 10.0)
    lookup = s.lookup(big2)
    victims, over = s._swap_shrink(big2, lookup, 2.0)
    bs = s.manager.block_size
    whole = big2.num_tokens - min(lookup.gpu_hit_blocks * bs, s._shared_tokens("big"))
    assert over == s._committed + s._working_set("w", whole, 0) - s.overcommit * s.capacity
    assert over > 0 and victims == ["o"]
    assert s._swap_victims(big2, lookup, 2.0) == victims
    asked = _clears_in(s, 0.0)
    s._readmit_waits.observe(None, 1e6)
    s.schedule(2.0, ex)
    assert asked == [over]
    assert working_set_blocks(whole, 0.0, 0.0, bs) > 0


def test_refused_while_no_step_cycle_was_seen():
    """Round 23's forecast is unknown (inf) before any step cycle: every victim is predicted
    back before the shortage clears and the swap is refused, however long the learned wait;
    "room_priced" swaps on the same state."""
    for charge, admitted in ((READMIT_ROOM_RETURNS, False), (READMIT_ROOM_PRICED, True)):
        m, s, ex, big2 = _queued(charge, 10.0)
        s._cycles = type(s._cycles)()  # nothing seen
        assert s._shortage_clears_at(1.0, 2.0) == math.inf
        s._readmit_waits.observe(None, 1e6)
        assert (big2 in s.schedule(2.0, ex).admitted) is admitted, charge
        m.check_integrity()


def test_the_shortage_never_clears_earlier_as_time_passes_so_no_timer():
    """With step cycles learned, the predicted clearing time does not move earlier as
    `now` advances (so a refusal stays one until an admission or a finish changes the
    state), and the rule sets no refusal bound or wake-up of its own."""
    _, s, ex, big2 = _queued(READMIT_ROOM_RETURNS, 10.0)
    s._cycles.observe("w", 0.7)
    assert big2 not in s.schedule(2.0, ex).admitted  # no wait learned yet
    assert_clearing_never_earlier(s, 0.37, 40)


def test_the_uncached_fallback():
    """Where it does not swap it charges "uncached"."""
    _, s, ex, big2 = _queued(READMIT_ROOM_RETURNS, 10.0)
    assert big2 not in s.schedule(2.0, ex).admitted
    assert_charged_uncached(s, big2)


def test_value_is_named_and_refused_values_name_it():
    assert_value_named("room_returns", "room_return", "returns")


globals().update(machines("room_returns", {**DEMOTING, "readmit_charge": "room_returns"}))
