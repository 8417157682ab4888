"""Session 54 mutation review of the `workflow` scheduler (continuing session 53's,
/work/lanes/findings/s54/mutsched2.md): tests that kill hand mutants the suite let survive,
of whom Agent Fair Share's reclaims may demote and when they have made room
(kvsaga/scheduler/demotion.py `_reclaim_share`, `_reclaim_due`, `_room_after`), of the
undo's share check (`undo_demotion`), of the shrink's wait (`_away_long`), of the
wait and the lost share `readmit_charge` "cost" weighs (kvsaga/scheduler/working_set_gate.py
`_hold_wait_s`, `_observe_return`) and of the cap on a session's expected remaining steps
(kvsaga/scheduler/admission_order.py `SessionLengths`)."""

from __future__ import annotations

import math

import pytest

from kvsaga.scheduler.admission_order import MAX_REMAINING_STEPS, SessionLengths
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, next_step, toks, two_paused, wf
from tests.scheduler.test_tail_guard import _two_tenants_due
from tests.scheduler.test_undo_demotion import _two_tenants


def _a_above_its_share_then_b(b_tokens: int):
    """Tenant A's two paused sessions on a 16-block pool (two tenants: a share of 8 blocks
    each), A0 of 4 blocks and A1 of 8, each with 2 blocks of paused growth kept free
    (`paused_reserve`); then B's first session (`b_tokens` tokens) queued. Returns the
    manager, the scheduler, the executor and B's request."""
    m = manager(16)
    s = wf(m, paused_growth=False, paused_reserve=True, reserve_decode_tokens=0,
           shrink_order="smallest")
    ex = ToyExecutor(m)
    for sid, base, n, at in (("A0", 0, 15, 0.0), ("A1", 100, 31, 0.1)):
        s.add(ToyRequest(sid, toks(base, n), max_new=1, last=False, tenant="A"), at)
        ex.run(s, s.schedule(at, ex), at, tool_s=100.0)
    assert {k: (i.blocks, i.extra) for k, i in s.sessions.items()} == {"A0": (4, 2),
                                                                         "A1": (8, 2)}
    b = ToyRequest("B0", toks(500, b_tokens), max_new=1, last=False, tenant="B")
    s.add(b, 1.0)
    assert s._shares(16) == {"A": 8.0, "B": 8.0}
    assert s._demotion_order(["A0", "A1"]) == ["A0", "A1"]
    return m, s, ex, b


def test_the_reclaim_for_a_tenant_within_its_share_stops_at_the_others_share():
    """Agent Fair Share's reclaim (`_reclaim_share`) demotes another tenant's paused sessions
    only while that tenant is ABOVE its share. B's session (24 tokens: 8 blocks with its
    growth, within B's share) needs both of A's demoted (A0 leaves 8 + 8 + A1's 2 of
    paused growth = 18 > 16): once A0 is, A holds exactly its share, so A1 is kept, and as
    that leaves no room, nothing is demoted and B waits (all or none)."""
    m, s, ex, b = _a_above_its_share_then_b(24)
    out = s.schedule(1.0, ex)
    assert out.admitted == [] and s.num_demotions == 0
    assert set(s.sessions) == {"A0", "A1"} and s.waiting == [b]
    m.check_integrity()


def test_the_reclaim_makes_room_up_to_the_limit_itself():
    """The reclaim's room test (`_room_after`) admits a working set that reaches the tiers'
    limit exactly: B's session of 16 tokens (6 blocks with its growth) beside A1's 8 and
    A1's 2 of paused growth once A0 is demoted is 16 of 16 blocks: admitted, A0 demoted."""
    m, s, ex, b = _a_above_its_share_then_b(16)
    out = s.schedule(1.0, ex)
    assert out.admitted == [b] and s.num_demotions == 1
    assert set(s.sessions) == {"A1", "B0"}
    assert s._committed + s._paused_extra == 16
    m.check_integrity()


def _two_paused_for_cost():
    """p and q (32 tokens each, 8 own blocks) admitted and paused on a 32-block pool under
    `readmit_charge` "cost", one earlier return seen that lost half its context; p's
    demotion deadline 2.0 (now), q's 50.0."""
    m = manager(32)
    s = wf(m, readmit_charge="cost")
    ex = ToyExecutor(m)
    for i, sid in enumerate(("p", "q")):
        s.add(ToyRequest(sid, toks(1000 * i, 31), max_new=1, last=False), 0.0)
        ex.run(s, s.schedule(0.0, ex), 0.0)
    assert {k: (i.context, i.shared, i.active) for k, i in s.sessions.items()} == {
        "p": (32, 0, False), "q": (32, 0, False)}
    s.sessions["p"].demote_at = 2.0  # as `finish` sets it
    s.sessions["q"].demote_at = 50.0
    s._demote_at = 2.0
    s._return_lost, s._return_count = 0.5, 1
    return s


