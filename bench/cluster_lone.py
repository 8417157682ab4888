"""`bench/cluster.py --fit` with the grid cut to the choice of `busy_balance_alone` (the
quiet test's floor also holds a lone session that is alone in the fleet): the same cases,
seeds and ranking as the fit, on two settings, each with the other knobs at their defaults.
Fit seeds only (bench/cluster.py refuses others with --fit). Besides the fit's ranking it
prints each case's mean TCT (4 decimals), load_imbalance and sessions moved.

    python bench/cluster_lone.py --fit --seed 1,2 --gpus 64 --family bfcl \\
        --sessions-per-gpu 16 --load 16
    python bench/cluster_lone.py --fit --seed 1,2 --sessions-per-gpu 16 --load 2
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from kvsaga.workers import worker_pool

sys.path.insert(0, str(Path(__file__).resolve().parent))

import cluster  # noqa: E402  (bench/cluster.py)

GRID = (
    {"busy_balance_alone": False},
    {"busy_balance_alone": True},
)


def fit(args, kv: int, loads: dict[str, float]) -> None:
    """`cluster.fit` on `GRID`, with each case's figures."""
    cases = [(f, s, g) for g in cluster._ints(args.gpus) for f in args.family.split(",")
             for s in cluster._ints(args.seed)]
    jobs = [(f, g, args.sessions_per_gpu, args.scale, s, loads[f], kv,
             ("kvsaga", "workflow", "lru"), c, args.report_period)
            for c in GRID for f, s, g in cases]
    with worker_pool(args.workers) as pool:
        rows = list(pool.map(cluster.run_one, jobs))
    print(f"fit on (family, seed, GPUs) {cases}, loads {loads}, {args.sessions_per_gpu} "
          "sessions per GPU (geometric mean of mean TCT, worst load_imbalance):")
    for c in GRID:
        mine = [r for r in rows if r["knobs"] == c]
        gm = math.exp(sum(math.log(r["tct_mean_s"]) for r in mine) / len(mine))
        imb = max(r["load_imbalance"] for r in mine)
        print(f"  {gm:9.4f} s  {imb:.3f}  {c}")
        for r in mine:
            print(f"      {r['family']:9s} seed {r['seed']} {r['gpus']:3d} GPUs: mean TCT "
                  f"{r['tct_mean_s']:.4f} s, load_imbalance {r['load_imbalance']:.3f}, "
                  f"moved {r['num_moved']:,}")


if __name__ == "__main__":
    if "--fit" not in sys.argv[1:] and not {"-h", "--help"} & set(sys.argv[1:]):
        sys.exit("bench/cluster_lone.py runs the fit only: pass --fit")
    cluster.FIT_GRID = GRID
    cluster.fit = fit
    cluster.main()
