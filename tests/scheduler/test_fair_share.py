"""Agent Fair Share: tenants ordered by deficit, the stated deviation bound (on the
scheduler and on `FairShare` alone), and bounded waiting under a flood."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from kvsaga.scheduler.fair_share import FairShare
from tests.sched_helpers import ToyExecutor, ToyRequest, drive
from tests.scheduler.helpers import manager, toks, wf


def test_afs_alternates_tenants_under_pressure():
    m = manager(16)
    s = wf(m, max_num_seqs=1)
    arrivals = [(0.0, ToyRequest(f"A{i}", toks(1000 * i, 8), tenant="A", arrival=0.0))
                for i in range(6)]
    arrivals += [(0.5, ToyRequest(f"B{i}", toks(1000 * i + 500, 8), tenant="B", arrival=0.5))
                 for i in range(3)]
    admitted, _ = drive(s, arrivals)
    order = "".join(sid[0] for _, sid in admitted)
    assert order == "AABABABAA"


@settings(max_examples=60, deadline=None)
@given(stream=st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 3)), min_size=1,
                       max_size=40),
       weights=st.fixed_dictionaries({}, optional={"A": st.sampled_from([1.0, 2.0, 3.0])}))
def test_afs_deficit_bound(stream, weights):
    """Deficits of the backlogged tenants sum to 0 and stay in (-1, k - 1), and while the
    backlogged set is fixed each tenant's admissions track its weighted share within them."""
    m = manager(32)
    s = wf(m, max_num_seqs=1, tenant_weights=weights)
    ex = ToyExecutor(m)
    arrivals = sorted(((float(t), ToyRequest(f"{x}{i}", toks(100 * i, 6), tenant=x,
                                            arrival=float(t)))
                       for i, (x, t) in enumerate(stream)), key=lambda a: a[0])
    now = 0.0
    while arrivals or s.has_work:
        while arrivals and arrivals[0][0] <= now:
            s.add(arrivals.pop(0)[1], now)
        out = s.schedule(now, ex)
        d = s.deficits
        k = len(d)
        assert abs(sum(d.values())) < 1e-9
        assert all(-1 < v < max(k - 1, 1) for v in d.values()), d
        ex.run(s, out, now)
        now += 1.0


def test_bounded_waiting_under_a_flood():
    """A tenant flooding the queue delays another tenant's session by at most about one of
    its admissions."""
    m = manager(16)
    s = wf(m, max_num_seqs=1)
    arrivals = [(0.0, ToyRequest(f"A{i}", toks(1000 * i, 8), tenant="A")) for i in range(30)]
    arrivals.append((5.0, ToyRequest("B", toks(99999, 8), tenant="B", arrival=5.0)))
    admitted, _ = drive(s, arrivals)
    ids = [sid for _, sid in admitted]
    after = [sid for t, sid in admitted if t >= 5.0]
    assert after.index("B") <= 1 and len(ids) == 31


@settings(max_examples=100, deadline=None)
@given(k=st.integers(1, 4), n=st.integers(1, 60),
       weights=st.lists(st.sampled_from([0.5, 1.0, 2.0, 3.0]), min_size=4, max_size=4),
       ages=st.lists(st.floats(0, 10), min_size=4, max_size=4))
def test_fair_share_admissions_stay_within_the_stated_bound(k, n, weights, ages):
    """FairShare's deviation bound, on admissions themselves: with a fixed backlogged set,
    each tenant's admissions minus its weighted share of all admissions lies in (-(k - 1), 1)
    (two tenants: less than one session either way)."""
    tenants = [f"t{i}" for i in range(k)]
    fs = FairShare(dict(zip(tenants, weights[:k], strict=True)))
    fs.backlog_changed(tenants)
    total = sum(fs.weight(t) for t in tenants)
    count = dict.fromkeys(tenants, 0)
    for i in range(1, n + 1):
        t = fs.next_tenant(lambda t: ages[tenants.index(t)])
        fs.charge(t)
        count[t] += 1
        for u in tenants:
            dev = count[u] - i * fs.weight(u) / total
            assert -max(k - 1, 1) < dev < 1, (u, dev)


@settings(max_examples=100, deadline=None)
@given(picks=st.lists(st.integers(0, 2), min_size=1, max_size=40))
def test_admissions_out_of_fair_order_are_not_charged(picks):
    """Work-conserving admissions (a tenant whose deficit is not the largest) leave the
    deficits as they were, so any mix of in-order and out-of-order admissions keeps every
    deficit in (-1, k - 1): the stated bound on the charged admissions."""
    tenants = ["a", "b", "c"]
    fs = FairShare({})
    fs.backlog_changed(tenants)
    for i in picks:
        before = dict(fs.deficits)
        fs.charge(tenants[i])
        if before[tenants[i]] < max(before.values()):
            assert fs.deficits == before
        assert all(-1 < d < 2 for d in fs.deficits.values())
