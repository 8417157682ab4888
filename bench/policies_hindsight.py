"""The offline reference `hindsight` on the fit set: how far the default is from it, and
whether its loss is in its victims or in the schedule its misses make.

    python bench/policies_hindsight.py --workers 1              # every pressured fit case
    python bench/policies_hindsight.py --traces swe --seeds 402 --fractions 0.3

For each pressured case of the fit set (lru hit rate in `HIT_RANGE`, one per pool size; the
per-size rows of bench/plots/policies_tune_smooth.json say which, and which of lru, saga
and ttl recomputed least), it reruns lru, saga, ttl and `graph` (the default) with their
schedules recorded (kvsaga/sim/hindsight.py `record`; the best baseline's and graph's must
recompute what the saved row says, or the row is flagged), then `best_offline` from those
four: belady and oracle-ttl each from the trace's release times, from plain belady's
admission waits, from each of the four runs' waits, and once more from the best of those
offline runs (unless its waits were already used). It prints, per case, each run's
recomputed tokens and:

- `hindsight`: the least of the belady and oracle-ttl runs (a feasible run, at most plain
  belady and oracle-ttl: a reference, not a lower bound), with the run that reached it;
- graph and the best baseline as multiples of it;
- `offline <- graph`: the lesser of belady and oracle-ttl told graph's admission waits
  (`belady<-graph`, `oracle-ttl<-graph` exactly, not runs of the extra round). Next to graph
  itself it says how much victims chosen with the future known save against the schedule
  graph's own run makes; next to `offline <- BEST` (the best baseline's waits) it says
  whether graph's schedule, not its victims, is what costs;
- counts over the cases: how often hindsight, plain belady, plain oracle-ttl and the lesser
  of the two are at or below the best baseline, how often graph is within 1.10x of each,
  and on the cases where graph recomputes over 5% more than the best baseline, how often
  `offline <- graph` is over 5% below graph and over 5% above `offline <- BEST`.

Fit seeds only by default; a seed of the lead's fresh set must not be passed here (this is
a diagnosis, printed, not a verdict).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from ascii_args import ascii_float, ascii_int, int_arg
from policies import (  # bench/ is on the path when run as a script
    BASELINES,
    HERE,
    HIT_RANGE,
    PRESET,
    TUNE_SEEDS,
    build_trace,
)

from kvsaga.sim.hindsight import OFFLINE, best_offline, record
from kvsaga.sim.simulator import SimConfig
from kvsaga.workers import worker_pool

SAVED = HERE / "plots" / "policies_tune_smooth.json"
GRAPH = "graph[median_returns=1]"  # the saved rows' name for graph at its defaults


def pressured_cases(rows: list[dict]) -> list[dict]:
    """Per pressured case (lru hit rate in HIT_RANGE, one per pool size): trace, seed,
    frac, blocks, the best baseline and its tokens, graph's saved tokens."""
    by = {(r["trace"], r["seed"], r["frac"], r["policy"]): r for r in rows}
    seen, out = set(), []
    for r in rows:
        if r["policy"] != "lru" or not HIT_RANGE[0] <= r["hit_rate"] <= HIT_RANGE[1]:
            continue
        key = (r["trace"], r["seed"], r["num_gpu_blocks"])
        case = (r["trace"], r["seed"], r["frac"])
        if key in seen or (*case, GRAPH) not in by:
            continue
        seen.add(key)
        base = {p: by[(*case, p)]["recomputed_tokens"] for p in BASELINES}
        best = min(BASELINES, key=lambda p: base[p])
        out.append(dict(trace=r["trace"], seed=r["seed"], frac=r["frac"],
                        blocks=r["num_gpu_blocks"], best=best, best_saved=base[best],
                        graph_saved=by[(*case, GRAPH)]["recomputed_tokens"]))
    return out


def run_case(case: dict) -> dict:
    t = time.perf_counter()
    trace = build_trace(case["trace"], case["seed"])
    config = SimConfig(preset=PRESET, num_gpu_blocks=case["blocks"])
    online = [record(trace, config, p) for p in (*BASELINES, "graph")]
    ref = best_offline(trace, config, online, rounds=1)
    now = {r.source: r.result.recomputed_tokens for r in online}
    return dict(case, best_now=now[case["best"]], graph_now=now["graph"], online=now,
                runs={r.source: r.result.recomputed_tokens for r in ref.runs},
                hindsight=ref.recomputed_tokens, hindsight_from=ref.best.source,
                wall_s=time.perf_counter() - t)


def _from(r: dict, src: str) -> int:
    """The least offline run steered directly by run `src`'s waits (`belady<-SRC`,
    `oracle-ttl<-SRC`; not the extra round's runs from a run steered by them)."""
    return min(r["runs"][f"{p}<-{src}"] for p in OFFLINE if f"{p}<-{src}" in r["runs"])


def best_found(r: dict) -> int:
    """The least of hindsight and the online runs of the case (lru, saga, ttl, graph)."""
    return min(r["hindsight"], *r["online"].values())


