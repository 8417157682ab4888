"""Sums over a set of tenant names are taken with math.fsum: a set of str iterates in an
order PYTHONHASHSEED picks (CI runs each time with a random one), and a float sum in that
order gave a fair-share ratio, and so a routing decision, that differed from one process to
the next. Each check runs in processes with fixed, different seeds and must print the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEEDS = range(10)  # seed 0 alone, on the old code, disagreed with the other nine


def _outputs(code: str) -> set[str]:
    out = set()
    for seed in SEEDS:
        env = {**os.environ, "PYTHONHASHSEED": str(seed),
               "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get(
                   "PYTHONPATH")) if p)}
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                           text=True, timeout=120, check=True)
        out.add(r.stdout)
    return out


def test_fleet_share_ratio_and_holds_back_do_not_depend_on_the_hash_seed() -> None:
    # each of five tenants has a fifth of the weight; "c" has exactly a fifth of the usage
    code = """if True:
        from kvsaga.fair_share import FairShare
        fs = FairShare(usage={"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.5})
        print(repr(fs.share_ratio("c")), fs.holds_back("e", ["c"], 1.0))
        fs = FairShare(usage={"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 1.0},
                       weights={"a": 0.1, "b": 0.3, "c": 0.7})
        print(*(repr(fs.share_ratio(t)) for t in "abcde"))
    """
    outs = _outputs(code)
    assert len(outs) == 1, f"different results under different PYTHONHASHSEEDs: {outs}"


def test_memory_shares_of_tenants_do_not_depend_on_the_hash_seed() -> None:
    code = """if True:
        from types import SimpleNamespace as NS
        from kvsaga.scheduler.demotion import Demotions
        w = {"a": 0.1, "b": 0.2, "c": 0.3, "d": 0.4, "e": 0.7}
        me = NS(sessions={i: NS(tenant=t) for i, t in enumerate(w)}, _pending={},
                _fair=NS(weight=lambda t: w.get(t, 1.0)))
        print(sorted(Demotions._shares(me, 1000.0).items()))
    """
    outs = _outputs(code)
    assert len(outs) == 1, f"different shares under different PYTHONHASHSEEDs: {outs}"
