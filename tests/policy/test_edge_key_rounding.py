"""The two roundings behind session 52's edge walks (tests/policy/test_edge_hint_walks.py;
/work/lanes/findings/s53/edgewalk.md), each pinned on its own:

- saga: an entry is expired once `now - paused_at > ttl`; its expiry deadline was
  nextafter(paused_at + ttl), one ulp late wherever that sum rounded up (at a 1e6 s clock
  the sum's ulp is 1e-10, far coarser than the TTL's): at that one clock value the index
  kept the entry unexpired while the scan had it expired. Now `first_past`, in saga's keying,
  in the Python index's `_class_limits` and the C++ index's `class_limits`.
- graph[trust=1]: the index's formula multiplied the time by correction / factor in one
  number, Python by the correction and then divided by the factor; the keys differed in the
  last bit, and sessions the scan ties were ordered apart. Now the formula carries the hedge
  as a number of its own (mode 4's last)."""

from __future__ import annotations

import math
import random
from fractions import Fraction

import pytest

from kvsaga._core import cpp_available
from kvsaga.policy import make_policy
from kvsaga.policy.search import grid_index
from kvsaga.policy.session_heap import PySessionHeap, make_session_heap
from kvsaga.policy.timed_keys import first_past, graph_rate
from tests.policy.helpers import make, run_step, tokens
from tests.policy.test_session_heap import SessionHeap

# Builds its heaps and policies itself, naming the core (tests/policy/conftest.py).
READS_NO_CORE = True

CORES = ["python", "cpp"]
# A pause at a 1e6 s clock and a TTL learned from 7.05 s gaps (edge_walk_saga.py's entry):
# their sum rounds up, so the clock value R is already past the TTL.
T0, TTL = 1000007.05, 7.050000000000002
R = T0 + TTL


def _core(core: str) -> str:
    if core == "cpp" and not cpp_available():
        pytest.skip("the C++ core is not built")
    return core


def test_the_fixture_sum_rounds_up_past_the_ttl():
    assert Fraction(R) > Fraction(T0) + Fraction(TTL)
    assert R - T0 > TTL and not math.nextafter(R, -math.inf) - T0 > TTL


def test_first_past_is_the_first_clock_value_past_the_limit():
    """Where the subtraction is exact (the clock within 2x of t0: Sterbenz), the first float
    T with T - t0 > x; elsewhere no later than it; inf for an infinite x."""
    rng = random.Random(53)
    for _ in range(4000):
        t0 = rng.choice([0.0, 0.05, 7.05, 1e3, 1e6, 1000007.05, 3e6]) + rng.choice(
            [0.0, rng.random(), rng.random() * 1e-6])
        x = rng.choice([7.050000000000002, 300.0, 1e-9, 5e-324, 0.0, rng.random() * 10,
                        rng.uniform(0, t0)])
        t = first_past(t0, x)
        assert not math.nextafter(t, -math.inf) - t0 > x, (t0, x)  # never late
        first = t
        for _ in range(64):  # (a few ulps at most where the subtraction rounds)
            if first - t0 > x:
                break
            first = math.nextafter(first, math.inf)
        assert first - t0 > x, (t0, x)
        if t0 / 2 <= t <= 2 * t0:  # exact subtraction: exactly the first
            assert t == first, (t0, x)
    assert first_past(5.0, math.inf) == math.inf
    assert first_past(T0, TTL) == R


@pytest.mark.parametrize("core", CORES)
def test_a_saga_entry_expires_at_the_first_clock_value_past_its_ttl(core):
    """Two entries of one score: "b" hinted 1e9 s (TTL 300 s), "a" hinted TTL. At R, "a" is
    past its TTL and goes first; the old deadline (nextafter(R)) left it unexpired there,
    "b" (the lower tail block) first."""
    m = make(make_policy("saga", relearn_share=0.0), num_blocks=14, core=_core(core))
    p = m.policy
    run_step(m, "b", tokens(0, 8), T0, expected_s=1e9)
    run_step(m, "a", tokens(100, 8), T0, expected_s=TTL)
    before = p.eviction_order(T0 + 7.0)  # a search in the TTL's grid cell: its timer armed
    assert before == p.scan_order(T0 + 7.0) == p.groups["b"] + p.groups["a"]
    scores = p.scores(R)  # (the published scores: "a" past its TTL, "b" not, tied)
    assert scores["a"][0] and not scores["b"][0] and scores["a"][1] == scores["b"][1]
    assert p.eviction_order(R) == p.scan_order(R) == p.groups["a"] + p.groups["b"]


