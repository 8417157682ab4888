"""Agent Fair Share of compute (`fair_share.favoured_allowances`, `ComputeShares`): the
favoured tenant (least weighted service) and the caps of the others, both stated bounds
(per step; the spread of weighted service), the scheduler following them (a long prefill
of one tenant leaves room for another's step; a tenant with several prefills is capped while
another is behind), bad input, and one tenant alone untouched."""

from __future__ import annotations

import math
import random

import pytest

from kvsaga.scheduler.fair_share import SHARE_STEP_TOKENS, favoured_allowances
from tests.sched_helpers import ToyExecutor, ToyRequest
from tests.scheduler.helpers import manager, toks, wf

INF = math.inf


def test_the_tenant_behind_gets_the_budget_and_the_others_their_caps():
    assert favoured_allowances({"a": INF, "b": INF}, {}, {"a": 10, "b": 3}, 128, 512) == (
        "b", {"a": 128, "b": 512})
    # weights: b's service counts a third as much; a, ahead, keeps the cap
    assert favoured_allowances({"a": INF, "b": INF}, {"b": 3.0}, {"a": 10, "b": 27}, 128,
                               512) == ("b", {"a": 128, "b": 512})
    # three tenants: the two not favoured split the cap by weight (at least 1 each)
    fav, got = favoured_allowances({"a": INF, "b": 5, "c": INF}, {"c": 3.0},
                                   {"a": 0, "b": 9, "c": 90}, 100, 400)
    assert fav == "a" and got == {"a": 400, "b": 25, "c": 75}
    assert favoured_allowances({"a": 1, "b": 1}, {}, {"a": 5}, 1, 8) == ("b", {"a": 1, "b": 8})
    # ties: the first tenant in `demands`
    assert favoured_allowances({"b": INF, "a": 3}, {}, {}, 64, 256)[0] == "b"


@pytest.mark.parametrize("demands,weights,match", [
    ({"a": INF}, {}, "two or more competing tenants"),
    ({"a": INF, "b": INF}, {"b": 0.0}, "tenant weights must be > 0, got 'b': 0.0"),
    ({"a": INF, "b": INF}, {"a": -2.0}, "tenant weights must be > 0, got 'a': -2.0"),
])
def test_bad_allowance_input_is_refused(demands, weights, match):
    with pytest.raises(ValueError, match=match):
        favoured_allowances(demands, weights, {}, 64, 128)


def test_per_step_bound_on_random_input():
    """Bound (1): every tenant but the favoured one (the least served / weight) gets
    max(floor(step x w / the others' weights), 1), whose sum is at most step + k; the
    favoured one gets the whole budget."""
    rng = random.Random(5)
    for _ in range(2000):
        k = rng.randint(2, 5)
        tenants = [f"t{i}" for i in range(k)]
        weights = {t: rng.choice([0.5, 1.0, 2.0, 3.0]) for t in tenants}
        served = {t: rng.randint(0, 1000) for t in tenants}
        budget = rng.randint(1, 1024)
        step = rng.randint(1, budget)
        fav, got = favoured_allowances(dict.fromkeys(tenants, INF), weights, served, step,
                                       budget)
        assert served[fav] / weights[fav] == min(served[t] / weights[t] for t in tenants)
        assert got[fav] == budget
        rest = sum(weights[t] for t in tenants if t != fav)
        for t in tenants:
            if t != fav:
                assert got[t] == max(math.floor(step * weights[t] / rest), 1)
        assert sum(v for t, v in got.items() if t != fav) <= step + k


