"""`readmit_charge` "room_fits" and "room_contexts" (kvsaga/scheduler/decode_stall.py,
`--fit` round 28): a demoted session's step is admitted again on the pool's check alone only
where its session's whole own context fits beside the admitted sessions' working sets
("room_fits") or their own contexts ("room_contexts"), else it is charged "uncached"; every
room value falls back to "uncached" (not "context"); the values are named and refused
values named; the room deficits told to a policy read the same rule; and the scheduler state
machine runs with them under every policy."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.decode_stall import READMIT_ROOM_WHOLE
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.demoting_machine import DEMOTING, machines
from tests.scheduler.helpers import (
    assert_charged_uncached,
    big_demoted,
    manager,
    next_step,
    toks,
    wf,
)
from tests.scheduler.readmit_common import assert_value_named


def _back_beside_keep(charge):
    """big (40 tokens) admitted alone, run and paused, then demoted; keep (60 tokens) admitted
    (nobody else is), run and paused: its context, 16 blocks of the 32-block pool, is all the
    admitted sets hold (paused sessions are charged no growth here). With an 80-token growth
    prior the gate charges big's next step (45 tokens, 40 of them cached) 5 + 80 tokens, 22
    blocks: 16 + 22 > 32, refused; its whole context, 12 blocks, fits beside keep's 16.
    Returns (manager, scheduler, executor, big's next step, not queued yet)."""
    m = manager(32)
    s = wf(m, readmit_charge=charge, paused_growth=False, prior_growth_tokens=80)
    ex = ToyExecutor(m)
    big = ToyRequest("big", toks(100, 40), max_new=1, last=False, workflow="w")
    s.add(big, 0.0)
    for t in (0.0, 0.1):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"big"} and not s.running
    s._demote_session("big", 0.5)
    keep = ToyRequest("keep", toks(300, 60), max_new=1, last=False, workflow="w")
    s.add(keep, 1.0)
    for t in (1.0, 1.1):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"keep"} and not s.running and s._committed == 16
    return m, s, ex, next_step(big, toks(500, 4), 2.0)


@pytest.mark.parametrize("charge,admitted", [
    ("uncached", False), ("room_fits", True), ("room_contexts", True), ("room", True),
    ("room_queue", False)])
