"""`workflow` admission: working sets that must fit, demotion of sessions away too long,
idle admission, backfilling, warm resumed steps first, growth learning, forgetting."""

from __future__ import annotations

import pytest

from kvsaga.pool import CACHED
from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest, drive
from tests.scheduler.helpers import manager, scheduler_state, toks, two_paused, wf


def test_workflow_admits_a_new_session_only_while_working_sets_fit():
    m = manager(16)  # 64 tokens
    s = wf(m)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 20), max_new=2, last=False)
    b = ToyRequest("b", toks(100, 20), max_new=2, last=False)
    c = ToyRequest("c", toks(200, 20), max_new=2, last=False)
    for r in (a, b, c):
        s.add(r, 0.0)
    out = s.schedule(0.0, ex)
    # each needs blocks(20 + 8) = 7: a and b fit 16, c would make 21
    assert [r.session_id for r in out.admitted] == ["a", "b"]
    assert s.waiting == [c] and s._committed == 14
    ex.run(s, out, 0.0)
    out = s.schedule(1.0, ex)
    assert not out.admitted
    done = ex.run(s, out, 1.0)
    assert {r.session_id for r in done} == {"a", "b"}  # paused, still admitted
    out = s.schedule(2.0, ex)
    assert not out.admitted  # c still waits: a and b keep their working sets across pauses
    # a's next step goes first once it arrives, although c waited longer
    a2 = ToyRequest("a", a.prompt + a.out + toks(50, 3), max_new=2, resumed=True)
    s.add(a2, 3.0)
    assert s.schedule(3.0, ex).admitted == [a2]


def test_workflow_demotes_a_session_away_far_longer_than_predicted():
    _, s, ex, a = two_paused(demote_factor=2.0, demote_min_s=1.0)  # tool expected: 1 s
    c = ToyRequest("c", toks(200, 20), max_new=1)
    s.add(c, 0.5)
    assert not s.schedule(0.5, ex).admitted
    assert not s.schedule(2.9, ex).admitted  # 2.9 < 2 x 1 s + 1 s
    assert s.schedule(3.0, ex).admitted == [c]
    assert s.num_demotions == 2 and "a" not in s.sessions
    # a demoted session's next step must be admitted again, ahead of new ones of its tenant
    a2 = ToyRequest("a", a.prompt + a.out + [7], max_new=1, resumed=True)
    d = ToyRequest("d", toks(300, 4), max_new=1)
    s.add(d, 3.0)
    s.add(a2, 3.0)
    assert s.waiting == [a2, d]


def test_workflow_admits_when_every_admitted_session_is_away_for_idle_admit_s():
    m = manager(16)
    s = wf(m, idle_admit_s=2.0)
    ex = ToyExecutor(m)
    for x, base in (("a", 0), ("b", 100)):
        s.add(ToyRequest(x, toks(base, 20), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)  # both pause; their working sets fill the pool
    c = ToyRequest("c", toks(200, 20), max_new=1)
    s.add(c, 0.5)
    assert not s.schedule(0.5, ex).admitted and s.wake_time == 2.5
    assert not s.schedule(2.4, ex).admitted
    assert s.schedule(2.5, ex).admitted == [c]  # the GPU idled 2 s: c goes


def test_workflow_admits_a_too_large_session_when_none_is_admitted():
    m = manager(8)
    s = wf(m, prior_growth_tokens=1000)
    admitted, _ = drive(s, [(0.0, ToyRequest("a", toks(0, 20))),
                            (0.0, ToyRequest("b", toks(100, 4)))])
    assert [sid for _, sid in admitted] == ["a", "b"]


def test_workflow_learns_growth_per_workflow():
    m = manager(64)
    s = wf(m, growth_alpha=1.0)
    ex = ToyExecutor(m)
    ctx = toks(0, 8)
    for k in range(3):
        r = ToyRequest("a", ctx, max_new=2, last=False, resumed=k > 0)
        s.add(r, float(k))
        for _ in range(3):
            ex.run(s, s.schedule(float(k), ex), float(k))
        ctx = r.prompt + r.out + toks(100 * k, 4)
    assert s._growth["default"].mean == 6  # 4 input + 2 output tokens a step


def test_resumed_warm_steps_go_before_cold_ones_within_the_bypass_bound():
    m = manager(40)
    s = wf(m, max_num_seqs=1, max_bypass=1)
    ex = ToyExecutor(m)
    prompts = {x: toks(100 * i, 16) for i, x in enumerate("abc")}
    for x in "abc":  # each runs one step and pauses; all stay admitted
        s.add(ToyRequest(x, prompts[x], max_new=1, last=False), 0.0)
    for _ in range(3):
        ex.run(s, s.schedule(0.0, ex), 0.0)
    for b in list(m.sessions["a"].block_ids):  # a turns cold: its context is evicted
        if m.pool.state[b] == CACHED:
            m._drop(b)
    nxt = {x: ToyRequest(x, prompts[x] + [1, 5], max_new=1, resumed=True) for x in "abc"}
    for x in "abc":
        s.add(nxt[x], 1.0)
    order = []
    for t in range(3):
        out = s.schedule(1.0 + t, ex)
        order += [r.session_id for r in out.admitted]
        ex.run(s, out, 1.0 + t)
    assert order == ["b", "a", "c"]  # b is warm and bypasses cold a once (max_bypass=1)


def test_workflow_forgets_a_session_that_left_and_admits_the_next_at_once():
    # A paused admitted session that moves to another GPU (or ends behind the scheduler's
    # back) must stop holding working-set room here: before forget_session existed, c
    # waited until the demotion long after.
    m, s, ex, _ = two_paused(demote_factor=100.0, demote_min_s=100.0)
    c = ToyRequest("c", toks(200, 20), max_new=1)
    s.add(c, 1.0)
    assert not s.schedule(1.0, ex).admitted
    m.end_session("a", now=2.0)  # a moved away
    assert not s.schedule(2.0, ex).admitted  # the scheduler does not know yet
    s.forget_session("a", 2.0)
    assert "a" not in s.sessions and s._committed == s.sessions["b"].blocks
    assert s.schedule(2.0, ex).admitted == [c]
    before = scheduler_state(s)
    s.forget_session("nobody", 2.0)  # unknown: ignored
    with pytest.raises(ValueError, match="'c' still has a step"):
        s.forget_session("c", 2.0)  # running here: refused, nothing changed
    assert "c" in s.sessions and scheduler_state(s) == before


@pytest.mark.parametrize("max_backfill,expected", [(0, []), (1, ["s1"]), (2, ["s1", "s2"])])
def test_workflow_backfills_small_sessions_past_a_head_that_does_not_fit(max_backfill, expected):
    """A session that fits goes ahead of its tenant's oldest waiting session when that one
    does not fit, at most max_backfill times ahead of it (bounded waiting)."""
    m = manager(16)
    s = wf(m, max_backfill=max_backfill)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 20), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)  # a pauses, admitted: 7 blocks
    big = ToyRequest("big", toks(100, 30), max_new=1)  # 10 blocks: 17 > 16
    smalls = [ToyRequest(f"s{i}", toks(200 + 100 * i, 4), max_new=1) for i in (1, 2)]
    for r in (big, *smalls):
        s.add(r, 1.0)
    out = s.schedule(1.0, ex)
    assert [r.session_id for r in out.admitted] == expected
    ex.run(s, out, 1.0)  # the small ones end
    out = s.schedule(2.0, ex)
    assert not out.admitted  # big still does not fit, and nobody passes it any more
    assert s.waiting[0] is big and len(s.waiting) == 3 - len(expected)


