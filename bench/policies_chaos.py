"""How much of a policy's loss on one case is its ranking, and how much is the schedule.

A diagnosis on seen seeds only (the fit seeds and the evaluation seeds already run,
`policies.SEED_SETS[0]`; any other is refused, so a fresh seed is never read before its one
run). For one trace,
seed and capacity it prints:

- `--jitter D1,D2,...`: each policy's recomputed tokens with the pool `D` blocks larger
  than the case's (its capacity share of the peak, floored at the longest session + 1).
  Where a few blocks, far less than any session's context, swing a policy's recomputation
  by tens of percent, one pool size's ratio between two policies is the luck of the
  schedule it fell into, not its ranking.
- `--streams A,B`: which ranking does better on the *same* stream of steps. The real run is
  led by A (then by B) alone (`adaptive[experts=A+B,shadow_cache=1,switch_margin=1]`: the
  first expert never loses the lead), and a shadow cache of each expert (kvsaga/policy/
  shadow.py) ranks the same steps; it prints the real recomputation and each shadow's
  rebuild seconds. When the shadows are close under each stream while the real runs
  differ, the loss comes from the stream the ranking's own misses produced (timing,
  admission), not from which blocks it keeps given the traffic.
- `--timeline SPEC`: when `SPEC` (an `adaptive` setting) changed its leader, and per span
  between changes the blocks of earlier context that steps found evicted, for `SPEC` and
  for each of `--policies` over the same spans of simulated time.

    python bench/policies_chaos.py --trace swe-slow --seed 911 --fraction 0.3 \
        --policies graph,ttl,adaptive --jitter 0,1,2,3,4,6,8,12,16 --streams graph,ttl
"""

from __future__ import annotations

import argparse
import math
import sys
from statistics import mean

import policies as P  # bench/ is on the path when run as a script
from ascii_args import ascii_int, float_arg, int_arg

from kvsaga.policy import make_policy
from kvsaga.sim.simulator import SimConfig, Simulator


def _simulate(name: str, seed: int, blocks: int, spec: str):
    trace = P.build_trace(name, seed)
    base, params = P.parse_spec(spec)
    config = SimConfig(preset=P.PRESET, num_gpu_blocks=blocks, policy=base)
    policy = make_policy(base, cost=config.cost, **params)
    sim = Simulator(trace, config, policy=policy)
    return sim, policy


def jitter(name: str, seed: int, blocks: int, spec: str, deltas: list[int]) -> list[int]:
    """Recomputed tokens at each pool size `blocks + d`."""
    return [_simulate(name, seed, blocks + d, spec)[0].run().recomputed_tokens
            for d in deltas]


def streams(name: str, seed: int, blocks: int, a: str, b: str) -> list[str]:
    """Per leader: the real run's recomputed tokens and each shadow's rebuild seconds."""
    out = []
    for lead, other in ((a, b), (b, a)):
        sim, policy = _simulate(name, seed, blocks,
                                f"adaptive[experts={lead}+{other},shadow_cache=1,"
                                "switch_margin=1]")
        totals = {lead: 0.0, other: 0.0}
        for e, sh in zip(policy.experts, policy._shadows, strict=True):
            started = sh.step_started

            def counted(session, now, started=started, n=e.name, totals=totals):
                x = started(session, now)
                totals[n] += x
                return x
            sh.step_started = counted
        r = sim.run()
        out.append(f"| {lead} | {r.recomputed_tokens / 1e6:.3f} | {totals[a]:.2f} | "
                   f"{totals[b]:.2f} |")
    return out


