"""The saved tune rows against today's scheduler: fit cases with the workflow scheduler's
prefill cap as it is by default (128 tokens gated "demoted_queue", 6379d2c) and off
(`decode_prefill_tokens=0`, the scheduler the saved tune rows ran under), beside the rows
saved in a tune JSON. A diagnosis on fit seeds only (session 29, policy lane): the saved
rows of bench/plots/policies_tune*.json predate the cap's default.

    python bench/policies_cap.py --cases swe:1:0.3,web:101:0.6
    python bench/policies_cap.py --cases swe:1:0.3 --smooth   # also the case's 5 pool sizes
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ascii_args import ascii_float, ascii_int
from policies import (
    BASELINES,
    PRESET,
    TUNE_SEEDS,
    _blocks,
    _peak,
    build_trace,
    parse_spec,
    split_specs,
)

from kvsaga.policy import make_policy
from kvsaga.sim.simulator import SimConfig, Simulator

HERE = Path(__file__).resolve().parent
ARMS = (("cap off", {"decode_prefill_tokens": 0}), ("default", {}))
POLICIES = ("lru", "saga", "ttl", "graph[median_returns=1]")


def recomputed(trace, blocks: int, spec: str, sched: dict) -> int:
    """Recomputed prompt tokens of one simulation under the workflow scheduler's `sched`."""
    base, params = parse_spec(spec)
    config = SimConfig(preset=PRESET, num_gpu_blocks=blocks, policy=base,
                       scheduler_params=dict(sched))
    policy = make_policy(base, cost=config.cost, **params)
    return Simulator(trace, config, policy=policy).run().recomputed_tokens


def parse_case(text: str) -> tuple[str, int, float]:
    """`trace:seed:share` -> (trace, seed, share); fit seeds only."""
    try:
        name, seed, frac = text.split(":")
        case = (name, ascii_int(seed), ascii_float(frac))
    except ValueError:
        raise ValueError(f"bad case {text!r}: expected trace:seed:share") from None
    if case[1] not in TUNE_SEEDS:
        raise ValueError(f"seed {case[1]} is not a fit seed {TUNE_SEEDS}: a diagnosis runs "
                         "the fit set only")
    return case


def _ratios(got: dict[str, int]) -> dict[str, float]:
    best = min(got[p] for p in BASELINES if p in got)
    return {p: (x / best if best else float("inf")) for p, x in got.items()}


def report(cases, policies, saved_rows, smooth: bool) -> list[str]:
    saved = {(r["trace"], r["seed"], r["frac"], r["policy"]): r["recomputed_tokens"]
             for r in saved_rows}
    out = ["| case | pool | policy | saved | cap off | default (cap on) |",
           "|---|---:|---|---:|---:|---:|"]
    equal = compared = 0
    for name, seed, frac in cases:
        trace = build_trace(name, seed)
        peak, longest = _peak(name, seed)
        blocks = _blocks(peak, longest, frac)
        arms = {label: {p: recomputed(trace, blocks, p, s) for p in policies}
                for label, s in ARMS}
        ratio = {label: _ratios(got) for label, got in arms.items()}
        for p in policies:
            old = saved.get((name, seed, frac, p))
            if old is not None:
                compared += 1
                equal += old == arms["cap off"][p]
            cells = [f"{arms[a][p] / 1e6:.3f}M ({ratio[a][p]:.2f}x)" for a, _ in ARMS]
            out.append(f"| {name} {seed} {frac:.0%} | {blocks} | {p} | "
                       f"{'-' if old is None else f'{old / 1e6:.3f}M'} | {' | '.join(cells)} |")
        if smooth:
            import policies_smooth as S
            sizes = S.pool_sizes(blocks, longest)
            for label, s in ARMS:
                tot = {p: sum(recomputed(trace, n, p, s) for n in sizes) for p in policies}
                r = _ratios(tot)
                out.append(f"| {name} {seed} {frac:.0%} | mean of {sizes[0]}-{sizes[-1]} | "
                           f"{label}: " + ", ".join(f"{p} {tot[p] / 5e6:.3f}M ({r[p]:.2f}x)"
                                                    for p in policies) + " | | | |")
    out += ["", f"Saved rows equal to today's with the cap off: {equal} of {compared}."]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="swe:1:0.3", help="trace:seed:share,... (fit seeds)")
    p.add_argument("--policies", default=",".join(POLICIES),
                   help="comma-separated policy names or specs to compare")
    p.add_argument("--saved", default=str(HERE / "plots" / "policies_tune_smooth.json"),
                   help="a tune JSON whose rows to compare")
    p.add_argument("--smooth", action="store_true", help="also the mean over 5 pool sizes")
    args = p.parse_args(argv)
    try:
        cases = [parse_case(c) for c in args.cases.split(",") if c]
    except ValueError as e:
        p.error(str(e))
    path = Path(args.saved)
    rows = json.loads(path.read_text(encoding="utf-8"))["rows"] if path.exists() else []
    print("\n".join(report(cases, split_specs(args.policies), rows, args.smooth)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