def test_the_cost_wait_is_read_from_the_earliest_deadlines_that_free_the_room():
    """`_hold_wait_s`: the paused sessions pass their demotion deadlines earliest first;
    the wait ends at the deadline of the one that frees the last of the `over` blocks:
    p's (now: 0 s) for up to its 8 blocks, q's (48 s on) for more, never for over 16."""
    s = _two_paused_for_cost()
    for paused in (["p", "q"], ["q", "p"]):
        assert s._hold_wait_s(paused, 1, 2.0) == 0.0
        assert s._hold_wait_s(paused, 8, 2.0) == 0.0
        assert s._hold_wait_s(paused, 9, 2.0) == 48.0
        assert s._hold_wait_s(paused, 16, 2.0) == 48.0
        assert s._hold_wait_s(paused, 17, 2.0) == math.inf


def test_cost_holds_a_return_when_the_session_due_first_frees_its_room_now():
    """The trade "cost" makes (`_churn_outweighs_wait`): a returning context of 80 tokens
    (20 blocks) beside the 16 admitted is 4 over the tiers; p, due now, frees them, so the
    expected wait is 0 s, any churn outweighs it, and the session is held for its whole
    context. Read from q, due in 48 s, the wait would win."""
    s = _two_paused_for_cost()
    assert s._context_blocks() == 16
    assert 0 < s._churn_s(["p", "q"], 4) < 48.0
    assert s._churn_outweighs_wait(80, 2.0) is True


def test_a_sessions_expected_remaining_steps_are_capped():
    """`SessionLengths.remaining` caps its mean at MAX_REMAINING_STEPS (the cost it feeds,
    `predicted_cost`, grows with its square): one finished session of 5,000 steps and the
    prior of 1 give a mean of 2,500.5, read as the cap."""
    lengths = SessionLengths()
    lengths.observe("w", 5000)
    assert MAX_REMAINING_STEPS == 1000
    assert lengths.remaining("w", 0, 1.0) == MAX_REMAINING_STEPS
    assert lengths.remaining("w", 4000, 1.0) == (1.0 + 1000.0) / 2  # below the cap
    assert lengths.remaining("other", 0, 5000.0) == MAX_REMAINING_STEPS


def test_a_demotion_is_undone_when_it_takes_its_tenant_to_exactly_its_share():
    """The undo's share check (`undo_demotion`) refuses only a working set that would take
    its tenant ABOVE its share: tenants a and b share 48 blocks, 24 each; big's context (41
    tokens) and a growth prior of 55 tokens make 24 blocks once undone (undone), 56 tokens
    25 blocks (kept demoted)."""
    for grow, undone in ((55, True), (56, False)):
        m, s = _two_tenants(grow, "a")
        assert s._shares(48) == {"a": 24.0, "b": 24.0}
        assert ("big" in s.sessions) is undone and s.num_undone_demotions == int(undone)
        if undone:
            assert s.sessions["big"].blocks == s._tenant_blocks["a"] == 24
        m.check_integrity()


def test_the_reclaims_room_counts_a_whole_context_beside_the_contexts_left():
    """Under `readmit_charge` "context" a reclaim (`_reclaim_share`, `_reclaim_due`) makes
    room only once the demoted session's whole own context fits beside the admitted
    contexts left (`_room_after`): a and b hold 4 blocks of context each on a 16-block
    pool; a whole context of 8 blocks fits, one of 9 does not, unless a's is demoted."""
    _, s, _, _ = two_paused(prompt_len=12, readmit_charge="context")
    assert {k: i.ctx for k, i in s.sessions.items()} == {"a": 4, "b": 4}
    assert s._committed == 12

    def need(victims=()):
        return 0
    assert s._room_after(need, 8, 16, []) is True
    assert s._room_after(need, 9, 16, []) is False
    assert s._room_after(need, 9, 16, ["a"]) is True
    assert s._room_after(need, None, 16, []) is True  # no whole context to fit


