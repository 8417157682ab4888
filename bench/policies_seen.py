"""The seen held-out seeds beside the fit set: are they drawn alike? (issue 11, session 33)

Since session 27, `ttl` has ranked first on fresh held-out seeds more often than the tune's
pick, while on the fit set the tune rule keeps picking a graph setting. This module reruns
the held-out traces at the held-out seeds already seen (every evaluation seed run so far:
`policies.SEEN` and the fresh pairs run once since), on today's code, with the constants the
saved fit rows recorded (`policies_tune.explicit` over bench/plots/policies_tune.json's
"constants", each row labelled with the fit set's candidate name), so that the two sets of
rows can be compared case by case: which traces and capacities are pressured, lru's hit
rates, which baseline is best, and how each candidate fares (`features`). Seen seeds may be
read for diagnosis; they are not fresh evidence. The fresh seeds (`FRESH`) are refused.

    python bench/policies_seen.py --workers 2          # simulate, save, print the comparison
    python bench/policies_seen.py --from-json          # the comparison from the saved rows

The offline references (`belady`, `oracle-ttl`, `hindsight`) may be added with `--merge`:
with them the rows carry the best run found that issue 11's 1.10x goal is judged against.
`adaptive` candidates are refused: their saved constants do not pin their graph expert's
constants, which changed since the fit rows ran (graph's `demoted_release`, session 32).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from ascii_args import ascii_int, int_arg
from policies import (
    BASELINES,
    HERE,
    OFFLINE,
    SEEN,
    TRACES,
    TUNE_JSON,
    TUNE_SEEDS,
    _best_baseline,
    _index,
    _save,
    in_range,
    parse_spec,
    run,
    split_specs,
)
from policies_tune import explicit

# Fresh pairs run once each since session 16 (bench/RESULTS.md, "Eviction policies
# (held-out, simulated)" and the sections kept under their own headings); 951, 952 are fit
# data since session 32.
SEEN_SINCE = (931, 932, 941, 942, 961, 962, 971, 972, 981, 982)
SEEN_ALL = (*SEEN, *SEEN_SINCE)
FRESH = (991, 992)  # the lead's fresh pair for session 33: never run here
SEEN_JSON = HERE / "plots" / "policies_seen.json"
SEEN_CANDIDATES = ("lru", "saga", "ttl", "graph[demoted_release=1]", "graph[spread=1]")


def specs_to_run(candidates: list[str], constants: dict) -> dict[str, str]:
    """Fit label -> the spec that runs it with the constants the fit rows recorded."""
    out = {}
    for c in candidates:
        if parse_spec(c)[0] == "adaptive":
            raise ValueError(f"{c!r}: adaptive's saved constants do not pin its experts' "
                             "(graph's changed since the fit rows ran): not comparable")
        out[c] = explicit(c, constants)
    return out


def simulate(seeds: list[int], candidates: list[str], workers: int,
             constants: dict) -> list[dict]:
    """Every held-out trace at `seeds` and both capacities, each candidate run with the fit
    rows' constants and labelled with its fit name."""
    if bad := sorted(set(seeds) & set((*FRESH, *TUNE_SEEDS))):
        raise ValueError(f"seeds {bad} are fresh or fit seeds: this compares seen held-out "
                         "seeds with the fit set")
    specs = specs_to_run(candidates, constants)
    label = {v: k for k, v in specs.items()}
    rows, _ = run(list(TRACES), [0.3, 0.6], list(specs.values()), seeds, workers)
    for r in rows:
        r["policy"] = label[r["policy"]]
    return rows


def case_table(rows: list[dict]) -> list[dict]:
    """Per pressured case: its trace, capacity, lru hit rate, best baseline (its name and
    tokens) and every candidate's ratio to the best baseline."""
    by = _index(rows)
    policies = sorted({r["policy"] for r in rows})
    out = []
    for c in in_range(rows):
        best = _best_baseline(by, c)
        who = min(BASELINES, key=lambda p: by[(*c, p)]["recomputed_tokens"])
        ratios = {p: (by[(*c, p)]["recomputed_tokens"] / best if best else 1.0)
                  for p in policies if (*c, p) in by}
        out.append({"trace": c[0], "seed": c[1], "frac": c[2],
                    "hit": by[(*c, "lru")]["hit_rate"], "best": who, "best_tokens": best,
                    "ratios": ratios})
    return out


def _q(xs: list[float]) -> str:
    if not xs:
        return "-"
    qs = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return f"{qs[0]:.3f} / {qs[1]:.3f} / {qs[2]:.3f}"


