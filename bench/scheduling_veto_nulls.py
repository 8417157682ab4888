"""Write the calibrated AFS veto's frozen runs (session 26's base, fcfs+lru and the 11 nulls,
as tests/bench/afs_noise_s26.json keeps them: each case's afs_max_slowdown_ratio) back out as
`bench/scheduling_veto_noise.py run` files, so that `scheduling_veto_noise.py judge` can judge
a candidate without rerunning the nulls (about 40 minutes) once their /tmp files are gone.
`judge` reads only each row's mix, seed, frac and ratio (`ratios`) and recomputes the
thresholds from the nulls, refusing to judge unless they are the frozen ones.

    python bench/scheduling_veto_nulls.py OUT_DIR

writes OUT_DIR/s26_base.json, OUT_DIR/s26_fcfs.json and OUT_DIR/s26_null_NAME.json. Judge
against a base rerun on today's code (`scheduling_veto_split.py run BASE --seeds
102,...,109`), after checking its 32 ratios equal s26_base.json's (--check BASE does it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

FROZEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "bench",
                      "afs_noise_s26.json")


def rows(run: dict) -> list[dict]:
    return [{"mix": k[0], "seed": k[1], "frac": k[2], "ratio": v} for k, v in run["ratios"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--check", metavar="BASE", default=None,
                    help="a base rerun (`scheduling_veto_split.py run`): exit 1 unless its "
                         "ratios equal the frozen base's")
    a = ap.parse_args(argv)
    with open(FROZEN) as f:
        runs = json.load(f)["runs"]
    os.makedirs(a.out_dir, exist_ok=True)
    for name, run in runs.items():
        with open(os.path.join(a.out_dir, f"s26_{name}.json"), "w") as f:
            json.dump({"defaults": run["defaults"], "null": run["null"],
                       "config": run["config"], "rows": rows(run)}, f, indent=1)
    print(f"wrote {len(runs)} runs to {a.out_dir}: {', '.join(sorted(runs))}")
    if a.check:
        with open(a.check) as f:
            got = {(r["mix"], r["seed"], r["frac"]): r["ratio"] for r in json.load(f)["rows"]}
        want = {(r["mix"], r["seed"], r["frac"]): r["ratio"] for r in rows(runs["base"])}
        same = got == want
        print(f"{a.check}: {len(got)} ratios, "
              + ("equal to session 26's base" if same else "NOT equal to session 26's base"))
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
