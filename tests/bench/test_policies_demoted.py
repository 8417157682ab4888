"""bench/policies_demoted.py (graph's forecasts of demoted sessions' returns, fit seeds only)
and bench/policies_decisions.py's `--pair` of specs."""

from __future__ import annotations

import math

import pytest

from tests.bench.test_policies import load
from tests.exits import usage_error


def test_spearman_ranks_with_ties_and_refuses_what_does_not_vary():
    mod = load("policies_demoted")
    assert mod.ranks([3.0, 1.0, 3.0, 2.0]) == [3.5, 1.0, 3.5, 2.0]
    assert mod.spearman([1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 30.0, 40.0]) == pytest.approx(1.0)
    assert mod.spearman([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]) == pytest.approx(-1.0)
    assert math.isnan(mod.spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert math.isnan(mod.spearman([1.0, 2.0], [1.0, 2.0]))


def test_demoted_refuses_evaluation_seeds_and_policies_without_a_forecast(capsys):
    mod = load("policies_demoted")
    for argv, says in ((["--seed", "941"], "seed 941 is not a fit seed"),
                       (["--policy", "lru"], "'lru' is not a graph policy"),
                       (["--fraction", "0"], "--fraction must be in (0, 1], got 0.0")):
        with pytest.raises(SystemExit) as e:
            mod.main(argv)
        assert says in usage_error(e, capsys)


def test_the_probe_notes_demoted_sessions_without_changing_graphs_run():
    """The noting hooks leave graph's victims alone: the recomputation is graph's own."""
    mod = load("policies_demoted")
    P = load()
    line = mod.row("swe", 202, 0.6, "graph")
    solo = P._run(("swe", 202, 0.6, "graph"))["recomputed_tokens"] / 1e6
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[5] == f"{solo:.3f}"
    assert int(cells[6]) > 0
    # the scheduler's ranks reach the probe (`session_admission_rank`): some demoted
    # sessions are told one while they hold blocks, each column under its header
    assert len(cells) == mod.HEADER.splitlines()[0].count("|") - 1
    assert int(cells[14]) > 0


def test_decisions_pair_takes_specs_and_names_a_bad_one(capsys):
    mod = load("policies_decisions")
    with pytest.raises(SystemExit) as e:
        mod.main(["--pair", "graph[no_such_option=1],ttl"])
    line = usage_error(e, capsys)
    assert "--pair: " in line and "'no_such_option'" in line
    with pytest.raises(SystemExit) as e:
        mod.main(["--pair", "graph[demoted_size=1]"])
    assert "--pair must name two different policies, got 'graph[demoted_size=1]'" in \
        usage_error(e, capsys)
