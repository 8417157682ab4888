"""The workflow scheduler tells the eviction policy each waiting demoted step's place in its
tenant's queue (`EvictionPolicy.session_admission_rank`, `AdmissionOrder._tell_ranks`): the
right ranks on a constructed queue, only on change, None when a step leaves the queue still
demoted, and nothing for a new session's step."""

from __future__ import annotations

from kvsaga.policy import EvictionPolicy
from kvsaga.session import Session
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks, wf


def _spy(m) -> list[tuple[str, int | None, float]]:
    calls: list[tuple[str, int | None, float]] = []
    m.policy.session_admission_rank = lambda s, rank, now: calls.append(
        (s.session_id, rank, now))
    return calls


def _full_pool_and_queue(**kw):
    """One admitted session (a, 44 tokens) fills the 16-block pool; behind it wait, in fifo
    order, new session n1, demoted d1, new n2, demoted d2 (d1 and d2 marked demoted as the
    scheduler marks them, `_deferred`), all refused while a runs."""
    m = manager(16)
    s = wf(m, backfill_window=0, **kw)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 44), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    calls = _spy(m)
    reqs = {}
    for i, sid in enumerate(("n1", "d1", "n2", "d2")):
        demoted = sid.startswith("d")
        if demoted:
            # a paused session the scheduler demoted (its record as the manager keeps it)
            m.sessions[sid] = Session(sid, "default", bytes(32))
            s._deferred.add(sid)
        reqs[sid] = ToyRequest(sid, toks(100 * (i + 1), 8), max_new=1, arrival=0.1 * (i + 1),
                               resumed=False)
        s.add(reqs[sid], 0.1 * (i + 1))
    return m, s, ex, calls, reqs


def test_ranks_told_on_a_constructed_queue_and_only_on_change():
    m, s, ex, calls, reqs = _full_pool_and_queue()
    assert [r.session_id for r in s.waiting] == ["n1", "d1", "n2", "d2"]
    assert not s.schedule(1.0, ex).admitted
    assert sorted(calls) == [("d1", 1, 1.0), ("d2", 3, 1.0)]  # new sessions: never told
    calls.clear()
    assert not s.schedule(2.0, ex).admitted  # nothing changed: nothing told
    assert calls == []
    # n1 leaves the queue: d1 and d2 move up one place each, told at the next ordering
    assert s._dequeue(reqs["n1"], 2.0)
    assert not s.schedule(3.0, ex).admitted
    assert sorted(calls) == [("d1", 0, 3.0), ("d2", 2, 3.0)]
    calls.clear()
    # n2 leaves: only d2's place changed
    assert s._dequeue(reqs["n2"], 3.0)
    assert not s.schedule(4.0, ex).admitted
    assert calls == [("d2", 1, 4.0)]
    calls.clear()
    # d1's step leaves the queue while d1 is still demoted: None for it, d2 moves up
    assert s._dequeue(reqs["d1"], 4.0)
    assert not s.schedule(5.0, ex).admitted
    assert sorted(calls, key=lambda c: c[0]) == [("d1", None, 5.0), ("d2", 0, 5.0)]


def test_a_queue_without_demoted_steps_tells_nothing():
    m = manager(16)
    s = wf(m, backfill_window=0)
    ex = ToyExecutor(m)
    s.add(ToyRequest("a", toks(0, 44), max_new=1, last=False), 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    calls = _spy(m)
    s.add(ToyRequest("n1", toks(100, 8), max_new=1, arrival=0.1), 0.1)
    assert not s.schedule(1.0, ex).admitted
    assert calls == []


def test_the_base_policy_hook_is_a_no_op():
    assert EvictionPolicy().session_admission_rank(None, 3, 0.0) is None


def test_ranks_follow_the_predicted_order_after_its_sort():
    """Under "predicted" the queue is sorted before the ranks are read: each demoted step is
    told its place in the sorted queue."""
    m, s, ex, calls, reqs = _full_pool_and_queue(admission_order="predicted")
    assert not s.schedule(1.0, ex).admitted
    order = [r.session_id for r in s.waiting]
    assert sorted(calls) == sorted((sid, order.index(sid), 1.0) for sid in ("d1", "d2"))
