"""Which sessions make `workflow`'s p95 TCT at a grid point of bench/scheduling.py, and where
their time goes: per seed the slowest sessions under workflow (its defaults or `--params`),
each with its steps, tokens, TCT, the same session's TCT under fcfs+lru, its solo time, its
waits (first admission, admission again after demotions, queued while admitted), the run
beyond solo, its demotions and the seconds of its recomputation
(bench/scheduling_bound_gap.py's `observe`; a diagnosis, any seed; issue 10, session 34).

    python bench/scheduling_tail.py bfcl 1 0.25 101,102,103,104,105,106
    python bench/scheduling_tail.py bfcl 1 0.25 106 --params '{"readmit_order": "waited"}'
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import numpy as np
from ascii_args import int_arg
from scheduling import trace
from scheduling_bound_gap import observe
from scheduling_overflow import point_params, point_parser, point_seeds

TOP = 6  # sessions listed a seed (the p95 of 80 sessions lies between the 4th and 5th)


def tail_lines(seed: int, sessions: dict[str, Any], wf: dict, fcfs: dict,
               top: int = TOP) -> list[str]:
    """One seed's lines: workflow's and fcfs+lru's mean and p95 TCT, then its `top`
    slowest sessions under workflow (module docstring). `sessions` maps ids to the trace's
    sessions; `wf` and `fcfs` are `observe`'s answers."""
    wt = np.array([v["tct"] for v in wf["sessions"].values()])
    ft = np.array([v["tct"] for v in fcfs["sessions"].values()])
    p95w, p95f = np.percentile(wt, 95), np.percentile(ft, 95)
    dem = Counter(d["sid"] for d in wf["demotions"])
    out = [f"seed {seed}: workflow mean {wt.mean():.2f} s, p95 {p95w:.2f} s; fcfs+lru mean "
           f"{ft.mean():.2f} s, p95 {p95f:.2f} s; p95 gain {p95f / p95w:.2f}x"]
    for sid, v in sorted(wf["sessions"].items(), key=lambda kv: -kv[1]["tct"])[:top]:
        s = sessions[sid]
        rec = sum(x for k, x in v.items() if k.startswith("rec_s "))
        out.append(f"  {sid}: arrives {s.arrival_s:.1f} s, {len(s.steps)} steps, "
                   f"{s.total_tokens} tokens; TCT {v['tct']:.1f} s (fcfs+lru "
                   f"{fcfs['sessions'][sid]['tct']:.1f}), solo {v['solo']:.1f}; waits first "
                   f"{v['wait first']:.1f} / again {v['wait again']:.1f} / admitted "
                   f"{v['wait admitted']:.1f}; run beyond solo {v['run']:.1f}; demotions "
                   f"{dem[sid]}; recomputation {rec:.2f} s")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = point_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=None,
                    help="workflow scheduler parameters, a JSON object (default: its defaults)")
    ap.add_argument("--top", type=int_arg, default=TOP, help="sessions listed a seed")
    a = ap.parse_args(argv)
    params = point_params(ap, a.params)
    for seed in point_seeds(ap, a.seeds):
        sessions = {s.id: s for s in trace(a.family, seed, a.load)}
        wf = observe(a.family, a.load, a.capacity, seed, a.policy, "workflow", params)
        fcfs = observe(a.family, a.load, a.capacity, seed, "lru", "fcfs", None)
        print("\n".join(tail_lines(seed, sessions, wf, fcfs, a.top)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
