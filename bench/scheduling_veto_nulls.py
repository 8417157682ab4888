"""Write the calibrated AFS veto's frozen runs (the base, fcfs+lru and the 11 nulls of the
calibration the frozen thresholds come from, as tests/bench/afs_noise_sNN.json keeps them:
each case's afs_max_slowdown_ratio) back out as `bench/scheduling_veto_noise.py run` files,
so that `scheduling_veto_noise.py judge` can judge a candidate without rerunning the nulls
(about 10-40 minutes) once their /tmp files are gone. `judge` reads only each row's mix,
seed, frac and ratio (`ratios`) and recomputes the thresholds from the nulls, refusing to
judge unless they are the frozen ones.

    python bench/scheduling_veto_nulls.py OUT_DIR [--session 43|41|34|33|32|26] \
        [--check BASE]

writes OUT_DIR/sNN_base.json, OUT_DIR/sNN_fcfs.json and OUT_DIR/sNN_null_NAME.json, NN the
calibration's session: 43 (the default: the thresholds frozen since session 43, on today's
default, `readmit_charge` "room_returns_queue_demoted" with graph's `demoted_release` on and
`share_within_cap` 0.5, after session 42's scheduler fixes), 41 (history: the same default
before session 42 fixed idle admission's clock), 34 (history: the same with
`share_within_cap` 0, before the core's tail count was corrected), 33 (history:
`readmit_charge` "room_returns_queue", `demoted_release` on), 32 (history: the same
scheduler with `demoted_release` off) or 26 (history: "uncached").
Judge against a base rerun on today's code (`scheduling_veto_split.py run BASE --seeds
102,...,109`), after checking its 32 ratios equal sNN_base.json's (--check BASE does it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from ascii_args import int_arg

SESSIONS = (43, 41, 34, 33, 32, 26)  # the calibrations kept: the first is the one frozen today


def frozen(session: int) -> str:
    """The committed ratios of session `session`'s calibration."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "bench",
                        f"afs_noise_s{session}.json")


def rows(run: dict) -> list[dict]:
    return [{"mix": k[0], "seed": k[1], "frac": k[2], "ratio": v} for k, v in run["ratios"]]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", help="the folder the sNN_*.json runs are written to")
    ap.add_argument("--check", metavar="BASE", default=None,
                    help="a base rerun (`scheduling_veto_split.py run`): exit 1 unless its "
                         "ratios equal the frozen base's")
    ap.add_argument("--session", type=int_arg, choices=SESSIONS, default=SESSIONS[0],
                    help="whose calibration (default: %(default)s, the frozen thresholds')")
    a = ap.parse_args(argv)
    with open(frozen(a.session)) as f:
        runs = json.load(f)["runs"]
    os.makedirs(a.out_dir, exist_ok=True)
    for name, run in runs.items():
        with open(os.path.join(a.out_dir, f"s{a.session}_{name}.json"), "w") as f:
            json.dump({"defaults": run["defaults"], "null": run["null"],
                       "config": run["config"], "rows": rows(run)}, f, indent=1)
    print(f"wrote {len(runs)} runs to {a.out_dir}: {', '.join(sorted(runs))}")
    if a.check:
        with open(a.check) as f:
            got = {(r["mix"], r["seed"], r["frac"]): r["ratio"] for r in json.load(f)["rows"]}
        want = {(r["mix"], r["seed"], r["frac"]): r["ratio"] for r in rows(runs["base"])}
        same = got == want
        print(f"{a.check}: {len(got)} ratios, " + ("equal" if same else "NOT equal")
              + f" to session {a.session}'s base")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
