"""Soak of the workflow scheduler (the engine's and the simulator's): thousands of sessions,
each with a workflow, tool names and a tenant never seen before, some ending, some abandoned
while paused (ended by the driver past an idle limit, as the engine does, with
`forget_session`), some aborted mid-step. Its per-session tables stay bounded by the live
sessions and its per-name statistics by kvsaga/policy/bounded.py's caps; sizes by len()."""

from __future__ import annotations

import random

import pytest

from kvsaga import KVCacheManager
from kvsaga.config import KVSpec
from kvsaga.policy.bounded import TRACKED_KINDS, TRACKED_TENANTS, TRACKED_WORKFLOWS
from kvsaga.scheduler import make_scheduler
from kvsaga.session import idle_sessions
from tests.sched_helpers import ToyExecutor, ToyRequest

N = 3000
IDLE_S = 50.0


def _soak(params: dict):
    m = KVCacheManager(KVSpec(1, 1, 8, block_size=16), 512, policy="graph")
    s = make_scheduler("workflow", m, max_num_seqs=8, max_num_batched_tokens=256, **params)
    ex = ToyExecutor(m)
    rnd = random.Random(0)
    now, i, pending, live_max = 0.0, 0, [], 0
    while i < N or pending or s.has_work:
        if i < N and rnd.random() < 0.5:  # a new session: fresh workflow and tenant
            s.add(ToyRequest(f"s{i}", [rnd.randrange(1000) for _ in range(40)], max_new=3,
                             tenant=f"t{i}", salt=f"t{i % 50}", workflow=f"wf-{i}",
                             arrival=now, last=False), now)
            i += 1
        out = s.schedule(now, ex)
        for r in ex.run(s, out, now, tool_s=2.0, tool=f"call_{i}"):
            k = int(r.session_id[1:]) % 4
            if k in (0, 1) and not r.resumed:  # back once; then ends (0) or is abandoned (1)
                pending.append((now + 2, ToyRequest(
                    r.session_id, r.token_ids + [7, 8], max_new=2, tenant=r.tenant,
                    salt=r.salt, workflow=r.workflow, arrival=now + 2, resumed=True,
                    last=k == 0)))
        for r in list(s.running):  # aborted mid-step
            if int(r.session_id[1:]) % 7 == 3 and rnd.random() < 0.3:
                m.end_session(r.session_id, now=now)
                s.finish(r, now, ended=True)
        due = [r for t, r in pending if t <= now]
        pending = [(t, r) for t, r in pending if t > now]
        for r in due:
            if r.session_id in m.sessions:
                s.add(r, now)
        if int(now) % 10 == 0:  # the engine's idle sweep
            for sid in idle_sessions(m.sessions, IDLE_S, now):
                if sid not in s._live:
                    m.end_session(sid, now=now)
                    s.forget_session(sid, now)
        live_max = max(live_max, len(m.sessions))
        now += 1.0
    m.check_integrity()
    return s, live_max


@pytest.mark.parametrize("params", [{}, {"tail_wait_factor": 3.0, "share_step_tokens": 64}])
def test_workflow_scheduler_stays_bounded(params):
    s, live_max = _soak(params)
    assert live_max <= 2 * IDLE_S
    per_session = ("sessions", "_deferred", "_overtaken", "_times_demoted", "_undoable",
                   "_started", "_waited", "_steps_seen", "_ranks_told", "_rooms_told",
                   "_paused_told", "_deadlines", "_last_finish", "_live")
    for name in per_session:
        assert len(getattr(s, name)) <= live_max, name
    names = TRACKED_WORKFLOWS + TRACKED_KINDS + 1
    for table in (s._cycles.sums, s._step_times.sums, s._readmit_waits.sums):
        assert len(table) <= names
    for growth in (s._growth, s._reply):
        assert len(growth.by_workflow) <= TRACKED_WORKFLOWS
        assert len(growth.by_tool) <= TRACKED_KINDS
    assert len(s._lengths.counts) <= TRACKED_WORKFLOWS
    assert len(s._length_model.reached) <= TRACKED_WORKFLOWS + 2
    assert len(s._length_model.ended) == len(s._length_model.reached)
    assert len(s.tenant_admission_wait_s) <= TRACKED_TENANTS
    assert len(s._served) <= TRACKED_TENANTS + 1
    assert len(s._budgets._served) <= TRACKED_WORKFLOWS
    # The soak names more than the caps: without them these tables would hold N entries.
    assert s.num_session_admissions >= N
    assert len(s._step_times.sums) > TRACKED_WORKFLOWS