def test_the_shrink_after_its_wait_still_takes_a_session_the_manager_dropped():
    """`shrink_after` holds back the shrink only for sessions paused in the manager
    (`_away_long`): b, dropped by the manager behind the scheduler's back, is not waited
    for. a's step grows the admitted working sets over the pool at 1 s, nobody has been
    away 5 s, and the shrink takes b's charge, not leaving the commitment over the pool
    on a session that no longer exists."""
    m, s, ex, a = two_paused(prompt_len=12, shrink_after=5.0)
    m.end_session("b", now=0.5)
    assert set(s.sessions) == {"a", "b"} and "b" not in m.sessions
    a2 = ToyRequest("a", a.prompt + a.out + toks(50, 30), max_new=1, last=False,
                    resumed=True, arrival=1.0)
    s.add(a2, 1.0)
    for t in (1.0, 2.0):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"a"} and not s._deferred
    assert s._committed == s.sessions["a"].blocks <= s.capacity
    m.check_integrity()


def test_the_lost_share_of_a_return_is_read_past_the_prefix_it_shares():
    """Under "cost" the share of a returning context no longer cached (`_observe_return`)
    counts its own part only: x and y share a 16-token prefix (4 blocks) and x holds 16
    tokens of its own; x back with only the prefix cached lost all its own context, with
    24 tokens cached half of it, with 32 none."""
    m = manager(32)
    s = wf(m, readmit_charge="cost")
    ex = ToyExecutor(m)
    x = ToyRequest("x", toks(0, 16) + toks(100, 16), max_new=1, last=False)
    y = ToyRequest("y", toks(0, 16) + toks(200, 16), max_new=1, last=False)
    for r in (x, y):
        s.add(r, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    assert s._shared_tokens("x") == 16 and len(m.sessions["x"].block_hashes) == 8
    x2 = next_step(x, toks(300, 4), 1.0)
    for hit, lost in ((16, 1.0), (24, 0.5), (32, 0.0)):
        s._returns_seen.clear()
        s._return_lost, s._return_count = 0.0, 0
        s._observe_return(x2, hit)
        assert (s._return_lost, s._return_count) == (lost, 1)


def test_a_due_session_spares_a_tenant_at_exactly_its_share():
    """The tail guard's reclaim (`_reclaim_due`) takes another tenant's paused sessions only
    while that tenant is ABOVE its share: b holds 12 blocks of its 12 of share (24-block
    pool), so the due session c takes its own tenant's a1, though b0 is first in the
    demotion order."""
    s, at = _two_tenants_due(2, 24)
    assert at["c"] == pytest.approx(7.0)
    assert s.num_demotions == 1 and s._times_demoted == {"a1": 1}


def test_a_due_sessions_reclaim_stops_taking_a_tenant_once_it_is_within_its_share():
    """The tail guard's reclaim (`_reclaim_due`) counts down each tenant's blocks as it
    takes them: b holds 12 blocks of its 10.5 of share (b0: 6, b1: 4, b2: 2), a holds a1
    (7). For a's due session c (8 blocks; 27 > 21), b2 is taken first (smallest), which
    leaves b within its share: b1 and b0 are kept and a's own a1 goes."""
    m = manager(21)
    s = wf(m, paused_growth=False, reserve_decode_tokens=0, shrink_order="smallest",
           tail_wait_factor=2.0)
    ex = ToyExecutor(m)
    for i, (sid, tenant, n) in enumerate((("b0", "b", 23), ("b1", "b", 15), ("b2", "b", 7),
                                          ("a1", "a", 27))):
        t = 0.1 * i
        s.add(ToyRequest(sid, toks(1000 * (i + 1), n), max_new=1, last=False,
                         tenant=tenant), t)
        ex.run(s, s.schedule(t, ex), t, tool_s=100.0)
    assert {k: i.blocks for k, i in s.sessions.items()} == {"b0": 6, "b1": 4, "b2": 2,
                                                             "a1": 7}
    c = ToyRequest("c", toks(9000, 24), max_new=1, tenant="a", arrival=1.0)
    s.add(c, 1.0)
    assert s._shares(21) == {"a": 10.5, "b": 10.5}
    assert s._demotion_order(list(s.sessions)) == ["b2", "b1", "b0", "a1"]
    s._holding = c  # the reserve holds for c (its deadline passed)
    assert s._reclaim_due(c, lambda victims=(): 8, 21, 1.0) is True
    assert sorted(s.sessions) == ["b0", "b1"] and s.num_demotions == 2
    m.check_integrity()
