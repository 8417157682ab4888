"""Agent Fair Share of compute (`fair_share.share_allowances`, `ComputeShares`): the split
of a batch step's tokens among competing tenants, its stated bound, and the scheduler
following it (a long prefill of one tenant leaves room for another's step in the same
batch step; one tenant alone is not touched)."""

from __future__ import annotations

import math
import random

import pytest

from kvsaga.scheduler.fair_share import share_allowances
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks, wf


def test_allowances_follow_weights_and_give_unused_shares_away():
    assert share_allowances({"a": math.inf, "b": math.inf}, {}, 128) == {"a": 64, "b": 64}
    assert share_allowances({"a": math.inf, "b": math.inf}, {"b": 3.0}, 128) == {
        "a": 32, "b": 96}
    # b needs 10 (its decodes): the rest of its share goes to a (work-conserving)
    assert share_allowances({"a": math.inf, "b": 10}, {}, 128) == {"a": 118, "b": 10}
    assert share_allowances({"a": 5, "b": 10}, {}, 128) == {"a": 5, "b": 10}


def test_allowances_bound_on_random_demands():
    """The docstring's bound: each tenant gets at least min(its demand, floor(step x its
    weight share)) and at least 1; sated tenants get exactly their demand; the split never
    exceeds the step but by the 1-token minimums, and wastes at most one token a tenant."""
    rng = random.Random(5)
    for _ in range(2000):
        k = rng.randint(2, 5)
        tenants = [f"t{i}" for i in range(k)]
        weights = {t: rng.choice([0.5, 1.0, 2.0, 3.0]) for t in tenants}
        demands = {t: rng.choice([math.inf, rng.randint(1, 300)]) for t in tenants}
        step = rng.randint(1, 512)
        got = share_allowances(demands, weights, step)
        total = sum(weights.values())
        for t in tenants:
            assert got[t] >= max(min(demands[t], math.floor(step * weights[t] / total)), 1)
            assert got[t] <= max(demands[t], 1)
        assert sum(got.values()) <= step + k
        if sum(demands.values()) >= step:
            assert sum(got.values()) >= step - k


def _long_prefill(s, ex, session="A0"):
    """A request of tenant A with a 200-token prompt admitted and partly prefilled."""
    r = ToyRequest(session, toks(0, 200), tenant="A", max_new=2)
    s.add(r, 0.0)
    out = s.schedule(0.0, ex)
    ex.run(s, out, 0.0)
    return r


@pytest.mark.parametrize("share", [32, 0, None])
def test_a_long_prefill_leaves_another_tenant_its_share(share):
    """While B's step waits, A's running prefill takes only its half of the step's share
    and B's step is admitted with its own in the same batch step; with the share off
    (0, and the default, None: it is opt-in), A's chunk takes the whole budget and B is not
    admitted."""
    m = manager(128)
    s = wf(m) if share is None else wf(m, share_step_tokens=share)
    ex = ToyExecutor(m)
    a = _long_prefill(s, ex)
    b = ToyRequest("B0", toks(5000, 40), tenant="B", max_new=2, arrival=1.0)
    s.add(b, 1.0)
    out = s.schedule(1.0, ex)
    chunks = {r.session_id: n for r, n in out.scheduled}
    if share:
        assert chunks == {"A0": 16, "B0": 16} and out.admitted == [b]
    else:
        assert chunks == {"A0": 64} and out.admitted == []
    assert a in s.running
    m.check_integrity()


def test_one_tenant_alone_keeps_the_whole_budget():
    """No other tenant competes: A's prefill takes the whole token budget, as without
    tenants (single-tenant decisions are unchanged)."""
    m = manager(128)
    s = wf(m, share_step_tokens=32)
    ex = ToyExecutor(m)
    _long_prefill(s, ex)
    out = s.schedule(1.0, ex)
    assert [n for _, n in out.scheduled] == [64]


def test_a_tenant_out_of_share_does_not_hold_the_queue():
    """A's running prefill spends A's allowance; A's resumed step at the head of the queue
    then sits the step out and B's session behind it is admitted instead (without that,
    nobody would be admitted in the step)."""
    m = manager(128)
    s = wf(m, share_step_tokens=32)
    ex = ToyExecutor(m)
    a0 = ToyRequest("A0", toks(9000, 20), tenant="A", max_new=1, last=False)
    s.add(a0, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=0.5)  # admitted, then paused
    _long_prefill(s, ex, session="A1")
    nxt = ToyRequest("A0", toks(9000, 22), tenant="A", max_new=1, resumed=True, arrival=0.5)
    b = ToyRequest("B0", toks(5000, 20), tenant="B", max_new=2, arrival=1.0)
    s.add(nxt, 0.5)
    s.add(b, 1.0)
    assert s.waiting[0] is nxt  # the resumed step heads the queue
    out = s.schedule(1.0, ex)
    assert out.admitted == [b]
    assert {r.session_id: n for r, n in out.scheduled} == {"A1": 16, "B0": 16}
    m.check_integrity()


def test_bad_share_parameter_is_refused():
    with pytest.raises(ValueError, match="share_step_tokens"):
        wf(manager(16), share_step_tokens=-1)
