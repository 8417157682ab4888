"""`readmit_charge` "room_ranked" and "room_overdue" (kvsaga/scheduler/room_swap.py, `--fit`
round 29): a demoted session's step the gate refuses is admitted again on the pool's check
alone only where the shrink its admission makes brings the admitted load within the tiers
and demotes only sessions the admission order ranks behind it ("room_ranked") or sessions
past their predicted returns ("room_overdue"); else it is charged "uncached". The victims
predicted are the ones the next shrink demotes; a refusal under "room_overdue" is bounded by
the next predicted return; the values are named and refused values named; the scheduler
state machine runs with them under every policy."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.room_swap import READMIT_ROOM_OVERDUE, READMIT_ROOM_RANKED
from tests.sched_helpers import ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import assert_charged_uncached, big_demoted, toks
from tests.scheduler.readmit_common import assert_value_named
from tests.scheduler.test_room_whole import _back_beside_keep

READMIT_ROOM_SWAP = (READMIT_ROOM_RANKED, READMIT_ROOM_OVERDUE)  # round 29's two


def _queued(charge, pause_s, **kw):
    """`big_demoted` (keep 18 blocks and o 13 blocks admitted and paused in a 32-block pool;
    big demoted) with every pause expected to last `pause_s` and big's next step queued at
    2.0: the gate refuses it, and admitting it (12 blocks of whole context plus growth) takes
    the working sets over the tiers until the shrink demotes o, expected back last of the
    two (it paused last). Returns (manager, scheduler, executor, big's step)."""
    m, s, ex, big2 = big_demoted(charge)
    for k, v in kw.items():
        setattr(s, k, v)
    s._expected_pause = lambda sess: pause_s
    s.add(big2, 2.0)
    return m, s, ex, big2


def assert_no_swap_with_both_back(charge, pause_s, wait_s=None):
    """`_queued` (with a learned wait of `wait_s` to be admitted again, if given), then
    keep's and o's next steps queued at 2.0 (both active again): nothing the shrink may
    demote, so no victims and no swap."""
    m, s, ex, big2 = _queued(charge, pause_s)
    if wait_s is not None:
        s._readmit_waits.observe(None, wait_s)
    for sid, base in (("keep", 300), ("o", 700)):
        prev = m.sessions[sid]
        s.add(ToyRequest(sid, list(prev.token_ids) + toks(base + 50, 2), max_new=1,
                         last=False, resumed=True, arrival=2.0, workflow="w"), 2.0)
    assert s._swap_victims(big2, s.lookup(big2), 2.0) is None
    assert not s._readmits_swap(big2, s.lookup(big2), 2.0)


@pytest.mark.parametrize("charge", READMIT_ROOM_SWAP)
def test_the_victims_are_the_shrinks(charge):
    """The shrink the admission makes demotes o alone (the fewest blocks that bring the
    working sets within the tiers, in the shrink's order: o is expected back last)."""
    _, s, _, big2 = _queued(charge, 10.0)
    assert s._committed == 18 + 13
    assert s._swap_victims(big2, s.lookup(big2), 2.0) == ["o"]
    assert s._return_at("o") == pytest.approx(s.manager.sessions["o"].paused_at + 10.0)


@pytest.mark.parametrize("pause_s,ranked,overdue", [(10.0, True, False), (0.1, False, True)])
def test_fifo_rank_and_overdue(pause_s, ranked, overdue):
    """Under the "fifo" order a step's key is its queueing time: o's next step, queued at
    its predicted return (1.2 + 10 s), would sort behind big's (queued at 2.0), so
    "room_ranked" admits big's step, while o is not overdue and "room_overdue" refuses it;
    back at 1.3 (a 0.1 s pause) o would have been admitted first and is overdue at 2.0:
    the other way round. Each admitted step is then charged its whole context, over the
    tiers until its finish, whose shrink demotes no session but the victim predicted and
    big itself (paused then, it is expected back last: the shrink's first pick; the rule
    reads the shrink at admission, while big's step is active)."""
    for charge, admitted in (("room_ranked", ranked), ("room_overdue", overdue),
                             ("uncached", False)):
        m, s, ex, big2 = _queued(charge, pause_s)
        out = s.schedule(2.0, ex)
        assert (big2 in out.admitted) is admitted, charge
        assert ("big" in s._deferred) is not admitted
        if admitted:
            assert s._committed > s.overcommit * s.capacity  # over until the next finish
            ex.run(s, out, 2.0)
            t = 2.1
            while "big" in {r.session_id for r in s.running} or not out.admitted:
                out = s.schedule(t, ex)
                ex.run(s, out, t)
                t += 0.1
            assert "keep" in s.sessions and set(s._deferred) <= {"o", "big"}
            assert len(s._deferred) == 1
            assert s._committed <= s.overcommit * s.capacity
        m.check_integrity()


def test_predicted_order_ranks_by_remaining_work():
    """Under "predicted" the key is ln(predicted remaining work) + queueing time / aging_s:
    o's next step (its context, 41 tokens) would cost less than big's (49 tokens), so with
    o back soon it ranks ahead and "room_ranked" refuses big's step; back long after (its
    queueing time 200 s later is worth more than the cost ratio at aging_s 80) it ranks
    behind, and the swap is made."""
    for pause_s, admitted in ((0.1, False), (200.0, True)):
        _, s, ex, big2 = _queued("room_ranked", pause_s, admission_order="predicted")
        cost_o = s.session_cost("o", "w", s.sessions["o"].context)
        assert cost_o < s.remaining_cost(big2)
        assert s._ranks_below(big2, "o") is admitted
        assert (big2 in s.schedule(2.0, ex).admitted) is admitted


@pytest.mark.parametrize("charge", READMIT_ROOM_SWAP)
def test_no_swap_where_the_shrink_cannot_bring_the_load_within(charge):
    """keep's and o's next steps queued (both active): nothing the shrink may demote, so no
    swap, whatever the ranks (a 10 s pause ranks o behind) or returns (a 0.1 s one: overdue)."""
    for pause_s in (10.0, 0.1):
        assert_no_swap_with_both_back(charge, pause_s)


@pytest.mark.parametrize("charge", READMIT_ROOM_SWAP)
def test_the_load_is_the_shrinks_measure(charge):
    """`_back_beside_keep`: big's whole context (12 blocks) with its 80-token growth prior
    (32 blocks, capped) does not fit beside keep's working set (16 blocks), so under
    `shrink_on` "working_sets" the shrink would demote keep; under "contexts" the shrink
    reads the contexts alone (16 + 12 of 32 blocks): no victim, and the step is admitted on
    room whatever the ranks."""
    m, s, ex, big2 = _back_beside_keep(charge)
    s._expected_pause = lambda sess: 0.0  # keep ranks ahead of big, and is overdue
    s.add(big2, 2.0)
    assert s._swap_victims(big2, s.lookup(big2), 2.0) == ["keep"]
    s.shrink_on = "contexts"
    assert s._swap_victims(big2, s.lookup(big2), 2.0) == []
    assert big2 in s.schedule(2.0, ex).admitted
    m.check_integrity()


def test_overdue_refusal_is_bounded_by_the_next_return():
    """Refused at 2.0 under "room_overdue" (o back at 11.2), the refusal holds until the
    earliest predicted return of a paused admitted session (keep's or o's), and the idle
    simulator's wake-up is no later; once o is overdue the step is admitted. Other values
    add no such timer."""
    m, s, ex, big2 = _queued("room_overdue", 10.0)
    assert big2 not in s.schedule(2.0, ex).admitted
    back = min(s._return_at("keep"), s._return_at("o"))
    assert 2.0 < back < math.inf
    assert s.refusal_until(2.0) <= back and s.wake_time <= back
    t = s._return_at("o")
    assert big2 in s.schedule(t, ex).admitted
    _, r, ex2, b2 = _queued("room_ranked", 0.1)
    assert b2 not in r.schedule(2.0, ex2).admitted
    assert r._overdue_next(2.0) == math.inf
    m.check_integrity()


@pytest.mark.parametrize("charge", READMIT_ROOM_SWAP)
def test_falls_back_to_the_uncached_charge(charge):
    _, s, _, big2 = big_demoted(charge)
    s.add(big2, 2.0)
    assert_charged_uncached(s, big2)


def test_values_are_named_and_refused_values_name_them():
    for v, serve_bad in zip(READMIT_ROOM_SWAP, ("room_overdu", "ranked"), strict=True):
        assert_value_named(v, "room_rank", serve_bad)
    _, s, _, big2 = big_demoted("room_fits")  # not a swap value: never a swap
    s.add(big2, 2.0)
    assert not s._readmits_swap(big2, s.lookup(big2), 2.0)


globals().update(machines("room_ranked", {**DEMOTING, "readmit_charge": "room_ranked"}))
globals().update(machines("room_overdue", {**DEMOTING, "readmit_charge": "room_overdue"}))