def report(rows: list[dict], command: str, wall_s: float) -> str:
    m = 1e6
    out = [f"`{command}`: {wall_s / 60:.1f} min, {len(rows)} pressured fit cases.", "",
           "| trace | seed | capacity | blocks | best baseline | graph | belady | oracle-ttl "
           "| offline <- BEST | offline <- graph | hindsight (from) | graph x hindsight | "
           "best x hindsight | graph x best found |",
           "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
    flags = []
    for r in rows:
        h, runs = r["hindsight"] or 1, r["runs"]
        least = best_found(r) or 1
        if r["best_now"] != r["best_saved"] or r["graph_now"] != r["graph_saved"]:
            flags.append(f"{r['trace']} {r['seed']} {r['frac']:.0%}: saved "
                         f"{r['best_saved']}/{r['graph_saved']}, now "
                         f"{r['best_now']}/{r['graph_now']}")
        out.append(
            f"| {r['trace']} | {r['seed']} | {r['frac']:.0%} | {r['blocks']} | "
            f"{r['best']} {r['best_now'] / m:.3f} | {r['graph_now'] / m:.3f} | "
            f"{runs['belady'] / m:.3f} | {runs['oracle-ttl'] / m:.3f} | "
            f"{_from(r, r['best']) / m:.3f} | {_from(r, 'graph') / m:.3f} | "
            f"{r['hindsight'] / m:.3f} ({r['hindsight_from']}) | {r['graph_now'] / h:.2f}x | "
            f"{r['best_now'] / h:.2f}x | {r['graph_now'] / least:.2f}x |")
    n = len(rows)

    def count(pred) -> int:
        return sum(1 for r in rows if pred(r))

    def plain(r: dict) -> int:
        return min(r["runs"]["belady"], r["runs"]["oracle-ttl"])

    refs = (("hindsight", lambda r: r["hindsight"]),
            ("plain belady", lambda r: r["runs"]["belady"]),
            ("plain oracle-ttl", lambda r: r["runs"]["oracle-ttl"]),
            ("the lesser of plain belady and oracle-ttl", plain))
    losses = [r for r in rows if r["graph_now"] > 1.05 * r["best_now"]]
    out += ["", f"- hindsight below the least of plain belady and oracle-ttl on "
            f"{count(lambda r: r['hindsight'] < plain(r))} of {n} cases; at or below the "
            f"best baseline on {count(lambda r: r['hindsight'] <= r['best_now'])}, at or "
            f"below graph on {count(lambda r: r['hindsight'] <= r['graph_now'])}.",
            f"- graph within 1.10x of hindsight on "
            f"{count(lambda r: r['graph_now'] <= 1.10 * r['hindsight'])} of {n} (the best "
            f"baseline on {count(lambda r: r['best_now'] <= 1.10 * r['hindsight'])}); within "
            f"1.10x of the best run found (hindsight, lru, saga, ttl, graph) on "
            f"{count(lambda r: r['graph_now'] <= 1.10 * best_found(r))}.",
            f"- offline <- graph below graph on "
            f"{count(lambda r: _from(r, 'graph') < r['graph_now'])} of {n}; above "
            f"offline <- BEST on {count(lambda r: _from(r, 'graph') > _from(r, r['best']))}.",
            f"- totals (M): graph {sum(r['graph_now'] for r in rows) / m:.3f}, best baseline "
            f"{sum(r['best_now'] for r in rows) / m:.3f}, belady "
            f"{sum(r['runs']['belady'] for r in rows) / m:.3f}, oracle-ttl "
            f"{sum(r['runs']['oracle-ttl'] for r in rows) / m:.3f}, hindsight "
            f"{sum(r['hindsight'] for r in rows) / m:.3f}, best run found "
            f"{sum(best_found(r) for r in rows) / m:.3f}.",
            "- at or below the best baseline, of " + str(n) + ": " + "; ".join(
                f"{name} {count(lambda r, f=f: f(r) <= r['best_now'])}" for name, f in refs)
            + ". graph within 1.10x of: " + "; ".join(
                f"{name} {count(lambda r, f=f: r['graph_now'] <= 1.10 * f(r))}"
                for name, f in refs) + ".",
            f"- graph over 5% above the best baseline on {len(losses)} of {n}; of those, "
            f"offline <- graph over 5% below graph on "
            f"{sum(_from(r, 'graph') < 0.95 * r['graph_now'] for r in losses)}, over 5% above "
            f"offline <- BEST on "
            f"{sum(_from(r, 'graph') > 1.05 * _from(r, r['best']) for r in losses)}"
            + (" (" + ", ".join(f"{r['trace']} {r['seed']} {r['frac']:.0%}" for r in losses
                                 if _from(r, 'graph') > 1.05 * _from(r, r['best'])) + ")"
               if losses else "") + "."]
    if flags:
        out += ["", "Reruns that differ from the saved rows: " + "; ".join(flags)]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--traces", default=None, help="comma-separated traces (default: all)")
    p.add_argument("--seeds", default=None, help="comma-separated fit seeds (default: all)")
    p.add_argument("--fractions", default=None, help="capacities (default: 0.3,0.6)")
    p.add_argument("--workers", type=int_arg, default=1, help="processes")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    seeds = [ascii_int(x) for x in args.seeds.split(",")] if args.seeds else list(TUNE_SEEDS)
    if bad := [s for s in seeds if s not in TUNE_SEEDS]:
        p.error(f"seeds {bad} are not fit seeds {TUNE_SEEDS}: this diagnosis reads the "
                "fit set's saved rows only")
    saved = json.loads(SAVED.read_text(encoding="utf-8"))["rows"]
    cases = [c for c in pressured_cases(saved) if c["seed"] in seeds
             and (args.traces is None or c["trace"] in args.traces.split(","))
             and (args.fractions is None
                  or c["frac"] in [ascii_float(x) for x in args.fractions.split(",")])]
    if not cases:
        p.error("no pressured fit case matches")
    command = " ".join(["python bench/policies_hindsight.py",
                        *(argv if argv is not None else sys.argv[1:])])
    t = time.perf_counter()
    with worker_pool(args.workers) as pool:
        rows = list(pool.map(run_case, cases))
    text = report(rows, command, time.perf_counter() - t)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
