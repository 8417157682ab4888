"""`gittins`: graph with an unhinted paused session priced by its pause's Gittins index."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from kvsaga.policy import GittinsGraphPolicy, GraphPolicy, make_policy
from kvsaga.policy.gittins import HORIZONS, gittins_rate
from kvsaga.policy.lognormal import LogNormalDist, resume_window
from tests.policy.helpers import make, run_step, tokens


def _train(graph, tool: str, median: float, sigma: float, n: int = 60) -> None:
    """n past sessions paused once on `tool`, their pauses at the n quantiles of a
    log-normal of this median and sigma."""
    nd = NormalDist()
    for i in range(n):
        gap = median * math.exp(sigma * nd.inv_cdf((i + 0.5) / n))
        sid, t = f"train-{tool}-{i}", -1e6 + i * 1e4
        graph.step_started(sid, "default", t)
        graph.step_finished(sid, tool, t + 1.0)
        graph.step_started(sid, "default", t + 1.0 + gap)
        graph.session_ended(sid, t + 2.0 + gap)


def test_a_narrow_pause_is_priced_as_graph_prices_a_point():
    """A pause of nearly fixed length: the best plan holds to the end, so the index is
    P / (E[time until back] + wait), graph's form."""
    d = LogNormalDist(math.log(10.0), 0.01)
    for wait in (0.0, 3.0):
        assert gittins_rate(d, 1.0, 0.0, wait) == pytest.approx(1.0 / (d.mean + wait), rel=0.01)
    # Never-resumers (p0 < 1) lower it.
    assert gittins_rate(d, 0.5, 0.0, 0.0) < 0.5 * gittins_rate(d, 1.0, 0.0, 0.0)


def test_the_search_finds_the_maximum_within_a_percent():
    """The search (`HORIZONS`, refined) against the maximum over a grid 16 times as fine,
    for wide and narrow pauses, fresh and long-lasting ones, with and without an admission
    wait."""
    fine = [1e-3 * 2.0 ** (j / 32) for j in range(32 * 30 + 1)]
    for mu, sigma in ((math.log(30.0), 3.0), (math.log(2.0), 0.5), (math.log(600.0), 1.5)):
        d = LogNormalDist(mu, sigma)
        for p0 in (1.0, 0.7):
            for e in (0.0, 1.0, 30.0):
                for wait in (0.0, 2.0):
                    best = max(p / (wait + h) for p, h in
                               (resume_window(d, p0, e, s) for s in fine) if wait + h > 0)
                    got = gittins_rate(d, p0, e, wait)
                    assert got >= 0.99 * best, (mu, sigma, p0, e, wait)
                    assert got <= 1.01 * best, (mu, sigma, p0, e, wait)
    assert HORIZONS[0] == 1e-3 and HORIZONS[-1] > 1e6


def test_a_wide_pause_is_worth_more_than_its_median_says():
    """A human-like pause (median 30 s, sigma 3) comes back within a second about one time
    in eight: holding it briefly pays more per second than 1 / median."""
    d = LogNormalDist(math.log(30.0), 3.0)
    assert gittins_rate(d, 1.0, 0.0, 0.0) > 3.0 / d.median_residual(0.0)


def _two_paused(policy):
    """A paused on a wide tool (median 30 s, sigma 3), b on a narrow one (median 10 s),
    then c needs two of their blocks; returns c's block table."""
    _train(policy.graph, "human", 30.0, 3.0)
    _train(policy.graph, "build", 10.0, 0.05)
    m = make(policy, num_blocks=8)
    run_step(m, "a", tokens(100, 8), now=0.0, tool="human")  # blocks 0, 1
    run_step(m, "b", tokens(200, 8), now=0.01, tool="build")  # blocks 2, 3
    m.begin_step("c", tokens(300, 24), now=0.02)
    m.allocate_slots("c", 24, now=0.02)  # 4 free blocks + 2 victims
    m.check_integrity()
    return m.block_table("c")


def test_gittins_keeps_the_wide_pause_graph_drops():
    """graph prices a by its median residual (30 s) and drops it before b (10 s); the index
    sees a's early returns and drops b. Fails on graph itself."""
    assert _two_paused(GraphPolicy()) == [4, 5, 6, 7, 1, 0]
    p = GittinsGraphPolicy()
    assert _two_paused(p) == [4, 5, 6, 7, 3, 2]
    assert p.index_rate("a", 0.02) > p.index_rate("b", 0.02)


def test_scan_and_index_agree():
    """The indexed search (keys on the elapsed-time grid) and the scan (exact times) name
    the same victims here."""
    indexed, scan = GittinsGraphPolicy(), GittinsGraphPolicy()
    scan.indexed = False
    assert _two_paused(indexed) == _two_paused(scan)


def test_other_states_are_priced_as_graph_prices_them():
    """A hinted pause, while it lasts, reads graph's rate."""
    p, g = GittinsGraphPolicy(), GraphPolicy()
    for pol in (p, g):
        m = make(pol, num_blocks=8)
        run_step(m, "h", tokens(100, 8), now=0.0, tool="build", expected_s=5.0)
    assert p.index_rate("h", 1.0) == pytest.approx(
        g._graph_time("h", 1.0, True, True)[0] / g._graph_time("h", 1.0, True, True)[1])


def test_registered_by_name():
    assert isinstance(make_policy("gittins"), GittinsGraphPolicy)