@pytest.mark.parametrize("cpp", [False, True], ids=["python", "cpp"])
def test_a_record_moved_by_class_expires_at_the_first_clock_value_past_its_limit(cpp):
    """`rekey_classes` moves "a" into class 2, whose saga formula ends at nextafter(TTL) and
    expires into class 3: the limits it takes (`_class_limits` / C++ `class_limits`) fire
    at R, where "a" is past the TTL (key class 1), not one ulp later."""
    if cpp and SessionHeap is None:
        pytest.skip("kvsaga._evict is not built")
    index = make_session_heap(True) if cpp else PySessionHeap()
    f, now = (0.3, 8.0, 0.25, 0.2), T0 + 7.0
    k = grid_index(7.0)[0]
    index.push("b", (2, -0.5), 9, 2, now, now,
               (2, k, 2, f, 2, T0, math.nextafter(TTL, math.inf), R, 1.0))
    index.drop("b")  # (its class keeps the formula)
    index.expire_into(2, 3)
    index.push("a", (2, -0.5), 1, 2, math.inf, now, (1, k, 2, f, 2, T0, math.inf, math.inf, 1.0))
    assert index.rekey_classes({1: 2}, now) == set()
    score = index.top()
    assert score[0][0] == 2 and score[1] == 1
    assert index.due(R) == []
    assert index.top() == ((1.0, score[0][1]), 1)


def _paused_graph(trust: bool):
    """graph (trust on or off) with sessions of one class paused at a 1e6 s clock, and
    trust's factor for their state far from 1 (forecasts 20x late, then 20x early)."""
    m = make(make_policy("graph", relearn_share=0.0, trust=int(trust)), num_blocks=64,
             core="python")
    p = m.policy
    for i in range(6):
        run_step(m, f"s{i}", tokens(100 * i, 8), 1e6 + i, tool="t", workflow="w")
    if trust:
        for k in range(6):
            p.trust.add("w", "paused", 4.0 * (20.0 if k % 3 else 0.05), 4.0, 1.0)
        assert abs(math.log(p.trust.factor("w", "paused"))) > 0.5
    return p


@pytest.mark.parametrize("trust", [False, True], ids=["plain", "trust"])
def test_graphs_formula_gives_the_scans_rate_with_trusts_hedge(trust):
    """At grid points from the first to far in the tail, the mode-4 formula's rate (what
    both indexes key by) is the float `_session_base` (the scan) gives, with and without
    trust's hedge."""
    p = _paused_graph(trust)
    checked = 0
    for d in (0.0, 2e-3, 0.05, 0.7, 3.0, 40.0, 600.0, 1e4, 1e6):
        now = 1e6 + 6 + d
        for sid, g in p.groups.items():
            p._memo.clear()  # the policy's own computation, not a key shared by its class
            _, lo, _ = grid_index(max(now - p.views[sid].paused_at, 0.0))
            key, _, rec = p._timed_base(sid, g, now)
            assert rec is not None and rec[4] == 4
            f = rec[3][1:]
            assert f[-1] == (p.trust.factor("w", "paused") if trust else 1.0)
            assert key == p._session_base(sid, g, now)[0] == graph_rate(f, lo), (sid, d)
            checked += 1
    assert checked == 54


# (The index's order against the scan's with trust, on both cores: the pinned walk,
# test_edge_hint_walks.py `test_graph_trust_index_gives_the_scans_order_on_the_walk_ci_found`.)
