"""A session whose context shrinks between steps (an agent that compacts its context, which
`begin_step` accepts) is observed by the `workflow` scheduler as no growth, as the reply
table, the growth calibration and the vLLM gate (tests/integrations/test_vllm_gate_review.py)
observe it. The drop was learned as negative growth: the workflow's mean went negative,
working sets below the contexts themselves (a session charged -7 blocks), the gate's books
below 0, and sessions admitted whose contexts together exceeded the tiers."""

from __future__ import annotations

import pytest

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks, wf


def _compacted(paused_growth: bool):
    """Session a of workflow w ran a 40-token step, then one compacted to 4 tokens, on a
    16-block (64-token) pool: (manager, scheduler, executor)."""
    m = manager(16)
    s = wf(m, paused_growth=paused_growth, reserve_decode_tokens=0)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 40), max_new=1, last=False, workflow="w"), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    a2 = ToyRequest("a", toks(0, 4), max_new=1, last=False, workflow="w", resumed=True,
                    arrival=1.0)
    s.add(a2, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)
    return m, s, ex


@pytest.mark.parametrize("paused_growth", [True, False])
def test_a_compacted_context_is_learned_as_no_growth(paused_growth):
    _, s, _ = _compacted(paused_growth)
    assert s._growth.mean("w") == 0.0  # was -36
    a = s.sessions["a"]
    assert a.blocks >= 1  # its own 5-token context at least (was -7)
    assert s._committed == sum(i.blocks for i in s.sessions.values()) >= 0
    assert all(b >= 0 for b in s._tenant_blocks.values())


def test_no_session_is_admitted_past_the_tiers_after_a_compaction():
    """Three 36-token (9-block) sessions of w wait: with growth learned as -36 tokens a
    step, each was charged 0 blocks and two were admitted, their contexts 21 blocks of 16."""
    m, s, ex = _compacted(paused_growth=False)
    for i in range(3):
        s.add(ToyRequest(f"n{i}", toks(1000 * (i + 1), 36), max_new=1, last=False,
                         workflow="w", arrival=2.0), 2.0)
    t = 2.0
    for _ in range(6):
        ex.run(s, s.schedule(t, ex), t)
        assert s._context_blocks() <= s.capacity
        assert s._committed == sum(i.blocks for i in s.sessions.values()) >= 0
        t += 0.1
    assert "n0" in s.sessions  # one fits beside a
    m.check_integrity()
