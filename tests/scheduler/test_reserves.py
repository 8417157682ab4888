"""The `workflow` gate's reserves (`paused_reserve`, `growth_reserve`;
kvsaga/scheduler/working_set_gate.py) on the paths that demote to make room: the pause
deadline (`_demote`), Agent Fair Share with two tenants (`_reclaim_share`) and the tail
guard (`_reclaim_due`). A demoted session's paused growth and growth variance leave the
reserves with it, and the reserves are nobody's share: each test's session was refused, or
more sessions were demoted than needed, while the gate read them stale or charged them to
the tenant asking."""

from __future__ import annotations

import pytest

from kvsaga.scheduler.working_set import GrowthTable
from tests.sched_helpers import ToyExecutor, ToyRequest, drive
from tests.scheduler.helpers import manager, toks, wf


def _paused_then_c(c_tokens: int, c_tenant: str | None = None, **kw):
    """a (20 tokens) at 0 and b (20 tokens) at 5, both of tenant x, run to a pause on a
    16-block manager (each charged its 6 context blocks, its 2 blocks of growth to come kept
    free by `paused_reserve`); c (`c_tokens`) arrives at 12, when a's pause deadline
    (`demote_min_s` 10 s after its pause at 0, `demote_factor` 0; `kw` may override them)
    has passed and b's has not.
    Returns (scheduler, who was admitted at c's arrival, the committed blocks and paused
    growth kept just after)."""
    m = manager(16)
    kw.setdefault("demote_min_s", 10.0)
    s = wf(m, paused_growth=False, growth_charge="remaining", paused_reserve=True,
           demote_factor=0.0, **kw)
    ex = ToyExecutor(m)
    for t, sid, base in ((0.0, "a", 0), (5.0, "b", 100)):
        s.add(ToyRequest(sid, toks(base, 20), max_new=1, last=False, tenant="x",
                         arrival=t), t)
        ex.run(s, s.schedule(t, ex), t)
    assert s._committed == 12 and s._paused_extra == 4
    s.add(ToyRequest("c", toks(500, c_tokens), max_new=1, last=False, tenant=c_tenant,
                     arrival=12.0), 12.0)
    out = s.schedule(12.0, ex)
    after = s._committed, s._paused_extra
    ex.run(s, out, 12.0)
    m.check_integrity()
    return s, [r.session_id for r in out.admitted], after


def test_a_session_demoted_at_its_deadline_takes_its_paused_growth_with_it():
    """c (24 tokens: 7 blocks with its 1-token reply) does not fit beside a and b and
    their growth (12 + 7 + 4). a's pause deadline passed: demoting it leaves 6 committed,
    b's 2 of growth kept: 6 + 7 + 2 <= 16, so c is admitted (the gate had kept a's 2 too
    after a was gone: a demoted for nothing, and c refused)."""
    s, admitted, after = _paused_then_c(24)
    assert s._times_demoted == {"a": 1}
    assert admitted == ["c"]
    assert after == (6 + 7, 2)


def test_the_paused_reserve_is_not_charged_to_the_tenant_asking():
    """Two tenants, equal weights: y's share is 8 blocks. c (y, 16 tokens: 5 blocks) fits
    in it; the 4 blocks of x's paused growth are kept for x, not charged to y. x holds 12,
    above its 8: b (expected back last) is demoted (6 + 5 + 2 <= 16) and c admitted."""
    s, admitted, after = _paused_then_c(16, c_tenant="y", tenant_weights={"x": 1.0, "y": 1.0},
                                 demote_min_s=100.0)
    assert admitted == ["c"]
    assert s._times_demoted == {"b": 1}
    assert after == (6 + 5, 2)


def test_fair_share_demotes_only_what_the_room_needs_with_the_reserve():
    """y weighs 3 (share 12), x 1 (share 4). c (y, 28 tokens: 8 blocks) needs b (expected
    back last) demoted: 6 + 8 and a's 2 of growth fill 16, b's 2 gone with b. Counting b's
    growth as still kept (6 + 8 + 4 > 16) demoted a too, for nothing."""
    s, admitted, after = _paused_then_c(28, c_tenant="y", tenant_weights={"x": 1.0, "y": 3.0},
                                 demote_min_s=100.0)
    assert admitted == ["c"]
    assert s._times_demoted == {"b": 1}
    assert after == (6 + 8, 2)


def test_the_tail_guard_demotes_only_what_the_room_needs_with_the_reserve():
    """As tests/scheduler/test_tail_guard.py's due session, with `paused_reserve`: a and b
    (12 tokens) paused hold 4 blocks each, 2 more of growth each kept free; c (32 tokens:
    9 blocks with the 3-token reply z showed) becomes due at 7. Demoting a leaves
    4 + 9 + 2 <= 16: one demotion (the stale reserve, 4 + 9 + 4, took b too)."""
    s = wf(manager(16), max_wait_s=1e6, tail_wait_factor=2.0, paused_growth=False,
           growth_charge="remaining", paused_reserve=True)
    arrivals = [(0.0, ToyRequest("z", toks(0, 8), max_new=3, arrival=0.0)),
                (0.0, ToyRequest("a", toks(100, 12), max_new=1, last=False, arrival=0.0)),
                (0.0, ToyRequest("b", toks(200, 12), max_new=1, last=False, arrival=0.0)),
                (3.0, ToyRequest("c", toks(300, 32), max_new=1, arrival=3.0))]
    admitted, _ = drive(s, arrivals)
    at = dict((sid, t) for t, sid in admitted)
    assert at["c"] == pytest.approx(7.0)
    assert s.num_demotions == 1


def test_a_tool_seen_once_keeps_the_workflows_spread():
    """One observation has no spread: until a tool has two, its steps' variance is the
    workflow's (else a session paused on a new tool would get no `growth_reserve`)."""
    g = GrowthTable(8.0, 0.1)
    g.observe("w", 4.0, "search")
    g.observe("w", 28.0, "fetch")
    assert g.var("w") > 0
    assert g.var("w", "fetch") == g.var("w")  # fetch seen once
    assert g.mean("w", "fetch") == 28.0  # its mean is taken from one
    g.observe("w", 20.0, "fetch")
    assert g.var("w", "fetch") == g.by_tool["w", "fetch"].var == pytest.approx(16.0)
    assert g.var("w", "new") == g.var("w")
