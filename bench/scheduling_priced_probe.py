"""What `readmit_charge` "room_priced" (kvsaga/scheduler/room_swap.py, `--fit` round 30)
decides at one grid point of bench/scheduling.py: per seed, how often a demoted session's
refused step was priced (`RoomSwap._swap_pays`: the shrink its admission makes could bring
the load within the tiers), how often the swap was made, the learned wait to be admitted
again and the victims' price at those decisions (means), the lost share learned from the
returns at the run's end, and the demotions and mean TCT (the simulator's row). Under
"room_returns" (round 31) also the refusals with a victim predicted back before the shortage
is predicted to clear (`RoomSwap._shortage_clears_at`), the rule's own refusals ("-" under
"room_priced").

    python bench/scheduling_priced_probe.py FAMILY LOAD CAPACITY SEEDS [--policy SPEC]
        [--params JSON]

`--params` is laid over {"readmit_charge": "room_priced"}. Deterministic (the simulator's
clock), not a timing.
"""

from __future__ import annotations

import sys

from scheduling import PRESET, capacity, trace
from scheduling_overflow import point_params, point_parser, point_seeds

from kvsaga.scheduler import DEFAULT_SCHEDULER
from kvsaga.scheduler.room_swap import PRICED_MARGIN
from kvsaga.sim.simulator import SimConfig, Simulator


def probe(family: str, load: float, frac: float, seed: int, policy: str,
          params: dict) -> dict:
    sessions = trace(family, seed, load)
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(sessions, frac), policy=policy,
                    scheduler=DEFAULT_SCHEDULER, scheduler_params=params)
    sim = Simulator(sessions, cfg)
    sched = sim.scheduler
    seen: list[tuple[bool, float, float, int, bool]] = []
    pays = sched._swap_pays

    def spy(req, lookup, victims, *rest):
        got = pays(req, lookup, victims, *rest)
        wait = sched._readmit_waits.mean(None)
        early = False
        if rest:  # "room_returns": (over, now)
            clears = sched._shortage_clears_at(*rest)
            early = any((sched._return_at(v) is None or sched._return_at(v) < clears)
                        for v in victims)
        seen.append((got, -1.0 if wait is None else wait,
                     sched._victims_recompute_s(victims), len(victims), early))
        return got

    sched._swap_pays = spy
    row = sim.run().to_dict()
    made = [x for x in seen if x[0]]

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")
    lost = sched._return_lost / sched._return_count if sched._return_count else float("nan")
    return {"priced": len(seen), "made": len(made),
            "no_wait_yet": sum(1 for x in seen if x[1] < 0),
            "wait_made": mean([x[1] for x in made]),
            "price_made": mean([x[2] for x in made]),
            "victims_made": sum(x[3] for x in made),
            "wait_refused": mean([x[1] for x in seen if not x[0] and x[1] >= 0]),
            "price_refused": mean([x[2] for x in seen if not x[0] and x[1] >= 0]),
            "early": (sum(1 for x in seen if not x[0] and x[1] >= 0 and x[4])
                      if params.get("readmit_charge") == "room_returns" else "-"),
            "lost": lost, "tct": row["tct_mean_s"],
            "demotions": getattr(sched, "num_demotions", None)}


def main(argv: list[str] | None = None) -> int:
    ap = point_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=None, help="JSON laid over room_priced")
    args = ap.parse_args(argv)
    seeds = point_seeds(ap, args.seeds)
    params = {"readmit_charge": "room_priced", **(point_params(ap, args.params) or {})}
    print(f"{args.family} {args.load:g}x {args.capacity:.0%}, {params}, margin "
          f"{PRICED_MARGIN:g}")
    print("| seed | priced | swaps made | before any wait | learned wait / price when made s "
          "| victims when made | learned wait / price when refused s | lost share at end "
          "| demotions | mean TCT s | refused for a victim back early |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for seed in seeds:
        r = probe(args.family, args.load, args.capacity, seed, args.policy, params)
        print(f"| {seed} | {r['priced']} | {r['made']} | {r['no_wait_yet']} | "
              f"{r['wait_made']:.2f} / {r['price_made']:.3f} | {r['victims_made']} | "
              f"{r['wait_refused']:.2f} / {r['price_refused']:.3f} | {r['lost']:.2f} | "
              f"{r['demotions']} | {r['tct']:.1f} | {r['early']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
