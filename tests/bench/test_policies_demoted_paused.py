"""bench/policies_demoted_paused.py (the room a demoted session paused on its tool would lack,
fit seeds only): its within-search concordance on a constructed record, and its refusals."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from tests.bench.test_policies import load
from tests.exits import usage_error


def test_gamma_counts_pairs_within_a_search_only():
    mod = load("policies_demoted_paused")
    n = len(mod.SIGNALS)
    # search 0: a starts after b (3 s against 1 s); signal 0 orders them so, signal 1 the
    # other way, signal 2 ties, the rest not comparable (nan); c never started (dropped).
    # search 1: one resolved session only: no pair.
    sig = {"a": (5.0, 1.0, 2.0) + (math.nan,) * (n - 3),
           "b": (4.0, 2.0, 2.0) + (math.nan,) * (n - 3),
           "c": (0.0,) * n}
    pol = SimpleNamespace(searches=[[(s, sig[s]) for s in "abc"], [("a", sig["a"])]],
                          done={(0, "a"): 3.0, (0, "b"): 1.0, (1, "a"): 2.0})
    pairs, g = mod.gamma(pol)
    assert pairs == 1
    assert g[0] == 1.0 and g[1] == -1.0
    assert all(math.isnan(x) for x in g[2:])


def test_refuses_evaluation_seeds_bad_fractions_and_policies_without_a_forecast(capsys):
    mod = load("policies_demoted_paused")
    for argv, says in ((["--seed", "971"], "seed 971 is not a fit seed"),
                       (["--seed", "202", "--fraction", "0"], "--fraction must be in (0, 1]"),
                       (["--seed", "202", "--policy", "lru"], "'lru' is not a graph policy")):
        with pytest.raises(SystemExit) as e:
            mod.main(["--trace", "swe", *argv])
        assert says in usage_error(e, capsys)
