"""bench/policies.py judges a policy against the best of lru, saga and ttl only when all three
ran on the case: with `--policies graph,lru` the best of whichever ran (lru alone) was called
"best of lru, saga, ttl" and graph "met" a goal that saga would have missed it on (review
repro r6)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import policies as P  # noqa: E402


def _row(policy: str, rec: int, hit: float = 0.9) -> dict:
    return {"trace": "swe", "seed": 931, "frac": 0.3, "policy": policy, "num_gpu_blocks": 100,
            "hit_rate": hit, "recomputed_tokens": rec}


def test_partial_baselines_are_not_judged() -> None:
    rows = [_row("lru", 1000), _row("graph", 900)]  # saga and ttl never ran
    text = "\n".join(P.goals(rows, "graph"))
    assert "not judged: saga, ttl did not run on every pressured case" in text
    assert "**met**" not in text
    assert math.isnan(P._best_baseline(P._index(rows), ("swe", 931, 0.3)))
    assert P.score(rows, "graph") is None and P.rank(rows, "graph") is None
    assert "| 0.001 (n/a) | 0.001 (n/a) |" in "\n".join(P.tables(rows, ["lru", "graph"]))


def test_all_baselines_give_the_best_of_the_three() -> None:
    rows = [_row("lru", 1000), _row("graph", 900), _row("saga", 800), _row("ttl", 850)]
    text = "\n".join(P.goals(rows, "graph"))
    assert "**missed**: within it on 0 of 1 cases; worst 1.12x" in text
    assert P._best_baseline(P._index(rows), ("swe", 931, 0.3)) == 800
    assert P.score(rows, "graph") == (0, 900.0, 1)
    assert P.rank(rows, "graph") == (900 / 800, 1, 900.0)
