"""Per case, how a candidate's AFS veto run moved each afs_max_slowdown_ratio against a base
run (both written by `bench/scheduling_veto_split.py run` or `scheduling_veto_noise.py run`):
base ratio, candidate ratio and d log ratio, largest increase first; then the mean d log ratio
per mix and capacity fraction. Reads the files only (the veto's verdict is
`scheduling_veto_noise.py judge`'s).

    python bench/scheduling_veto_cases.py BASE CAND
"""

from __future__ import annotations

import argparse
import json
import math
import sys


def ratios(path: str) -> dict[tuple, float]:
    with open(path) as f:
        run = json.load(f)
    return {(r["mix"], r["seed"], r["frac"]): r["ratio"] for r in run["rows"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base", help="the base run's JSON")
    ap.add_argument("cand", help="the candidate run's JSON")
    a = ap.parse_args(argv)
    base, cand = ratios(a.base), ratios(a.cand)
    if set(base) != set(cand):
        ap.error(f"the runs' cases differ: {sorted(set(base) ^ set(cand))}")
    moved = sorted(((math.log(cand[k] / base[k]), k) for k in base), reverse=True)
    print("| mix | seed | capacity | base ratio | candidate ratio | d log ratio |")
    print("|---|---|---|---|---|---|")
    for d, (mix, seed, frac) in moved:
        print(f"| {mix} | {seed} | {frac:.0%} | {base[(mix, seed, frac)]:.2f} | "
              f"{cand[(mix, seed, frac)]:.2f} | {d:+.3f} |")
    groups: dict[tuple, list[float]] = {}
    for d, (mix, _, frac) in moved:
        groups.setdefault((mix, frac), []).append(d)
    for (mix, frac), ds in sorted(groups.items()):
        print(f"{mix} {frac:.0%}: mean d log ratio {sum(ds) / len(ds):+.4f} over {len(ds)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
