"""Agent Fair Share of the memory (a tenant within its share is not refused for other
tenants' paused sessions), the bound on how often a demoted session is overtaken, and the
shrink's `shrink_order`."""

from __future__ import annotations

import pytest

from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks, wf


def _fill(s, ex, tenant, n, prompt_len=28):
    """Admit `n` sessions of `tenant` one by one, each paused on a 100 s tool afterwards;
    returns the requests (those the gate refused stay queued)."""
    reqs = []
    for i in range(n):
        r = ToyRequest(f"{tenant}{i}", toks(1000 * len(reqs) + hash(tenant) % 997 * 10_000,
                                            prompt_len), tenant=tenant, max_new=1,
                       last=False, arrival=0.1 * i)
        s.add(r, 0.1 * i)
        ex.run(s, s.schedule(0.1 * i, ex), 0.1 * i, tool_s=100.0)
        reqs.append(r)
    return reqs


def test_a_tenant_within_its_share_displaces_another_tenants_paused_sessions():
    """A holds the whole pool with paused sessions (its fourth waits); B's session, within
    B's half, is admitted at once: one of A's paused sessions is demoted for it, and
    A's waiting session does not hold B back. Without the share, B would wait 100 s."""
    m = manager(32)  # 128 tokens; each A session: 29 tokens + 8 of growth = 10 blocks
    s = wf(m)
    ex = ToyExecutor(m)
    _fill(s, ex, "A", 4)
    assert len(s.sessions) == 3 and s.num_waiting == 1  # A3 refused: the pool is A's
    b = ToyRequest("B0", toks(50_000, 20), tenant="B", max_new=1, last=False, arrival=1.0)
    s.add(b, 1.0)
    out = s.schedule(1.0, ex)
    assert out.admitted == [b] and s.num_demotions == 1
    assert sum(i.tenant == "A" for i in s.sessions.values()) == 2
    assert s._committed <= s.capacity
    m.check_integrity()


def test_one_tenant_alone_has_no_share_to_claim():
    """The same arrival from A itself waits: the share binds only between tenants, so a
    tenant alone uses the whole memory (work-conserving) and is not demoted for itself."""
    m = manager(32)
    s = wf(m)
    ex = ToyExecutor(m)
    _fill(s, ex, "A", 3)
    late = ToyRequest("A9", toks(50_000, 20), tenant="A", max_new=1, last=False, arrival=1.0)
    s.add(late, 1.0)
    assert s.schedule(1.0, ex).admitted == [] and s.num_demotions == 0


def test_a_tenant_above_its_share_does_not_displace_another():
    """B, holding more than half with paused sessions, is not given A's memory: A's
    waiting session (A already above its share) waits instead of demoting B."""
    m = manager(32)
    s = wf(m)
    ex = ToyExecutor(m)
    _fill(s, ex, "A", 2)
    _fill(s, ex, "B", 1)
    big = ToyRequest("A7", toks(70_000, 28), tenant="A", max_new=1, last=False, arrival=2.0)
    s.add(big, 2.0)
    assert s.schedule(2.0, ex).admitted == [] and s.num_demotions == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "4"])
def test_max_overtake_must_be_a_non_negative_integer(bad):
    with pytest.raises(ValueError, match="max_overtake"):
        wf(manager(16), max_overtake=bad)


def test_shrink_order_must_be_known():
    with pytest.raises(ValueError, match="shrink_order must be one of latest_back, smallest"):
        wf(manager(16), shrink_order="largest")


@pytest.mark.parametrize("bound,expected", [
    (0, "d0 d1 d2 d3 d4"),  # never overtaken: first come, first served
    (1, "d1 d0 d3 d2 d4"),  # d1 overtakes d0 once; d3 then overtakes only d2
    (3, "d3 d2 d1 d0 d4"),  # d0, overtaken three times, holds d4 behind it
    (16, "d4 d3 d2 d1 d0"),  # most recently demoted first
])
def test_a_demoted_step_is_overtaken_at_most_max_overtake_times(bound, expected):
    """Demoted sessions' next steps queue most recently demoted first, but one already
    overtaken `max_overtake` times keeps its place (and so do those ahead of it)."""
    s = wf(manager(64), max_overtake=bound)
    for i in range(5):
        s._deferred.add(f"d{i}")  # demoted, its next step not queued yet
        s.add(ToyRequest(f"d{i}", toks(100 * i, 4), resumed=True, arrival=float(i)), float(i))
    assert " ".join(r.session_id for r in s.waiting) == expected
    assert all(n <= bound for n in s._overtaken.values())


def test_shrink_order_smallest_demotes_the_smallest_paused_session():
    """Two paused sessions, one small and one large; a third outgrows its prediction. With
    shrink_order "smallest" the small one goes (fewest blocks to recompute); with the
    default the one expected back last (the large one here, on a longer tool) goes."""
    for order, demoted in (("smallest", "small"), ("latest_back", "large")):
        m = manager(32)
        s = wf(m, shrink_order=order)
        ex = ToyExecutor(m)
        reqs = {}
        for i, (sid, n, tool_s) in enumerate((("a", 12, 1.0), ("small", 8, 1.0),
                                               ("large", 40, 50.0))):
            reqs[sid] = ToyRequest(sid, toks(1000 * i, n), max_new=1, last=False)
            s.add(reqs[sid], 0.1 * i)
            ex.run(s, s.schedule(0.1 * i, ex), 0.1 * i, tool_s=tool_s)
        assert set(s.sessions) == {"a", "small", "large"}
        a = reqs["a"]
        a2 = ToyRequest("a", a.prompt + a.out + toks(500, 40), max_new=1, last=False,
                        resumed=True)
        s.add(a2, 1.0)
        ex.run(s, s.schedule(1.0, ex), 1.0)
        assert demoted not in s.sessions and s.num_demotions >= 1, order
