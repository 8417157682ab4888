"""A preempted compacted step is charged its own context from the preempt on
(`WorkflowScheduler._preempted_charge`), not the old, longer one it was charged while it ran.

The running charge (tests/scheduler/test_compacted_running_charge.py, unchanged) rests on
the old context's blocks staying owned, and kept by the default policy, while the step runs.
After a preempt that no longer holds: the scheduler preempts only when an allocation found
too few free and cached blocks, so the allocations before it evicted the old context's
cached blocks, and the manager's `preempt` disowns any left
(tests/test_manager_compacted_preempt.py). Charged the old context until its retry finished,
the session held back a new session the pool had room for. Both cores."""

from __future__ import annotations

from kvsaga.pool import CACHED
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks, wf


def _preempted_compaction(core):
    """a's 40-token step finished (41 tokens: charged 12 blocks with a 4-token growth
    prior) on a 16-block pool; r (8 tokens, decoding 40) runs; a's next step, compacted to
    4 tokens and decoding 40, is admitted after r, and the two outgrow the pool: a, the
    newest, is preempted. Returns (manager, scheduler, executor, a's step, old blocks,
    time after the preempt)."""
    m = manager(16, policy="graph", core=core.name)
    s = wf(m, reserve_decode_tokens=0, prior_growth_tokens=4)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 40), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=5.0)
    assert (s.sessions["a"].context, s.sessions["a"].blocks) == (41, 12)
    old = list(m.session("a").block_ids)
    s.add(ToyRequest("r", toks(5000, 8), max_new=40, last=True, arrival=0.5), 0.5)
    ex.run(s, s.schedule(0.5, ex), 0.5)
    a2 = ToyRequest("a", toks(0, 4), max_new=40, last=False, resumed=True, arrival=1.0)
    s.add(a2, 1.0)
    t = 1.0
    while True:
        out = s.schedule(t, ex)
        ex.run(s, out, t)
        t = round(t + 0.1, 6)
        if out.preempted:
            assert out.preempted == [a2]
            return m, s, ex, a2, old, t
        assert t < 10.0, "no preempt"


def test_the_preempted_compacted_step_is_charged_its_own_context(core):
    """At the preempt a owns none of its old context (evicted by the allocations that
    led to it) and its retry's prompt is 29 tokens: charged 29 + 4 tokens, 9 blocks (was
    the old 41 + 4, 12 blocks)."""
    m, s, _, a2, old, _ = _preempted_compaction(core)
    assert a2.num_tokens == 29
    state, owner = m.pool.state, m.block_owner
    mine = [b for b in range(16) if owner[b] == "a" and state[b] == CACHED]
    assert len(mine) <= -(-a2.num_tokens // 4)  # only blocks of its retry's context
    assert all(m.pool.block_hash[b] in m.session("a").block_hashes for b in mine)
    assert (s.sessions["a"].context, s.sessions["a"].blocks) == (29, 9)
    assert s._committed == sum(i.blocks for i in s.sessions.values())
    m.check_integrity()


def test_a_session_that_fits_beside_the_retry_is_admitted_while_it_runs(core):
    """Once r ends and a's retry runs (its table the compacted context), a new 24-token
    session (charged 7 blocks) fits beside a's 9 on the 16-block pool and is admitted at
    once (was: a charged 12, the new session waited for a's retry to finish)."""
    m, s, ex, a2, _, t = _preempted_compaction(core)
    n = None
    while a2.num_tokens < a2.max_num_tokens:
        out = s.schedule(t, ex)
        if n is not None and n in out.admitted:
            break
        ex.run(s, out, t)
        if n is None and "r" not in m.sessions and a2 in s.running:
            assert s.sessions["a"].context == 29
            n = ToyRequest("n", toks(9000, 24), max_new=1, last=True, arrival=t)
            s.add(n, t)
        t = round(t + 0.1, 6)
        assert t < 20.0
    assert n is not None and a2 in s.running, "n waited for a's retry to finish"
    m.check_integrity()


def test_the_retry_finishes_on_its_context(core):
    """The retry's finish charges a its finished context, as for any step."""
    m, s, ex, a2, _, t = _preempted_compaction(core)
    while a2.num_tokens < a2.max_num_tokens:
        ex.run(s, s.schedule(t, ex), t)
        t = round(t + 0.1, 6)
        assert t < 20.0
    assert s.sessions["a"].context == a2.num_tokens == 44
    m.check_integrity()