def lost_blocks(name: str, seed: int, blocks: int, spec: str
                ) -> tuple[list[tuple[float, int]], list[tuple[float, str]]]:
    """(per step start: time, blocks of the session's context at its last step end that
    the step did not find cached), (leader changes: time, leader) of one run."""
    sim, policy = _simulate(name, seed, blocks, spec)
    known: dict[str, int] = {}
    lost: list[tuple[float, int]] = []
    leaders: list[tuple[float, str]] = []
    started, finished = policy.step_started, policy.step_finished

    def step_started(s, now):
        lost.append((now, max(min(known.get(s.session_id, 0), len(s.block_hashes))
                              - len(s.block_ids), 0)))
        started(s, now)

    def step_finished(s, now, hint):
        known[s.session_id] = len(s.block_hashes)
        finished(s, now, hint)

    policy.step_started, policy.step_finished = step_started, step_finished
    if hasattr(policy, "leader"):
        choose = policy.choose_victims

        def chosen(n, now):
            out = choose(n, now)
            if not leaders or leaders[-1][1] != policy.leader.name:
                leaders.append((now, policy.leader.name))
            return out
        policy.choose_victims = chosen
    sim.run()
    return lost, leaders


def timeline(name: str, seed: int, blocks: int, spec: str, others: list[str]) -> list[str]:
    lost, leaders = lost_blocks(name, seed, blocks, spec)
    if not leaders:
        return [f"{spec} never searched for victims"]
    edges = [t for t, _ in leaders] + [math.inf]
    runs = {spec: lost} | {o: lost_blocks(name, seed, blocks, o)[0] for o in others}
    out = ["| from (s) | leader | " + " | ".join(f"{p} lost blocks" for p in runs) + " |",
           "|---:|---|" + "---:|" * len(runs)]
    for i, (t, lead) in enumerate(leaders):
        cells = [sum(k for now, k in got if t <= now < edges[i + 1]) for got in runs.values()]
        out.append(f"| {t:.1f} | {lead} | " + " | ".join(map(str, cells)) + " |")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trace", default="swe-slow",
                   help="a family or held-out trace of bench/policies.py (default swe-slow)")
    p.add_argument("--seed", type=int_arg, default=1,
                   help="a fit seed or a seen evaluation seed; fresh ones are refused")
    p.add_argument("--fraction", type=float_arg, default=0.3,
                   help="the pool as a share of the trace's peak working set (default 0.3)")
    p.add_argument("--policies", default="graph,ttl",
                   help="policy specs for --jitter and --timeline, comma-separated")
    p.add_argument("--jitter", default="0,1,2,4,8",
                   help="blocks added to the pool, comma-separated ('' to skip)")
    p.add_argument("--streams", default=None,
                   help="two experts A,B: each leads a run alone while both shadows rank it")
    p.add_argument("--timeline", default=None,
                   help="an adaptive setting whose leader changes and losses to print")
    args = p.parse_args(argv)
    seen = P.TUNE_SEEDS + P.SEED_SETS[0][1]  # the fresh ones (SEED_SETS[1]) are not
    if args.seed not in seen:
        p.error(f"seed {args.seed} is neither a fit seed nor a seen evaluation seed {seen}")
    peak, longest = P._peak(args.trace, args.seed)
    blocks = P._blocks(peak, longest, args.fraction)
    deltas = [ascii_int(x) for x in args.jitter.split(",") if x]
    print(f"{args.trace} seed {args.seed} at {args.fraction:.0%}: {blocks} blocks (longest "
          f"session {longest} blocks)\n")
    if deltas:
        print("| policy | " + " | ".join(f"+{d}" for d in deltas) + " | mean | min-max |")
        print("|---|" + "---:|" * (len(deltas) + 2))
        for spec in P.split_specs(args.policies):
            got = [x / 1e6 for x in jitter(args.trace, args.seed, blocks, spec, deltas)]
            print(f"| {spec} | " + " | ".join(f"{x:.3f}" for x in got)
                  + f" | {mean(got):.3f} | {min(got):.3f}-{max(got):.3f} |", flush=True)
    if args.streams:
        a, b = args.streams.split(",")
        print(f"\n| real run led by | recomputed (M) | {a}'s shadow (rebuild s) | "
              f"{b}'s shadow (rebuild s) |\n|---|---:|---:|---:|")
        print("\n".join(streams(args.trace, args.seed, blocks, a, b)))
    if args.timeline:
        print("\n" + "\n".join(timeline(args.trace, args.seed, blocks, args.timeline,
                                         P.split_specs(args.policies))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
