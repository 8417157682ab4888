"""Demotion: the shrink when admitted contexts outgrow the tiers (who goes, aging), and
what a demotion tells the eviction policy (graph, ttl)."""

from __future__ import annotations

import pytest

from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, run_two_to_pause, toks, two_paused, wf


def test_workflow_shrinks_the_admitted_set_when_contexts_outgrow_the_pool():
    _, s, ex, a = two_paused(prompt_len=12)
    assert set(s.sessions) == {"a", "b"}
    # a's next step is much longer than predicted: once it pauses, one of the two must make
    # room (a: its pause began last, so it is expected back last); its next step then waits
    # for admission again.
    a2 = ToyRequest("a", a.prompt + a.out + toks(50, 30), max_new=1, last=False, resumed=True)
    s.add(a2, 1.0)
    for t in (1.0, 2.0):
        ex.run(s, s.schedule(t, ex), t)
    assert set(s.sessions) == {"b"} and s.num_demotions == 1
    assert s._committed <= s.capacity



def test_shrink_demotes_the_session_expected_back_last():
    """When the admitted working sets outgrow the pool, the paused session whose tool is
    expected to take longest is demoted, not the most recently admitted one."""
    m = manager(32)
    s = wf(m)
    ex = ToyExecutor(m)
    reqs = {}
    for i, (sid, tool_s) in enumerate((("a", 1.0), ("b", 50.0), ("c", 1.0))):
        reqs[sid] = ToyRequest(sid, toks(100 * i, 12), max_new=1, last=False)
        s.add(reqs[sid], 0.1 * i)
        ex.run(s, s.schedule(0.1 * i, ex), 0.1 * i, tool_s=tool_s)
    assert set(s.sessions) == {"a", "b", "c"}
    a = reqs["a"]
    a2 = ToyRequest("a", a.prompt + a.out + toks(500, 40), max_new=1, last=False, resumed=True)
    s.add(a2, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)
    assert set(s.sessions) == {"a", "c"} and s.num_demotions == 1  # b: back in 50 s

@pytest.mark.parametrize("aging,demoted", [(1, "c"), (0, "b")])
def test_shrink_aging_does_not_demote_the_same_session_again(aging, demoted):
    """b (a 50 s tool) is demoted when a outgrows its working set; once readmitted and
    paused again, the next shrink demotes c (paused, eligible) instead of b again, unless
    aging is off (0). (The default, 2, lets a session be demoted twice in the usual order.)"""
    m = manager(32)
    s = wf(m, shrink_aging=aging)
    ex = ToyExecutor(m)
    tool = {"a": 1.0, "b": 50.0, "c": 1.0}
    reqs = {}

    def step(sid, now, grow, last=False):
        prev = reqs[sid]
        reqs[sid] = ToyRequest(sid, prev.prompt + prev.out + toks(1000 + 100 * int(now), grow),
                               max_new=1, last=last, resumed=True)
        s.add(reqs[sid], now)
        out = s.schedule(now, ex)
        ex.run(s, out, now, tool_s=tool[sid])
        assert out.admitted == [reqs[sid]]

    for i, sid in enumerate("abc"):
        reqs[sid] = ToyRequest(sid, toks(100 * i, 12), max_new=1, last=False)
        s.add(reqs[sid], 0.1 * i)
        ex.run(s, s.schedule(0.1 * i, ex), 0.1 * i, tool_s=tool[sid])
    step("a", 1.0, 40)  # a grew: b, back last, is demoted
    assert set(s.sessions) == {"a", "c"} and s.num_demotions == 1
    step("a", 2.0, 1, last=True)  # a ends: room for b again
    step("b", 3.0, 2)  # b readmitted, paused on its 50 s tool again
    assert set(s.sessions) == {"b", "c"}
    step("c", 4.0, 40)  # c grew: one of the paused b, c must go
    assert s.num_demotions == 2 and set(s.sessions) == {"b", "c"} - {demoted}
    assert s._committed <= s.capacity
    assert make_scheduler("workflow", m).shrink_aging == 2