def test_whole_context_beside_the_admitted_sets_admits_on_room(charge, admitted):
    """The gate refuses big's step ("uncached"; "room_queue" with one demoted step waiting),
    its whole context fits beside keep's working set and context: "room_fits" and
    "room_contexts" admit it, as "room" does. A rule not applied keeps it waiting."""
    m, s, ex, big2 = _back_beside_keep(charge)
    s.add(big2, 2.0)
    lk = s.lookup(big2)
    assert lk.gpu_hit_blocks == 10  # 40 of its tokens still cached
    if charge in READMIT_ROOM_WHOLE:
        assert s._whole_over("big", big2.num_tokens, lk.gpu_hit_blocks) == 16 + 12 - 32
    out = s.schedule(2.0, ex)
    assert (big2 in out.admitted) is admitted
    assert ("big" in s.sessions) is admitted and ("big" in s._deferred) is not admitted
    if admitted:  # charged its whole context and growth once admitted, as any session
        assert s._committed == 16 + min(-(-(45 + 80) // 4), 32)
    m.check_integrity()


@pytest.mark.parametrize("charge,admitted", [
    ("room", True), ("room_fits", False), ("room_contexts", False), ("uncached", False)])
def test_whole_context_that_does_not_fit_waits(charge, admitted):
    """`big_demoted`: keep's and o's contexts (16 + 11 blocks) are admitted; big's whole
    context (12 blocks) does not fit beside them in the 32-block pool: "room" admits it on
    the pool's check (and the next shrink would demote a paused session for it: the round-27
    cascade), "room_fits" and "room_contexts" do not, nor does the gate."""
    m, s, ex, big2 = big_demoted(charge)
    s.add(big2, 2.0)
    if charge in READMIT_ROOM_WHOLE:
        assert s._whole_over("big", big2.num_tokens, s.lookup(big2).gpu_hit_blocks) > 0
    out = s.schedule(2.0, ex)
    assert (big2 in out.admitted) is admitted
    assert ("big" in s._deferred) is not admitted
    m.check_integrity()


def test_room_fits_reads_the_working_sets_room_contexts_the_contexts():
    """With keep's next step queued, keep is charged its context and its growth (the
    working sets: 32 blocks, capped) but holds only its context (16 blocks): big's whole
    context (12 blocks) fits beside the contexts, not beside the working sets."""
    over = {}
    for charge in READMIT_ROOM_WHOLE:
        m, s, ex, big2 = _back_beside_keep(charge)
        s.add(ToyRequest("keep", toks(300, 61) + toks(800, 4), max_new=1, last=False,
                         resumed=True, arrival=1.5, workflow="w"), 1.5)
        assert s.sessions["keep"].active and s._committed == 32
        assert s._context_blocks() == 16  # queued: its last finish's context, 61 tokens
        over[charge] = s._whole_over("big", big2.num_tokens, s.lookup(big2).gpu_hit_blocks)
    assert over == {"room_fits": 32 + 12 - 32, "room_contexts": 16 + 12 - 32}


@pytest.mark.parametrize("charge", ["room", "room_queue", "room_fits", "room_contexts"])
def test_every_room_value_falls_back_to_the_uncached_charge(charge):
    """Where a room value does not admit on room, the gate charges "uncached" (the part of
    the prompt not cached): the same figures as "uncached", not "context"'s whole-context
    test (which "room_queue" applied before session 27, against its documentation)."""
    m, s, _, big2 = big_demoted(charge)
    s.add(big2, 2.0)
    assert_charged_uncached(s, big2)
    _, ctx, _, c2 = big_demoted("context")
    ctx.add(c2, 2.0)
    assert ctx._readmit_tokens(c2, ctx.lookup(c2))[1] is not None  # "context" differs
    m.check_integrity()


def test_the_told_rooms_read_the_same_rule():
    """A waiting demoted step's room deficit under "room_fits" / "room_contexts" is the
    pool's where its whole context fits (the gate's charge would not: "uncached" tells
    more), and a paused demoted session's reads the rule likewise."""
    _, unc, _, u2 = _back_beside_keep("uncached")
    unc.add(u2, 2.0)
    for charge in READMIT_ROOM_WHOLE:
        m, s, _, big2 = _back_beside_keep(charge)
        paused = s.paused_room_deficit("big", 0)  # its context, 40 tokens, + 80 of growth
        assert paused < unc.paused_room_deficit("big", 0)
        assert paused == s._whole_over("big", len(m.sessions["big"].token_ids) + 80, 10)
        s.add(big2, 2.0)
        assert s.room_deficit(big2, 0) <= 0 < unc.room_deficit(u2, 0)
        # refused where the whole context does not fit either: the gate's figure stands
        _, r, _, b2 = big_demoted(charge)
        _, r_unc, _, bu = big_demoted("uncached")
        r.add(b2, 2.0)
        r_unc.add(bu, 2.0)
        assert r.room_deficit(b2, 0) == r_unc.room_deficit(bu, 0) > 0


def test_values_are_named_and_refused_values_name_them():
    assert_value_named("room_fits", "room_fit", "room_whole")
    assert_value_named("room_contexts", "room_fit", "room_context")
    _, s, _, _ = big_demoted("uncached")
    with pytest.raises(ValueError, match="_whole_over: readmit_charge 'uncached' is not one "
                                         "of 'room_fits', 'room_contexts'"):
        s._whole_over("big", 45, 0)


globals().update(machines("room_fits", {**DEMOTING, "readmit_charge": "room_fits"}))
globals().update(machines("room_contexts", {**DEMOTING, "readmit_charge": "room_contexts"}))