def test_idle_admission_happens_at_the_wake_time_itself():
    """Waking at `wake_time` admits, whatever the float rounding of idle_since + idle_admit_s."""
    m = manager(16)
    s = wf(m, idle_admit_s=1.0)
    ex = ToyExecutor(m)
    t0 = 127.90400011551601  # (t0 + 1) - t0 < 1 in floats
    for x, base in (("a", 0), ("b", 100)):
        s.add(ToyRequest(x, toks(base, 20), max_new=1, last=False, arrival=t0), t0)
    ex.run(s, s.schedule(t0, ex), t0)
    c = ToyRequest("c", toks(200, 20), max_new=1, arrival=t0)  # queued now: no reserve yet
    s.add(c, t0)
    assert not s.schedule(t0, ex).admitted
    assert s.schedule(s.wake_time, ex).admitted == [c]


@pytest.mark.parametrize("paused_growth", [False, True])
def test_a_paused_session_is_charged_its_growth_only_once_its_next_step_comes(paused_growth):
    """A paused context does not grow: by default (paused_growth False) a paused session is
    charged its context only, so room kept for its growth can admit another session; its
    growth is charged again when its next step is queued."""
    m, s, ex, a = two_paused(paused_growth=paused_growth)  # 21-token contexts, growth 8
    paused = 6 if not paused_growth else 8  # ceil(21 / 4), ceil((21 + 8) / 4)
    assert s.sessions["a"].blocks == paused and s._committed == 2 * paused
    c = ToyRequest("c", toks(200, 8), max_new=1, last=False)  # (8 + 8) / 4 = 4 blocks
    s.add(c, 1.0)
    out = s.schedule(1.0, ex)
    assert out.admitted == ([] if paused_growth else [c])
    ex.run(s, out, 1.0)
    a2 = ToyRequest("a", a.prompt + a.out + [7], max_new=1, resumed=True)
    s.add(a2, 2.0)
    assert s.sessions["a"].blocks == 8  # queued again: its growth is charged
    defaults = make_scheduler("workflow", manager(16))  # the fit's pick (bench/scheduling_fit.py)
    assert (defaults.paused_growth, defaults.tool_growth) == (False, True)


@pytest.mark.parametrize("tool_growth,blocks", [(True, 21), (False, 17)])
def test_the_next_growth_is_predicted_from_the_tool_the_session_paused_on(tool_growth, blocks):
    """Steps after a pause on "fetch" grow by 21 tokens, after "search" by 5: the paused
    session's working set counts the growth of the tool it paused on (tool_growth), not
    the workflow's last (alpha 1) growth."""
    m = manager(64)
    s = wf(m, growth_alpha=1.0, paused_growth=True, tool_growth=tool_growth)
    ex = ToyExecutor(m)
    ctx = toks(0, 8)
    for k, (grow, tool) in enumerate([(0, "fetch"), (20, "search"), (4, "fetch"),
                                      (20, "search"), (4, "fetch")]):
        r = ToyRequest("a", ctx + toks(1000 + 100 * k, grow), max_new=1, last=False,
                       resumed=k > 0)
        s.add(r, float(k))
        ex.run(s, s.schedule(float(k), ex), float(k), tool=tool)
        ctx = r.prompt + r.out
    assert len(ctx) == 61 and s._growth.mean("default") == 5
    assert s.sessions["a"].blocks == blocks  # ceil((61 + 21) / 4), ceil((61 + 5) / 4)
