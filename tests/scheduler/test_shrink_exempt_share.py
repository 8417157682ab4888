"""`shrink_exempt_s` beside Agent Fair Share's memory bound (review s56 diffdemote, finding 1):
the exemption leaves a session out of the SHRINK's order only; the reclaims that make room a
tenant within its share is owed (`Demotions._reclaim_share`, and the tail guard's
`_reclaim_due`) take exempt paused sessions last, not never (kvsaga/scheduler/fair_share.py:
a tenant is refused within its share only while other tenants' ACTIVE sessions hold the
room). Also a wait is never counted below 0 (finding 4)."""

from __future__ import annotations

import math

import pytest

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, next_step, toks, wf


def _tenant_a_exempt(blocks: int, **kw):
    """Tenant A's three sessions admitted and paused on a 100 s tool; each demoted once and
    admitted again 21 s after its next step queued (at a bound of 20 s, `kw`'s default
    here: all three exempt from the shrink), then paused again. Returns (manager,
    scheduler, executor, t)."""
    m = manager(blocks)
    s = wf(m, **{"shrink_exempt_s": 20.0, **kw})
    ex = ToyExecutor(m)
    reqs = []
    for i in range(3):
        r = ToyRequest(f"A{i}", toks(10_000 * (i + 1), 28), tenant="A", max_new=1,
                       last=False, arrival=0.1 * i)
        s.add(r, 0.1 * i)
        ex.run(s, s.schedule(0.1 * i, ex), 0.1 * i, tool_s=100.0)
        reqs.append(r)
    t = 1.0
    for i, r in enumerate(reqs):
        s._demote_session(r.session_id, t)
        s.add(next_step(r, toks(90_000 + 100 * i, 1), t + 1.0), t + 1.0)
        out = s.schedule(t + 22.0, ex)
        assert [q.session_id for q in out.admitted] == [r.session_id]
        ex.run(s, out, t + 22.0, tool_s=100.0)
        t += 23.0
    assert s._waited_again == {f"A{i}": pytest.approx(21.0) for i in range(3)}
    assert all(not i.active for i in s.sessions.values())
    return m, s, ex, t


@pytest.mark.parametrize("bound", [20.0, math.inf])
def test_a_tenant_within_its_share_takes_the_room_of_exempt_paused_sessions(bound):
    """B0 (7 blocks, within B's half of 32) arrives while A's exempt paused sessions hold 30:
    the reclaim demotes A's sessions for it and B0 is admitted at once (on a2cc7a31 it was
    refused until A0's pause deadline, 363 s later), as with the bound off."""
    m, s, ex, t = _tenant_a_exempt(32, shrink_exempt_s=bound)
    demoted = s.num_demotions
    b = ToyRequest("B0", toks(50_000, 20), tenant="B", max_new=1, last=False, arrival=t)
    s.add(b, t)
    out = s.schedule(t, ex)
    assert b in out.admitted
    assert s.num_demotions > demoted and set(s.sessions) < {"A0", "A1", "A2", "B0"}
    m.check_integrity()


def test_within_share_is_not_refused_behind_another_tenants_busy_batch():
    """As above with idle admission on (1 s) and one A step decoding (so the batch is never
    idle): B0 (12 blocks, B's share 20 of 40) is admitted at the first step after it
    queues, not after A3's whole decode (a2cc7a31: 61 s)."""
    m, s, ex, t = _tenant_a_exempt(40, idle_admit_s=1.0)
    a3 = ToyRequest("A3", toks(80_000, 4), tenant="A", max_new=60, last=True, arrival=t)
    s.add(a3, t)
    out = s.schedule(t, ex)
    assert a3 in out.admitted
    ex.run(s, out, t)
    b = ToyRequest("B0", toks(50_000, 40), tenant="B", max_new=1, last=False, arrival=t)
    s.add(b, t)
    out = s.schedule(t + 1.0, ex)
    assert b in out.admitted and a3 in s.running
    assert s.num_preemptions == 0
    m.check_integrity()


def test_the_shrink_leaves_exempt_sessions_out_and_the_reclaims_take_them_last():
    m, s, _ex, _t = _tenant_a_exempt(64)
    s._waited_again["A1"] = 5.0  # below the bound: demotable by the shrink again
    paused = sorted(s.sessions)
    assert s._demotion_order(paused) == ["A1"]
    order = s._demotion_order(paused, exempt=False)
    assert order[0] == "A1" and sorted(order) == paused
    # the exempt ones keep the shrink order's ranking among themselves
    ref = [sid for sid in s._demotion_order(paused, exempt=False) if sid != "A1"]
    s._waited_again.clear()
    assert ref == [sid for sid in s._demotion_order(paused) if sid != "A1"]


def test_a_wait_to_be_admitted_again_is_never_negative():
    """A demoted session's next step whose arrival is later than the `now` it is admitted at
    (a caller's clock ahead of the scheduler's) adds 0, not a negative wait (a2cc7a31:
    -48 s, so the session needed 68 s more of waits to be exempt)."""
    m = manager(64)
    s = wf(m)
    ex = ToyExecutor(m)
    r = ToyRequest("x", toks(0, 8), max_new=1, last=False, workflow="w")
    s.add(r, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    s._demote_session("x", 1.0)
    s.add(next_step(r, toks(100, 4), 50.0), 2.0)
    out = s.schedule(2.0, ex)
    assert [q.session_id for q in out.admitted] == ["x"]
    assert s._waited_again == {"x": 0.0}
    m.check_integrity()
