"""`readmit_charge` "room_returns_stay" (kvsaga/scheduler/room_swap.py, `--fit` round 33):
round 31's "room_returns" whose clearing forecast (`_shortage_clears_at`) predicts an admitted
session still there past its predicted leave to stay its expected remaining steps from now
(`LeaveForecast._leave_at`'s `restart`) instead of leaving now. The forecast's two readings,
its monotonicity in `now` (no timer), the decision on a state where only the overdue sessions
make the clearing, identity with "room_returns" where no session is overdue, names and the
state machines."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.room_swap import (
    PRICED_MARGIN,
    READMIT_ROOM_RETURNS,
    READMIT_ROOM_RETURNS_STAY,
    READMIT_ROOM_SWAP,
)
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import decision_trace
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_priced import _price
from tests.scheduler.test_room_returns import assert_clearing_never_earlier
from tests.scheduler.test_room_swap import _queued


def test_stay_is_the_last_swap_value():
    assert READMIT_ROOM_RETURNS_STAY == "room_returns_stay"
    assert READMIT_ROOM_SWAP[5] == READMIT_ROOM_RETURNS_STAY
    assert READMIT_ROOM_RETURNS in READMIT_ROOM_SWAP and PRICED_MARGIN == 2.0


def _span(s, sid):
    """(anchor, expected remaining steps x learned cycle) of admitted `sid`, as `_leave_at`
    reads them: its predicted end is anchor + span."""
    info = s.sessions[sid]
    done = s._steps_seen.get(sid, 0)
    graph = s._graph()
    prior = graph.mean_steps(info.workflow) if graph is not None else done + 1.0
    left = s._lengths.remaining(info.workflow, done, prior)
    anchor = s._last_finish.get(sid, s._started.get(sid))
    return anchor, left * s._cycles.mean(info.workflow)


def test_leave_at_restarts_a_session_past_its_predicted_end():
    """Before its predicted end both readings agree; past it the clamp predicts the session
    leaves now and `restart` its remaining steps from now; both never earlier at a later
    `now`, and a paused session still leaves by its demotion deadline."""
    _, s, _, _ = _queued(READMIT_ROOM_RETURNS_STAY, 10.0)
    s._cycles.observe("w", 0.4)
    info = s.sessions["keep"]
    anchor, span = _span(s, "keep")
    end = anchor + span
    assert span > 0
    info.demote_at = math.inf
    for now in (end - 0.3, end):
        assert s._leave_at("keep", info, now) == s._leave_at("keep", info, now, True) == \
            pytest.approx(end)
    now = end + 0.25
    assert s._leave_at("keep", info, now) == now
    assert s._leave_at("keep", info, now, True) == pytest.approx(now + span)
    for restart in (False, True):
        times = [s._leave_at("keep", info, end - 1.0 + 0.05 * k, restart) for k in range(80)]
        assert all(a <= b for a, b in zip(times, times[1:], strict=False))
    info.demote_at = now + 0.1  # paused: by its deadline if that comes first
    assert s._leave_at("keep", info, now, True) == pytest.approx(now + 0.1)


def _overdue_state(charge, where):
    """`_queued` with a learned cycle short enough that both admitted sessions (keep and o,
    paused) are past their predicted ends at 2.0, and a learned wait far above the margin
    times o's recomputation. o (the swap's only victim) is expected back halfway between
    2.0 and the restarted clearing ("before") or 0.1 s after it ("after"). Returns
    (manager, scheduler, executor, big's step, the restarted clearing)."""
    m, s, ex, big2 = _queued(charge, 10.0)
    s._cycles.observe("w", 1.0)
    spans = {sid: _span(s, sid) for sid in s.sessions}
    c = 0.9 * min((2.0 - a) / sp for a, sp in spans.values())
    s._cycles = type(s._cycles)()
    s._cycles.observe("w", c)
    for sid, (a, sp) in spans.items():
        assert a + sp * c < 2.0  # past its predicted end at 2.0
        s.sessions[sid].demote_at += 1000.0  # deadlines far off, in the same order
    _, over = s._swap_shrink(big2, s.lookup(big2), 2.0)
    restarted = 2.0 + s._leave_wait_s(over, 2.0, True)
    assert restarted > 2.0
    back = (2.0 + restarted) / 2 if where == "before" else restarted + 0.1
    paused_at = s.manager.sessions["o"].paused_at
    s._expected_pause = lambda sess: back - paused_at
    s._readmit_waits.observe(None, 100.0 * PRICED_MARGIN * _price(s, ["o"]) + 1.0)
    return m, s, ex, big2, restarted


@pytest.mark.parametrize("where,stay_swaps", [("before", False), ("after", True)])
def test_overdue_sessions_no_longer_clear_the_shortage_now(where, stay_swaps):
    """Both admitted sessions are past their predicted ends: "room_returns" predicts the
    shortage clears now (2.0), so o, back after 2.0, costs its recomputation alone and the
    swap is made (big's step admitted on room, o left for the shrink). "room_returns_stay"
    predicts them to stay their remaining steps from 2.0: o back before that clearing would
    wait to be admitted again and refuses the swap (big's step waits); back after it, the
    swap is made."""
    for charge, admitted in ((READMIT_ROOM_RETURNS, True),
                             (READMIT_ROOM_RETURNS_STAY, stay_swaps)):
        m, s, ex, big2, restarted = _overdue_state(charge, where)
        lookup = s.lookup(big2)
        victims, over = s._swap_shrink(big2, lookup, 2.0)
        assert victims == ["o"] and over > 0
        clears = s._shortage_clears_at(over, 2.0)
        assert clears == (2.0 if charge == READMIT_ROOM_RETURNS else restarted)
        assert (big2 in s.schedule(2.0, ex).admitted) is admitted, charge
        assert ("big" in s._deferred) is not admitted
        m.check_integrity()


@pytest.mark.parametrize("wait_scale", [100.0, 0.5])
def test_without_an_overdue_session_it_decides_as_room_returns(wait_scale):
    """With no admitted session past its predicted end (a long learned cycle), the two
    values read the same clearing and make the same decisions over a few steps."""
    runs = []
    for charge in (READMIT_ROOM_RETURNS, READMIT_ROOM_RETURNS_STAY):
        m, s, ex, big2 = _queued(charge, 10.0)
        s._cycles.observe("w", 50.0)
        _, over = s._swap_shrink(big2, s.lookup(big2), 2.0)
        clears = s._shortage_clears_at(over, 2.0)
        s._readmit_waits.observe(None, wait_scale * PRICED_MARGIN * _price(s, ["o"]) + 1e-3)
        runs.append((decision_trace(m, s, ex), clears))
    assert runs[0] == runs[1]


def test_the_restarted_clearing_never_moves_earlier_so_no_timer():
    _, s, _, _ = _queued(READMIT_ROOM_RETURNS_STAY, 10.0)
    s._cycles.observe("w", 0.3)
    assert_clearing_never_earlier(s, 0.11, 60)


def test_value_is_named_and_refused_values_name_it():
    assert_value_named("room_returns_stay", "room_return_stay", "stay")


globals().update(machines("room_returns_stay",
                          {**DEMOTING, "readmit_charge": "room_returns_stay"}))
