"""Whose blocks each policy evicted, when those sessions came back, and what graph forecast.

A diagnosis on the **fit seeds only** (`policies.TUNE_SEEDS`; an evaluation seed is refused):
for one trace, seed and capacity, per policy, the live-session blocks it evicted by the
session's state at the eviction (`demoted` by the scheduler, `queued` with its tool
returned, `paused` on its tool), the median simulated seconds until that session's next step
started, and, for the policies that forecast it (`graph`), the median |log(observed /
forecast)| of that time and how many victims came back more than e times sooner than
forecast. The classes are the policy's own view (a demotion is what `session_deferred`
told it); `bench/policies.py --regret` gives the trace-side classes.

    python bench/policies_victims.py --trace swe --seed 1 --fraction 0.6 \
        --policies "graph,saga,ttl,lru,graph[trust=1]"
"""

from __future__ import annotations

import argparse
import math
import sys
from bisect import bisect_right
from collections import defaultdict

import policies as P  # bench/ is on the path when run as a script
from policies_case import add_case_args

from kvsaga.policy import make_policy
from kvsaga.sim.regret import record_regret
from kvsaga.sim.simulator import SimConfig, Simulator

STATES = ("demoted", "queued", "paused")
SPLIT_STATES = ("demoted, tool out", "demoted, tool back", "queued", "paused")


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if xs else math.nan


def victims(name: str, seed: int, frac: float, spec: str, split: bool = False
            ) -> tuple[int, dict[str, dict], list[str]]:
    """(recomputed tokens, per state: blocks, back_s, log errors, and with graph's `trust`
    its own record: per (workflow, state), victims scored and the root mean squared log
    error of its forecast and of recency's) of one simulation."""
    if seed not in P.TUNE_SEEDS:
        raise ValueError(f"seed {seed} is not a fit seed {P.TUNE_SEEDS}: a diagnosis reads "
                         "fit data only")
    trace = P.build_trace(name, seed)
    peak, longest = P._peak(name, seed)
    base, params = P.parse_spec(spec)
    config = SimConfig(preset=P.PRESET, num_gpu_blocks=P._blocks(peak, longest, frac),
                       policy=base)
    pol = make_policy(base, cost=config.cost, **params)
    sim = Simulator(trace, config, policy=pol)
    log = record_regret(sim)  # records each session's step starts
    events: list[tuple[float, str, str, float | None, int]] = []
    inner = pol.choose_victims
    demoted: set[str] = set()
    deferred_hook = pol.session_deferred

    def session_deferred(session, deferred: bool, now: float) -> None:
        (demoted.add if deferred else demoted.discard)(session.session_id)
        deferred_hook(session, deferred, now)

    def hooked(n: int, now: float) -> list[int]:
        out = inner(n, now)
        per: dict[str, int] = defaultdict(int)
        for b in out:
            owner = pol.view.block_owner[b]
            if owner is not None:
                per[owner] += 1
        views = getattr(pol, "views", {})
        for sid, k in per.items():
            v = views.get(sid)
            imminent = bool(v is not None and v.imminent)
            state = "queued" if imminent else "paused"
            if sid in demoted:
                state = ("demoted, tool back" if imminent else "demoted, tool out") \
                    if split else "demoted"
            forecast = None
            if hasattr(pol, "_graph_time") and v is not None and not v.running:
                forecast = pol._graph_time(sid, now, True, False)[1]  # unhedged
            events.append((now, sid, state, forecast, k))
        return out

    pol.choose_victims = hooked
    pol.session_deferred = session_deferred
    r = sim.run()
    by = {s: {"blocks": 0, "back": [], "err": []} for s in (SPLIT_STATES if split else STATES)}
    for now, sid, state, forecast, k in events:
        starts = log.starts.get(sid, [])
        i = bisect_right(starts, now)
        back = starts[i] - now if i < len(starts) else math.inf
        c = by[state]
        c["blocks"] += k
        if not math.isinf(back):
            c["back"].append(back)
            if forecast is not None and 0 < forecast < math.inf:  # (released: none)
                c["err"].append(math.log(max(back, 1e-3) / forecast))
    trust = getattr(pol, "trust", None)
    record = [] if trust is None else [
        f"{wf}/{state}: {int(e[0])} scored, rms log err graph {math.sqrt(e[2] / e[0]):.2f}, "
        f"recency {math.sqrt(e[3] / e[0]):.2f}" for (wf, state), e in sorted(trust.errors.items())]
    return r.recomputed_tokens, by, record


def row(name: str, seed: int, frac: float, spec: str, split: bool = False
        ) -> tuple[str, list[str]]:
    tokens, by, record = victims(name, seed, frac, spec, split)
    cells = []
    for s in (SPLIT_STATES if split else STATES):
        c = by[s]
        cell = f"{c['blocks']} blocks, back {_median(c['back']):.1f} s"
        if c["err"]:
            cell += (f", abs log err {_median([abs(x) for x in c['err']]):.1f} "
                     f"(signed {_median(c['err']):+.1f}), "
                     f"{sum(x < -1 for x in c['err'])} of {len(c['err'])} > e x sooner")
        cells.append(cell)
    return f"| {name} | {seed} | {frac:.0%} | {spec} | {tokens / 1e6:.3f} | " + \
        " | ".join(cells) + " |", record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_args(p, "swe", 1)
    p.add_argument("--policies", default="graph,saga,ttl,lru",
                   help="comma-separated policy names or specs")
    p.add_argument("--split-demoted", action="store_true",
                   help="split demoted victims by whether their tool had returned")
    args = p.parse_args(argv)
    states = SPLIT_STATES if args.split_demoted else STATES
    if args.seed not in P.TUNE_SEEDS:
        p.error(f"seed {args.seed} is not a fit seed {P.TUNE_SEEDS}")
    print("| trace | seed | capacity | policy | recomputed (M) | "
          + " | ".join(f"{s} victims" for s in states) + " |")
    print("|---|---:|---:|---|---:|" + "---|" * len(states))
    records = []
    for spec in P.split_specs(args.policies):
        line, record = row(args.trace, args.seed, args.fraction, spec, args.split_demoted)
        print(line, flush=True)
        records += [f"- {spec}: {x}" for x in record]
    if records:
        print("\nSelf-scoring record (`trust`: its victims only):\n" + "\n".join(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