def _a_and_b_paused(policy: str):
    """a paused on a 1 s tool at 0 s, b on a 100 s tool at 2.5 s, under a workflow scheduler
    that demotes a session paused over 2 x its expected pause + 1 s. Returns the manager,
    the scheduler, the executor, a's request and the owner of each of their blocks."""
    m = manager(24, policy=policy)
    s = wf(m, demote_factor=2.0, demote_min_s=1.0)
    ex = ToyExecutor(m)
    a = ToyRequest("a", toks(0, 20), max_new=1, last=False)
    s.add(a, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=1.0)
    b = ToyRequest("b", toks(100, 20), max_new=1, last=False)
    s.add(b, 2.5)
    ex.run(s, s.schedule(2.5, ex), 2.5, tool_s=100.0)
    owner = {blk: sid for sid in "ab" for blk in m.sessions[sid].block_ids}
    return m, s, ex, a, owner


def test_demotion_tells_the_policy_and_graph_evicts_the_demoted_session_first():
    """A demoted session's blocks are needed only after it is admitted again: the scheduler
    says so (`session_deferred`), and the graph policy then evicts them before those of a
    session still admitted; re-admission takes it back."""
    m, s, ex, a, owner = _a_and_b_paused("graph")
    # a is overdue (its tool returns any moment): graph keeps it over b, expected in 100 s
    assert owner[m.policy.eviction_order(3.0)[0]] == "b"
    c = ToyRequest("c", toks(200, 40), max_new=1)
    s.add(c, 3.0)  # does not fit beside a and b: a (paused 3 s > 2 x 1 s + 1 s) is demoted
    out = s.schedule(3.0, ex)
    assert out.admitted == [c] and "a" not in s.sessions
    order = [owner[blk] for blk in m.policy.eviction_order(3.0) if blk in owner]
    assert order[0] == "a"  # demoted: its blocks go first now
    ex.run(s, out, 3.0)  # c ends
    a2 = ToyRequest("a", a.prompt + a.out + [7], max_new=1, resumed=True)
    s.add(a2, 4.0)
    assert s.schedule(4.0, ex).admitted == [a2]  # a is admitted again
    assert "a" in s.sessions and "a" not in m.policy._deferred



def test_ttl_releases_a_demoted_sessions_blocks_until_its_tool_returns():
    """ttl (the default policy until 87c9588 made it graph) acts on a demotion too: the
    demoted session's blocks go before an admitted paused session's, and are kept again once
    its tool returns."""
    m, s, ex, _, owner = _a_and_b_paused("ttl")

    def first_victim(now):
        return next(owner[blk] for blk in m.policy.eviction_order(now) if blk in owner)

    assert first_victim(3.0) == "b"  # ttl keeps a (its 1 s tool returns any moment)
    c = ToyRequest("c", toks(200, 40), max_new=1)
    s.add(c, 3.0)  # does not fit beside a and b: a (paused 3 s > 2 x 1 s + 1 s) is demoted
    out = s.schedule(3.0, ex)
    assert out.admitted == [c] and "a" not in s.sessions
    assert first_victim(3.0) == "a" and m.policy.session_value("a", 3.0)[0]  # released
    m.resume_hint("a", now=3.5)  # its tool returned: it is first in line again
    assert first_victim(3.5) == "b"


@pytest.mark.parametrize("queue_shrink", [True, False])
def test_queue_shrink_demotes_when_a_queued_steps_growth_overflows(queue_shrink):
    """A paused session is charged its context only; its growth is charged again when its
    next step is queued. If that overflows the pool, `queue_shrink` demotes a paused
    session at once, before the step's prefill can evict admitted contexts; without it the
    admitted working sets stay over the pool until some step finishes."""
    m = manager(16)
    s = wf(m, paused_growth=False, queue_shrink=queue_shrink)
    _, a, t = run_two_to_pause(m, s)  # both admitted (7 blocks each, growth 2 included)
    assert set(s.sessions) == {"a", "b"} and s._committed == s.capacity  # 8 + 8 contexts
    a2 = ToyRequest("a", a.prompt + a.out, max_new=1, last=False, resumed=True)
    s.add(a2, t)  # a's growth (2 blocks) is charged again: 18 > 16
    if queue_shrink:
        assert set(s.sessions) == {"a"} and s.num_demotions == 1
        assert s._committed <= s.capacity
    else:
        assert set(s.sessions) == {"a", "b"} and s.num_demotions == 0
        assert s._committed > s.capacity
