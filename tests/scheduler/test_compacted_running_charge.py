"""While a compacted step runs (its prompt shorter than the session's last context: an agent
that compacts its context; the simulator's sessions never do, kvsaga/sim/family.py), the
`workflow` scheduler charges the session its old, longer context, and its compacted one
from the step's finish on (`WorkflowScheduler._admitted`).

Why that is right, from how the tiers hold the blocks: `begin_step` references only the
compacted prompt's blocks, but the old context's blocks (unreferenced since the last pause)
stay owned by the session until that step finishes (`KVCacheManager._left_owned`, then
`_disown_dead`: tests/test_manager_compacted_disown.py), and the default
eviction policy ("graph") prices a running session's blocks as about to be used: a new
session's allocation evicts another paused session's context, even one due back at once,
before them. Charged only its compacted prompt, the running session let the gate admit
exactly that allocation."""

from __future__ import annotations

from kvsaga.policy import DEFAULT_POLICY
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks, wf
from tests.scheduler.test_compacted_context import _compacted


def _pause(m, sid, ids, now, tool_s):
    m.begin_step(sid, ids, now=now)
    m.allocate_slots(sid, len(ids), now=now)
    m.finish_step(sid, now=now, tool="t", expected_s=tool_s)


def _owned(m, sid) -> int:
    return sum(owner == sid for owner in m.block_owner)


def test_the_old_context_outlives_a_paused_context_while_the_compacted_step_runs():
    """a (40 tokens, 10 blocks) paused on a 100 s tool, p (16 tokens, 4 blocks) on a 1 s
    tool, on a 16-block pool; a new 44-token session evicts 10 blocks. With a paused, a's
    context goes (due back last); once a's compacted 4-token step runs, p's whole context
    goes and half of a's old, unreferenced context stays."""
    assert DEFAULT_POLICY == "graph"
    for compacted, kept in ((False, (1, 4)), (True, (5, 0))):
        m = manager(16, policy="graph")
        _pause(m, "a", toks(0, 40), 0.0, 100.0)
        _pause(m, "p", toks(1000, 16), 0.5, 1.0)
        if compacted:
            m.begin_step("a", toks(0, 4), now=1.0)
            m.allocate_slots("a", 4, now=1.0)
            table = set(m.sessions["a"].block_ids)
            old = [b for b, o in enumerate(m.block_owner) if o == "a" and b not in table]
            assert len(table) == 1 and len(old) == 10  # the old context: owned, unreferenced
            assert all(m.pool.refcount[b] == 0 for b in old)
        m.begin_step("n", toks(5000, 44), now=1.1)
        m.allocate_slots("n", 44, now=1.1)
        assert (_owned(m, "a"), _owned(m, "p")) == kept
        m.check_integrity()


def test_a_running_compacted_step_is_charged_its_old_context_until_it_finishes():
    """a's 40-token step finished (41 tokens: 13 blocks with the growth prior), its next
    step is compacted to 4 tokens and decodes 3: while it runs a is charged 13 blocks and a
    new session of 7 blocks waits (20 > 16); at its finish a is charged its 7-token context
    (2 blocks) and the new session is admitted."""
    m = manager(16, policy="graph")
    s = wf(m, reserve_decode_tokens=0)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 40), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=5.0)
    assert (s.sessions["a"].context, s.sessions["a"].blocks) == (41, 13)
    a2 = ToyRequest("a", toks(0, 4), max_new=3, last=False, resumed=True, arrival=1.0)
    s.add(a2, 1.0)
    out = s.schedule(1.0, ex)
    assert out.admitted == [a2]
    ex.run(s, out, 1.0)
    n = ToyRequest("n", toks(5000, 20), max_new=1, last=False, arrival=1.5)
    s.add(n, 1.5)
    t = 1.5
    while a2 in s.running:
        assert (s.sessions["a"].context, s._committed) == (41, 13)
        out = s.schedule(t, ex)
        assert n not in out.admitted and s.waiting == [n]
        ex.run(s, out, t)
        t += 0.5
    assert (s.sessions["a"].context, s.sessions["a"].blocks) == (7, 2)
    assert s.schedule(t, ex).admitted == [n]
    m.check_integrity()


def test_a_compacted_steps_reply_is_read_against_the_context_it_was_charged():
    """The reply table (`_observe_reply`) learns what an admitted step added to the
    context it was charged: for a compacted step that is the old, longer context, so its
    reply (1 token past its 4-token prompt) is observed as 0, never as the drop (-36), which
    would predict replies below nothing ("remaining"'s charge). The first step's reply was
    1 token: the mean of 1 and 0."""
    _, s, _ = _compacted(paused_growth=True)
    assert s._reply.mean("w") == 0.5
    assert s._growth.mean("w") == 0.0
