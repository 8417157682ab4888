"""Agent Fair Share of compute bills a tenant only for prefill tokens actually scheduled: a
running prefill whose allocation preempts itself computes nothing in the step, and its
tenant's service is given back what `_grant` billed for it (session 42's review: tenant A
was billed 7 tokens never computed, 19 against 12)."""

from __future__ import annotations

from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks


def test_self_preempted_prefill_is_not_billed():
    m = manager(10)  # 10 blocks of 4 tokens: a's prefill runs out of room
    s = make_scheduler("workflow", m, max_num_batched_tokens=8, share_step_tokens=4,
                       reserve_decode_tokens=0, idle_admit_s=0.0, overcommit=100.0,
                       admission_order="fifo", readmit_charge="uncached")
    ex = ToyExecutor(m)
    b = ToyRequest("b", toks(0, 20), max_new=30, tenant="B")
    a = ToyRequest("a", toks(1000, 24), max_new=1, tenant="A")
    s.add(b, 0.0)
    s.add(a, 0.0)
    scheduled = {"A": 0, "B": 0}  # prefill tokens scheduled (computed) per tenant
    self_preempted = 0
    for t in range(12):
        out = s.schedule(float(t), ex)
        chunks = {r.session_id for r, _ in out.scheduled}
        self_preempted += sum(r.session_id not in chunks for r in out.preempted)
        for r, n in out.scheduled:
            if n > 1:
                scheduled[r.tenant] += n
        assert {k: s._served.get(k, 0) for k in scheduled} == scheduled, t
        ex.run(s, out, float(t))
    assert self_preempted  # the trace does preempt a prefill that was granted tokens
    assert s._served["A"] == 12
