"""A batch step whose forward pass fails computes nothing: `Scheduler.discard` takes back
what the core counted for its chunks when it granted them. Before it, Agent Fair Share of
compute kept the tokens of chunks that never ran in the tenant's service (`_served`), so
the engine held that tenant back afterwards as if it had been served; and the prefill
cap's "recompute" gate counted the failed chunk's tokens as recomputed."""

from __future__ import annotations

import pytest

from kvsaga.scheduler import make_scheduler
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks
from tests.scheduler.test_decode_stall import _recomputing


class FailingExecutor(ToyExecutor):
    """A toy executor that notes where each session's chunk of the step starts, so that a
    failed pass can be taken back as the engine does (`discard_writes`, then `discard`)."""

    def __init__(self, m) -> None:
        super().__init__(m)
        self.starts: dict[str, int] = {}

    def allocate(self, req, num_tokens, now):
        start = self.m.num_computed_tokens(req.session_id)
        super().allocate(req, num_tokens, now)
        self.starts.setdefault(req.session_id, start)

    def schedule(self, sched, now):
        self.starts = {}
        return sched.schedule(now, self)

    def fail(self, sched, out) -> None:
        """The step's forward pass raised: what the engine's `Scheduler.discard` does."""
        self.m.discard_writes({r.session_id: self.starts[r.session_id]
                               for r, _ in out.scheduled})
        sched.discard(out.scheduled)


def _two_tenants():
    m = manager(40)
    s = make_scheduler("workflow", m, max_num_batched_tokens=8, share_step_tokens=4,
                       reserve_decode_tokens=0, idle_admit_s=0.0, overcommit=100.0,
                       admission_order="fifo", readmit_charge="uncached")
    ex = FailingExecutor(m)
    s.add(ToyRequest("b", toks(0, 40), max_new=3, tenant="B"), 0.0)
    s.add(ToyRequest("a", toks(1000, 48), max_new=3, tenant="A"), 0.0)
    return m, s, ex


def _trace(fail_at: int | None) -> tuple[list, dict]:
    """Run the two tenants to the end, the pass of step `fail_at` failing (then retried);
    returns each computed step's chunks and the final service."""
    m, s, ex = _two_tenants()
    steps = []
    for t in range(40):
        if not s.has_work:
            break
        before = dict(s._served)
        out = ex.schedule(s, float(t))
        if t == fail_at:
            assert s._served != before  # the step billed prefill tokens
            ex.fail(s, out)
            assert s._served == before  # before the fix: the failed chunks stayed billed
            m.check_integrity()
            continue
        steps.append([(r.session_id, n) for r, n in out.scheduled])
        ex.run(s, out, float(t))
        m.check_integrity()
    assert not s.has_work
    return steps, dict(s._served)


@pytest.mark.parametrize("fail_at", [1, 2, 5])
def test_a_failed_pass_leaves_the_compute_share_as_if_unscheduled(fail_at):
    # The retried trace computes what the trace without the failure does, step by step:
    # the failed step left no trace in the shares (before the fix A, billed for the failed
    # chunk, was held back and the steps after differed).
    assert _trace(fail_at) == _trace(None)


def test_discard_refuses_bad_chunks_and_changes_nothing():
    m, s, ex = _two_tenants()
    ex.run(s, ex.schedule(s, 0.0), 0.0)
    out = ex.schedule(s, 1.0)
    served = dict(s._served)
    (r, n), *_ = out.scheduled
    for bad in ([(r, n + 1)], [(r, n), (r, n)], [r], [(ToyRequest("x", [1]), 1)]):
        with pytest.raises(ValueError, match="discard"):
            s.discard(bad)
        assert s._served == served
    ex.fail(s, out)
    with pytest.raises(ValueError, match="not a chunk of the last schedule"):
        s.discard(out.scheduled)  # taken back once only


def test_a_schedule_that_raises_bills_nothing():
    m, s, ex = _two_tenants()
    ex.run(s, ex.schedule(s, 0.0), 0.0)
    before = dict(s._served)
    allocate = ex.allocate

    def broken(req, n, now):  # after a's chunk was granted and billed
        if req.session_id == "a":
            raise RuntimeError("executor failure")
        allocate(req, n, now)
    ex.allocate = broken
    with pytest.raises(RuntimeError, match="executor failure"):
        ex.schedule(s, 1.0)
    assert s._served == before


def test_a_failed_pass_leaves_the_recompute_gate_as_before():
    """"recompute": r's next step is admitted recomputing (its first chunk of 8 counted
    against its lost tokens), its pass fails; then, running, its next chunk's pass fails.
    Each time the tokens left to recompute are what they were (before the fix, 8 fewer each
    time: the cap would let the rest go whole before the lost context was computed)."""
    m, s, ex, r2 = _recomputing()
    s.add(r2, 1.1)
    computed = m.num_computed_tokens("r")
    starts = {}
    allocate = ex.allocate

    def noting(req, n, now):
        starts.setdefault(req.session_id, m.num_computed_tokens(req.session_id))
        allocate(req, n, now)
    ex.allocate = noting
    out = s.schedule(1.1, ex)
    assert r2 in out.admitted and dict((q.session_id, n) for q, n in out.scheduled)["r"] == 8
    lost = computed - ex.cached[0]
    m.discard_writes({q.session_id: starts[q.session_id] for q, _ in out.scheduled})
    s.discard(out.scheduled)
    assert s._recompute[id(r2)] == (r2, lost)  # before the fix: lost - 8
    m.check_integrity()
    starts.clear()
    out = s.schedule(1.2, ex)
    assert dict((q.session_id, n) for q, n in out.scheduled)["r"] == 8
    assert s._recompute[id(r2)] == (r2, lost - 8)
    m.discard_writes({q.session_id: starts[q.session_id] for q, _ in out.scheduled})
    s.discard(out.scheduled)
    assert s._recompute[id(r2)] == (r2, lost)
    chunks = []
    for k in range(3, 14):
        starts.clear()
        out = s.schedule(1.0 + 0.1 * k, ex)
        chunks += [n for q, n in out.scheduled if q is r2]
        ex.run(s, out, 1.0 + 0.1 * k)
    *capped, rest = chunks
    assert capped == [8] * -(-lost // 8) and rest > 8
    assert r2.out and not s._recompute
    m.check_integrity()


@pytest.mark.parametrize("name", ["fcfs", "workflow"])
def test_a_step_whose_begin_raises_stays_queued(name):
    # `begin_step` raising (a policy hook's failure, which the manager takes back) while
    # the step is admitted: before the fix the step was already out of the queue, so it
    # was neither waiting nor running, and no later schedule ever ran it.
    m = manager(40)
    s = make_scheduler(name, m, max_num_batched_tokens=8)
    ex = FailingExecutor(m)
    req = ToyRequest("a", toks(0, 12), max_new=1)
    s.add(req, 0.0)
    begin = ex.begin

    def broken(r, now):
        raise RuntimeError("step_started failed")
    ex.begin = broken
    with pytest.raises(RuntimeError, match="step_started failed"):
        ex.schedule(s, 0.0)
    assert s.waiting == [req] and not s.running
    ex.begin = begin
    for t in range(1, 4):
        ex.run(s, ex.schedule(s, float(t)), float(t))
    assert req.out == [1] and not s.has_work
    m.check_integrity()