def features(sets: list[tuple[str, list[dict]]], candidates: list[str]) -> list[str]:
    """Markdown: the pressured cases of each row set side by side."""
    tabs = [(name, case_table(rows)) for name, rows in sets]
    head = "| | " + " | ".join(n for n, _ in tabs) + " |"
    out = [head, "|---|" + "---:|" * len(tabs)]

    def line(what, f):
        out.append(f"| {what} | " + " | ".join(f(t) for _, t in tabs) + " |")

    line("pressured cases", lambda t: str(len(t)))
    traces = sorted({c["trace"] for _, t in tabs for c in t},
                    key=lambda x: (TRACES + ("web", "bfcl", "assistant")).index(x))
    for tr in traces:
        line(f"... of {tr}", lambda t, tr=tr: str(sum(c["trace"] == tr for c in t)))
    for f in (0.3, 0.6):
        line(f"... at {f:.0%}", lambda t, f=f: str(sum(c["frac"] == f for c in t)))
    line("lru hit rate (quartiles)", lambda t: _q([c["hit"] for c in t]))
    line("best baseline tokens, M (quartiles)",
         lambda t: _q([c["best_tokens"] / 1e6 for c in t]))
    for b in BASELINES:
        line(f"best baseline is {b}", lambda t, b=b: f"{sum(c['best'] == b for c in t)}")
    for p in candidates:
        line(f"`{p}` within 1.0x", lambda t, p=p: (
            f"{sum(c['ratios'][p] <= 1 + 1e-12 for c in t)} of {len(t)}"))
        line(f"`{p}` worst ratio", lambda t, p=p: f"{max(c['ratios'][p] for c in t):.2f}x")
        line(f"`{p}` ratio (quartiles)", lambda t, p=p: _q([c["ratios"][p] for c in t]))
    return out


def per_trace(rows: list[dict], candidates: list[str]) -> list[str]:
    """Markdown: per trace, each candidate's cases within 1.0x and worst ratio."""
    t = case_table(rows)
    out = ["| trace | cases | " + " | ".join(f"`{p}`" for p in candidates) + " |",
           "|---|---:|" + "---:|" * len(candidates)]
    for tr in dict.fromkeys(c["trace"] for c in t):
        mine = [c for c in t if c["trace"] == tr]
        cells = []
        for p in candidates:
            xs = [c["ratios"][p] for c in mine]
            cells.append(f"{sum(x <= 1 + 1e-12 for x in xs)}, worst {max(xs):.2f}x")
        out.append(f"| {tr} | {len(mine)} | " + " | ".join(cells) + " |")
    return out


def report(fit_rows: list[dict], seen_rows: list[dict], candidates: list[str]) -> list[str]:
    fit_held = [r for r in fit_rows if r["trace"] in TRACES and r["seed"] not in (1, 101)]
    out = ["Pressured cases (lru hit rate in [0.8, 0.98]); ratios to the best of lru, saga "
           "and ttl on the same case; quartiles as q1 / median / q3.", ""]
    out += features([("fit set (all)", fit_rows), ("fit set, held-out traces only",
                                                    fit_held),
                     ("seen held-out seeds", seen_rows)], candidates)
    out += ["", "Per trace, fit set (cases within 1.0x, worst ratio):", ""]
    out += per_trace(fit_rows, candidates)
    out += ["", "Per trace, seen held-out seeds:", ""]
    out += per_trace(seen_rows, candidates)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default=",".join(map(str, SEEN_ALL)),
                   help="comma-separated seen held-out seeds to simulate")
    p.add_argument("--policies", default=",".join(SEEN_CANDIDATES),
                   help="fit candidate names (bench/plots/policies_tune.json)")
    p.add_argument("--workers", type=int_arg, default=2, help="simulations run in parallel")
    p.add_argument("--tune-json", default=str(TUNE_JSON),
                   help="the saved fit rows whose constants and rows to compare with "
                        "(default: bench/plots/policies_tune.json; session 34's rerun on the "
                        "scheduler's round-41 default: bench/plots/policies_tune_s34.json)")
    p.add_argument("--from-json", action="store_true",
                   help=f"compare from the saved {SEEN_JSON.name}, no simulation")
    p.add_argument("--merge", action="store_true",
                   help=f"add these policies' rows to the saved {SEEN_JSON.name} (same "
                        "seeds; rows of the same policies replaced)")
    args = p.parse_args(argv)
    tuned = json.loads(Path(args.tune_json).read_text(encoding="utf-8"))
    candidates = split_specs(args.policies)
    if missing := [c for c in candidates if c not in (*tuned["candidates"], *OFFLINE)]:
        p.error(f"{missing}: not candidates of the saved fit rows nor offline references")
    if args.from_json:
        saved = json.loads(SEEN_JSON.read_text(encoding="utf-8"))
        rows = saved["rows"]
        print(f"(rows of `{saved['command']}`, {saved['wall_s'] / 60:.1f} min)")
    else:
        seeds = [ascii_int(x) for x in args.seeds.split(",") if x]
        t = time.perf_counter()
        try:
            rows = simulate(seeds, list(candidates), args.workers, tuned["constants"])
        except ValueError as e:
            p.error(str(e))
        command = " ".join(["python bench/policies_seen.py",
                            *(argv if argv is not None else sys.argv[1:])])
        wall = time.perf_counter() - t
        if args.merge:
            saved = json.loads(SEEN_JSON.read_text(encoding="utf-8"))
            if saved["seeds"] != seeds:
                p.error(f"--merge: the saved rows ran seeds {saved['seeds']}, not {seeds}")
            rows = [r for r in saved["rows"] if r["policy"] not in candidates] + rows
            candidates = [c for c in saved["candidates"] if c not in candidates] + candidates
            command, wall = f"{saved['command']} && {command}", saved["wall_s"] + wall
        _save(SEEN_JSON, {"rows": rows, "seeds": seeds, "candidates": list(candidates),
                          "command": command, "wall_s": wall})
    fit_names = set(tuned["candidates"])  # the offline references ran on the seen rows only
    print("\n".join(report(tuned["rows"], rows, [c for c in candidates if c in fit_names])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
