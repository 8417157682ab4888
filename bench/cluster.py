"""Routing across simulated GPUs: kvsaga (affinity + stealing + migration) + the workflow
scheduler against round-robin + fcfs + lru and affinity + fcfs + lru.

Each GPU runs the real manager, policy and scheduler (`kvsaga.sim.cluster`); the load per
GPU is the family's default arrival rate (scaled like bench/policies.py), so N GPUs get N
times the arrivals. Writes the "## Cluster routing (simulated)" section of bench/RESULTS.md.

    python bench/cluster.py                          # 8 GPUs, swe (a few minutes on 2 cores)
    python bench/cluster.py --gpus 8,64 --sessions-per-gpu 4 --no-write
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from allocator import write_section

from kvsaga.config import parse_bytes
from kvsaga.sim.cluster import format_rows, simulate_cluster
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import WORKLOADS, generate

SECTION = "## Cluster routing (simulated)"
# (router, scheduler, policy): the two baselines first, then kvsaga's.
RUNS = (("round-robin", "fcfs", "lru"), ("affinity", "fcfs", "lru"),
        ("kvsaga", "fcfs", "lru"), ("kvsaga", "workflow", "lru"),
        ("kvsaga", "workflow", "graph"),
        # workflow behind the baseline routers: sessions that move must not stay admitted
        # on the GPU they left (Scheduler.forget_session)
        ("round-robin", "workflow", "lru"), ("affinity", "workflow", "lru"))
TARGET_RR, TARGET_AFF, TARGET_IMBALANCE = 2.0, 1.64, 1.15


def run_one(job: tuple) -> dict:
    family, gpus, n, scale, seed, kv, (router, scheduler, policy) = job
    rate = WORKLOADS[family].arrival_rate * gpus / scale
    sessions = generate(family, n, seed=seed, arrival_rate=rate, scale=scale)
    config = SimConfig(kv_memory_bytes=kv, policy=policy, scheduler=scheduler)
    t = time.perf_counter()
    row = simulate_cluster(sessions, config, gpus=gpus, router=router).row()
    row["wall_s"] = time.perf_counter() - t
    return row


def verdicts(rows: list[dict]) -> list[str]:
    """Ratios of mean TCT against the baselines, and the targets met or missed."""
    base = {(r["router"], r["scheduler"], r["policy"]): r for r in rows}
    rr, aff = base[RUNS[0]], base[RUNS[1]]
    out = []
    for r in rows:
        if r["router"] != "kvsaga":
            continue
        a, b = rr["tct_mean_s"] / r["tct_mean_s"], aff["tct_mean_s"] / r["tct_mean_s"]
        ok = (a >= TARGET_RR, b >= TARGET_AFF, r["load_imbalance"] <= TARGET_IMBALANCE)
        out.append(f"- kvsaga + {r['scheduler']} + {r['policy']}: mean TCT {a:.2f}x better "
                   f"than round-robin + fcfs + lru (target {TARGET_RR}x: "
                   f"{'met' if ok[0] else 'missed'}), {b:.2f}x better than affinity + fcfs "
                   f"+ lru (target {TARGET_AFF}x: {'met' if ok[1] else 'missed'}); "
                   f"load_imbalance {r['load_imbalance']:.3f} (target <= {TARGET_IMBALANCE}: "
                   f"{'met' if ok[2] else 'missed'}).")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", default="8", help="comma-separated GPU counts")
    p.add_argument("--family", default="swe")
    p.add_argument("--sessions-per-gpu", type=int, default=6)
    p.add_argument("--scale", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--kv-memory", default="8G", help="KV capacity of each GPU")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    kv = parse_bytes(args.kv_memory)
    lines = []
    for gpus in [int(g) for g in args.gpus.split(",")]:
        n = gpus * args.sessions_per_gpu
        jobs = [(args.family, gpus, n, args.scale, args.seed, kv, run) for run in RUNS]
        with ProcessPoolExecutor(args.workers) as pool:
            rows = list(pool.map(run_one, jobs))
        wall = sum(r["wall_s"] for r in rows)
        lines += [f"### {gpus} GPUs: {n} {args.family} sessions (scale {args.scale}, seed "
                  f"{args.seed}), {args.kv_memory} KV per GPU, a100-llama3-8b "
                  f"({wall:.0f} s of simulation)", "", "```", format_rows(rows), "```", "",
                  *verdicts(rows), ""]
    cmd = (f"python bench/cluster.py --gpus {args.gpus} --family {args.family} "
           f"--sessions-per-gpu {args.sessions_per_gpu} --scale {args.scale} "
           f"--seed {args.seed} --kv-memory {args.kv_memory}")
    body = "\n".join([f"`{cmd}`. Each GPU: the real manager, policy and scheduler; the "
                      "router: kvsaga.routing (docs/cluster.md). Mean TCT ratios are "
                      "baseline / kvsaga.", "", *lines])
    print(body)
    if not args.no_write:
        write_section(SECTION, body, Path(__file__).resolve().parent / "RESULTS.md")


if __name__ == "__main__":
    main()
