"""Recomputed tokens of graph, ttl and `graph[admission_room=1]` on the five fit cases of
bench/RESULTS.md "Eviction policies: the room the scheduler lacks for a demoted session",
each at its own pool (`bench/policies.py`'s `_run`), the option twice: with the room told as
a snapshot at queue changes only (`AdmissionOrder._refresh_rooms` switched off, as the option
was measured first) and measured again at admission attempts where the pool changed (the
code's behaviour); and `graph[paused_room=1]` (session 25: the room a demoted session still
paused on its tool would lack, told by `AdmissionOrder._tell_paused_rooms`). Fit seeds
only; deterministic; a few seconds a run.

    python bench/policies_room_runs.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import policies as P  # noqa: E402

from kvsaga.scheduler.admission_order import AdmissionOrder  # noqa: E402

CASES = [("swe", 102, 0.6), ("swe+bfcl", 402, 0.6), ("swe", 201, 0.3), ("swe", 202, 0.6),
         ("swe", 1, 0.6)]
RUNS = [("graph", "graph", True), ("ttl", "ttl", True),
        ("option, snapshot", "graph[admission_room=1]", False),
        ("option, re-measured", "graph[admission_room=1]", True),
        ("paused_room", "graph[paused_room=1]", True)]


def main() -> int:
    refresh = AdmissionOrder._refresh_rooms
    print("| trace | seed | capacity | " + " | ".join(f"{k} (M)" for k, _, _ in RUNS) + " |")
    print("|---|---:|---:|" + "---:|" * len(RUNS))
    try:
        for name, seed, frac in CASES:
            cells = []
            for _, spec, fresh in RUNS:
                AdmissionOrder._refresh_rooms = refresh if fresh else (lambda self, now: None)
                r = P._run((name, seed, frac, spec))
                cells.append(f"{r['recomputed_tokens'] / 1e6:.3f}")
            print(f"| {name} | {seed} | {frac:.0%} | " + " | ".join(cells) + " |", flush=True)
    finally:
        AdmissionOrder._refresh_rooms = refresh
    return 0


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    sys.exit(main())