def test_service_spread_bound_while_both_tenants_have_more_work():
    """Bound (2), two tenants: with both demands above a step's budget, each step the one
    ahead takes its cap and the favoured one the rest of the budget; when budget >= step x
    (1 + largest weight / smallest weight), the spread of weighted service (largest -
    smallest service / weight) never grows past max(its start, budget / smallest weight)."""
    rng = random.Random(11)
    for _ in range(500):
        weights = {"a": rng.choice([0.5, 1.0, 2.0, 3.0]), "b": rng.choice([0.5, 1.0, 3.0])}
        ratio = max(weights.values()) / min(weights.values())
        budget = rng.randint(8, 1024)
        step = rng.randint(1, max(int(budget / (1 + ratio)), 1))
        served = {t: float(rng.randint(0, 3000)) for t in weights}

        def spread(served=served, weights=weights):
            v = [served[t] / weights[t] for t in weights]
            return max(v) - min(v)

        bound = max(spread(), budget / min(weights.values()))
        for _ in range(200):
            fav, got = favoured_allowances(dict.fromkeys(weights, INF), weights, served,
                                           step, budget)
            other = "b" if fav == "a" else "a"
            served[other] += got[other]
            served[fav] += budget - got[other]
            assert spread() <= bound + 1e-9


def _long_prefill(s, ex, session="A0", n=200):
    """A request of tenant A with an `n`-token prompt admitted and partly prefilled."""
    r = ToyRequest(session, toks(0 if session == "A0" else 20_000, n), tenant="A", max_new=2)
    s.add(r, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    return r


@pytest.mark.parametrize("share", [32, 0, None])
def test_a_long_prefill_leaves_another_tenant_room(share):
    """While B's step waits, A's running prefill takes only its cap and B's step is admitted
    in the same batch step (B, with a step waiting, wins the tie of service); with the share
    off (0), A's chunk takes the whole budget and B is not admitted. None: the default,
    `SHARE_STEP_TOKENS` (on), at a budget 4x the cap."""
    m = manager(512)
    if share is None:
        cap, budget = SHARE_STEP_TOKENS, 4 * SHARE_STEP_TOKENS
        s = wf(m, max_num_batched_tokens=budget)
    else:
        cap, budget = share, 64
        s = wf(m, share_step_tokens=share)
    ex = ToyExecutor(m)
    a = _long_prefill(s, ex, n=budget * 3)
    b = ToyRequest("B0", toks(5000, 40), tenant="B", max_new=2, arrival=1.0)
    s.add(b, 1.0)
    out = s.schedule(1.0, ex)
    chunks = {r.session_id: n for r, n in out.scheduled}
    if cap:
        assert chunks == {"A0": cap, "B0": 40 if share is None else 32}
        assert out.admitted == [b]
    else:
        assert chunks == {"A0": 64} and out.admitted == []
    assert a in s.running
    m.check_integrity()


def test_the_tenant_ahead_is_capped_across_its_requests():
    """A has two prefills running and has been served more than B: in each step while B's
    request runs, A's prefill chunks together take at most the cap (bound 1), whatever
    A's number of requests, and B's prefill goes whole."""
    m = manager(256)
    s = wf(m, share_step_tokens=16, max_num_batched_tokens=64)
    ex = ToyExecutor(m)
    _long_prefill(s, ex, "A0", 300)
    _long_prefill(s, ex, "A1", 300)
    s._served.update({"A": 500, "B": 0})
    s._competing = {"A", "B"}  # B competed before (new, the catch-up rule would lift it to 500)
    b = ToyRequest("B0", toks(9000, 120), tenant="B", max_new=3, arrival=1.0)
    s.add(b, 1.0)
    for step in range(4):
        out = s.schedule(1.0 + step, ex)
        got: dict[str, int] = {}
        for r, n in out.scheduled:
            if n > 1:
                got[r.tenant] = got.get(r.tenant, 0) + n
        assert got.get("A", 0) <= 16, (step, got)
        if step < 2:  # B's 120-token prompt: 48 then 48 (the budget less A's 16), then 24
            assert got["B"] == 48, (step, got)
        ex.run(s, out, 1.0 + step)
    assert s._served["A"] < 500 + 4 * 16 + 1
    m.check_integrity()


def test_one_tenant_alone_keeps_the_whole_budget():
    """No other tenant competes: A's prefill takes the whole token budget, as without
    tenants (single-tenant decisions are unchanged), and no service is counted."""
    m = manager(128)
    s = wf(m, share_step_tokens=32)
    ex = ToyExecutor(m)
    _long_prefill(s, ex)
    out = s.schedule(1.0, ex)
    assert [n for _, n in out.scheduled] == [64]
    assert s._served == {}


def test_a_tenant_out_of_allowance_does_not_hold_the_queue():
    """A, ahead in service, spends its cap on its running prefill; A's resumed step at the
    head of the queue then sits the step out and B's session behind it is admitted instead
    (without that, nobody would be admitted in the step)."""
    m = manager(128)
    s = wf(m, share_step_tokens=16)
    ex = ToyExecutor(m)
    a0 = ToyRequest("A0", toks(9000, 20), tenant="A", max_new=1, last=False)
    s.add(a0, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0, tool_s=0.5)  # admitted, then paused
    _long_prefill(s, ex, session="A1")
    s._served["A"] = 100
    s._competing = {"A", "B"}  # B competed before, at 0 (else the catch-up rule lifts it)
    nxt = ToyRequest("A0", toks(9000, 22), tenant="A", max_new=1, resumed=True, arrival=0.5)
    b = ToyRequest("B0", toks(5000, 20), tenant="B", max_new=2, arrival=1.0)
    s.add(nxt, 0.5)
    s.add(b, 1.0)
    assert s.waiting[0] is nxt  # the resumed step heads the queue
    out = s.schedule(1.0, ex)
    assert out.admitted == [b]
    assert {r.session_id: n for r, n in out.scheduled} == {"A1": 16, "B0": 20}
    m.check_integrity()


@pytest.mark.parametrize("kw,match", [
    ({"share_step_tokens": -1}, "share_step_tokens"),
    ({"share_step_tokens": 1.5}, "share_step_tokens"),
    ({"share_step_tokens": "128"}, "share_step_tokens"),
    ({"share_within_cap": 1.5}, r"share_within_cap must be in \[0, 1\]"),
    ({"share_within_cap": -0.1}, "share_within_cap"),
    ({"share_within_cap": float("nan")}, "share_within_cap"),
    ({"share_within_cap": "half"}, "share_within_cap"),
    ({"tenant_weights": {"a": 0.0}}, r"tenant_weights\['a'\]"),
    ({"tenant_weights": {"a": -1.0}}, r"tenant_weights\['a'\]"),
    ({"tenant_weights": {"a": math.nan}}, r"tenant_weights\['a'\]"),
])
def test_bad_share_parameters_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        wf(manager(16), **kw)


def test_a_tenant_joining_late_catches_up_to_the_incumbents_service():
    """The catch-up rule, with no lag: A has been served 100,000 tokens when B's first step
    arrives; B starts at A's weighted service, not at 0, so it is favoured for about one
    step's budget and then the two alternate: the spread of their service never passes one
    step's budget (without the rule B took the whole budget less A's cap in every step, for
    100,000 / 48 steps)."""
    m = manager(1024)
    s = wf(m, share_step_tokens=16, share_lag_tokens=0, max_num_batched_tokens=64)
    ex = ToyExecutor(m)
    _long_prefill(s, ex, "A0", 1500)
    s._served["A"] = 100_000.0
    b = ToyRequest("B0", toks(9000, 1500), tenant="B", max_new=1, arrival=1.0)
    s.add(b, 1.0)
    favoured_b = 0
    for step in range(10):
        before = s._served.get("B", 0.0)
        out = s.schedule(1.0 + step, ex)
        ex.run(s, out, 1.0 + step)
        favoured_b += s._served["B"] - before > 16
        assert abs(s._served["A"] - s._served["B"]) <= 64, (step, s._served)
    assert s._served["B"] >= 100_000 and favoured_b <= 6  # they alternate
    m.check_integrity()


def test_a_tenant_back_from_idle_does_not_bank_service():
    """A tenant that sat out (no request running or waiting) comes back at the least
    weighted service of those still competing, with its weight: it gets no credit for the
    steps it was away."""
    from kvsaga.scheduler.fair_share import ComputeShares

    class Bare(ComputeShares):
        tenant_weights = {"b": 2.0}
        share_lag_tokens = 0.0  # no lag (2842931's rule; test_fair_share_lag has the lag)

    c = Bare()
    c._served = {"a": 900.0, "b": 100.0, "c": 700.0}
    c._catch_up({"a": 1, "c": 1})  # b idle
    c._catch_up({"a": 1, "b": 1, "c": 1})  # b back: at least 2 x min(900, 700)
    assert c._served == {"a": 900.0, "b": 1400.0, "c": 700.0}
    c._catch_up({"a": 1, "b": 1, "c": 1, "d": 1})  # d new: at least 700 / 1
    assert c._served["d"] == 700.0
    c._catch_up({"a": 1, "b": 1, "c": 1, "d": 1})  # nobody new: nothing moves
    assert c._served == {"a": 900.0, "b": 1400.0, "c": 700.0, "d": 700.0}


@pytest.mark.parametrize("part,chunks", [
    (1.0, {"A0": 0, "B0": 24}),   # B, favoured, keeps the whole cap: A sits the step out
    (0.5, {"A0": 12, "B0": 12}),  # B keeps half of it; A takes the rest, within its 16
    (0.0, {"A0": 15, "B0": 9}),   # the rule before: the cap in the running queue's order
])
def test_the_favoured_tenant_keeps_its_part_of_the_prefill_cap(part, chunks):
    """Under the prefill cap (`decode_prefill_tokens` 24, held while a step decodes), A's
    prefill runs ahead of B's in the running queue and A has been served more: B is
    favoured, and its prefill keeps `share_within_cap` of the cap ahead of A's chunk
    (`ComputeShares.favoured_room`); 0 gives the cap in queue order, where A's chunk (its
    allowance, 16 less its decode's token) took most of it and B, though favoured, got the
    rest."""
    m = manager(256)
    s = wf(m, share_step_tokens=16, max_num_batched_tokens=64, decode_prefill_tokens=24,
           decode_prefill_when="always", share_within_cap=part)
    ex = ToyExecutor(m)
    d = ToyRequest("A9", toks(30_000, 4), tenant="A", max_new=50)  # decodes: the cap holds
    s.add(d, 0.0)
    ex.run(s, s.schedule(0.0, ex), 0.0)
    a = _long_prefill(s, ex, "A0", 300)
    s._served.update({"A": 500, "B": 0})
    s._competing = {"A", "B"}  # B competed before (new, the catch-up rule would lift it)
    b = ToyRequest("B0", toks(9000, 300), tenant="B", max_new=3, arrival=1.0)
    s.add(b, 1.0)
    ex.run(s, s.schedule(1.0, ex), 1.0)  # B admitted (its first chunk)
    assert [r.session_id for r in s.running] == ["A9", "A0", "B0"]
    out = s.schedule(2.0, ex)
    got = {r.session_id: n for r, n in out.scheduled}
    assert got["A9"] == 1
    assert {k: got.get(k, 0) for k in ("A0", "B0")} == chunks
    assert a in s.running
    m.check_integrity()


def test_one_tenant_is_untouched_by_the_part_of_the_cap():
    """With one tenant nobody is favoured: the cap goes in queue order whatever
    `share_within_cap` is."""
    got = []
    for part in (0.0, 1.0):
        m = manager(256)
        s = wf(m, max_num_batched_tokens=64, decode_prefill_tokens=24,
               decode_prefill_when="always", share_within_cap=part)
        ex = ToyExecutor(m)
        d = ToyRequest("A9", toks(30_000, 4), tenant="A", max_new=50)
        s.add(d, 0.0)
        ex.run(s, s.schedule(0.0, ex), 0.0)
        _long_prefill(s, ex, "A0", 300)
        _long_prefill(s, ex, "A1", 300)
        got.append([(r.session_id, n) for r, n in s.schedule(2.0, ex).scheduled])
    assert got[0] == got[1] and dict(got[0])["A0"] == 24  # the whole cap (a decode is apart)
