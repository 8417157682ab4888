"""Routing across simulated GPUs: kvsaga (affinity + placement by predicted load + stealing
+ migration) + the workflow scheduler against round-robin + fcfs + lru and affinity + fcfs
+ lru, on the four agent families.

Each GPU runs the real manager, policy and scheduler (`kvsaga.sim.cluster`); the load per
GPU is `--load` x the family's default arrival rate (scaled like bench/policies.py), so N
GPUs get N times the arrivals, with `--sessions-per-gpu` sessions each: enough that one GPU
would thrash. A reference row, `ideal`, runs the same trace with one roomy GPU per session
(no queueing, no eviction), and the floor (`floor_tct`, computed without simulating: tool
pauses plus each step's own new tokens alone on a GPU) is a lower bound on any router's
mean TCT, so it bounds the ratios a family allows. Writes the "## Cluster routing
(simulated)" section of bench/RESULTS.md.

The `kvsaga` router's defaults (`RoutingConfig`) were fitted with `--fit` on seeds 1 and 2
(the four families); the report runs other seeds.

    python bench/cluster.py                               # 8 GPUs, four families
    python bench/cluster.py --fit --seed 1,2
    python bench/cluster.py --gpus 64 --family swe --sessions-per-gpu 16 --no-write
"""

from __future__ import annotations

import argparse
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from allocator import write_section

from kvsaga.config import parse_bytes
from kvsaga.routing import RoutingConfig
from kvsaga.sim.cluster import format_rows, simulate_cluster
from kvsaga.sim.config import SimConfig
from kvsaga.sim.workloads import WORKLOADS, generate

SECTION = "## Cluster routing (simulated)"
FAMILIES = ("swe", "web", "bfcl", "assistant")
# (router, scheduler, policy): the two baselines first, then kvsaga's.
RUNS = (("round-robin", "fcfs", "lru"), ("affinity", "fcfs", "lru"),
        ("kvsaga", "fcfs", "lru"), ("kvsaga", "workflow", "lru"),
        ("kvsaga", "workflow", "graph"), ("affinity", "workflow", "lru"))
GOAL_RUNS = RUNS[:2] + (("kvsaga", "workflow", "lru"),)  # the runs the goals name
IDEAL_KV = "64G"  # the ideal reference's GPU: room for any one session
TARGET_RR, TARGET_AFF, TARGET_IMBALANCE = 2.0, 1.64, 1.15
DEFAULT_SPG, DEFAULT_LOAD = 16, 2.0  # the main section's sessions per GPU and load
# --fit: the RoutingConfig knob settings tried (busy_balance 0: no balance steal, the
# defaults before it; steal_margin 3 and max_commitment 1 were fitted before it, and
# margins 2 and 4 with busy_balance 0.05 were slower on seeds 1 and 2).
FIT_GRID = (
    {"busy_balance": 0.0},
    {"busy_balance": 0.02, "busy_balance_min_s": 5.0},
    {"busy_balance": 0.05, "busy_balance_min_s": 0.0},
    {"busy_balance": 0.05, "busy_balance_min_s": 5.0},
    {"busy_balance": 0.05, "busy_balance_min_s": 10.0},
    {"busy_balance": 0.1, "busy_balance_min_s": 5.0},
)


def trace(family: str, gpus: int, spg: int, scale: float, seed: int, load: float):
    rate = WORKLOADS[family].arrival_rate * gpus / scale * load
    return generate(family, gpus * spg, seed=seed, arrival_rate=rate, scale=scale)


def run_one(job: tuple) -> dict:
    """One simulation; `run` is (router, scheduler, policy) or "ideal"; `knobs` override
    RoutingConfig fields."""
    family, gpus, spg, scale, seed, load, kv, run, knobs = job
    sessions = trace(family, gpus, spg, scale, seed, load)
    t = time.perf_counter()
    if run == "ideal":
        # Each session on a GPU of its own, where it stays: the balance steal would move
        # sessions between GPUs that each serve one (944 moves on swe, seed 7).
        config = SimConfig(kv_memory_bytes=parse_bytes(IDEAL_KV), policy="lru")
        stay = RoutingConfig(bytes_per_token=config.cost.kv_spec.bytes_per_token,
                             cost=config.cost, busy_balance=0.0)
        row = simulate_cluster(sessions, config, gpus=len(sessions), router="kvsaga",
                               routing=stay).row()
        row["router"] = "ideal"
        row["gpus"] = len(sessions)
    else:
        router, scheduler, policy = run
        config = SimConfig(kv_memory_bytes=kv, policy=policy, scheduler=scheduler)
        routing = None
        if knobs:
            routing = RoutingConfig(bytes_per_token=config.cost.kv_spec.bytes_per_token,
                                    cost=config.cost, **knobs)
        row = simulate_cluster(sessions, config, gpus=gpus, router=router,
                               routing=routing).row()
    row.update(family=family, seed=seed, knobs=knobs, wall_s=time.perf_counter() - t)
    return row


def floor_tct(sessions, cost) -> float:
    """A lower bound on any router's mean TCT, from the cost model without simulating: each
    session's tool pauses, plus per step one prefill of only its new tokens (the step's
    input; the first step's prompt but the shared prefix, as if another session had cached
    it) and its other output tokens decoded one by one, alone on a GPU (batch 1 is the
    fastest step of the roofline model; the simulator's steps add chunking and batching)."""
    total = 0.0
    for s in sessions:
        for k, st in enumerate(s.steps):
            ctx = s.prompt_length(k)
            new = ctx - s.shared_prefix.tokens if k == 0 else st.input_tokens
            total += cost.prefill_time(new, ctx - new)
            decode_ctx = np.arange(ctx + 1, ctx + st.output_tokens)
            total += float(cost.decode_step_times(1, decode_ctx).sum()) if len(decode_ctx) else 0.0
            total += st.tool_s if k < len(s.steps) - 1 else 0.0
    return total / len(sessions)


def verdicts(rows: list[dict], floor_s: float) -> list[str]:
    """Ratios of mean TCT against the baselines and the bounds (`floor_tct`, and the ideal
    run when there is one), and the targets met or missed."""
    base = {(r["router"], r["scheduler"], r["policy"]): r for r in rows}
    rr, aff = base[RUNS[0]], base[RUNS[1]]
    ideal = next((r for r in rows if r["router"] == "ideal"), None)
    out = []
    if ideal is not None:
        out.append(f"- ideal mean TCT {ideal['tct_mean_s']:.1f} s: at most "
                   f"{rr['tct_mean_s'] / ideal['tct_mean_s']:.2f}x over round-robin, "
                   f"{aff['tct_mean_s'] / ideal['tct_mean_s']:.2f}x over affinity.")
    bound_rr, bound_aff = rr["tct_mean_s"] / floor_s, aff["tct_mean_s"] / floor_s
    out.append(f"- floor (a lower bound on any router's mean TCT: tool pauses + each step's "
               f"own new tokens alone on a GPU) {floor_s:.1f} s: at most {bound_rr:.2f}x over "
               f"round-robin, {bound_aff:.2f}x over affinity.")
    out += [f"- the {target}x target over {name} is out of any router's reach here: the "
            f"floor bounds it at {bound:.2f}x." for name, bound, target in
            (("round-robin", bound_rr, TARGET_RR), ("affinity", bound_aff, TARGET_AFF))
            if bound < target]
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


def fit(args, kv: int) -> None:
    """Try every FIT_GRID setting with kvsaga + workflow + lru on the given families,
    seeds and GPU counts; print them ranked by the geometric mean of mean TCT (the worst
    load_imbalance beside) and pick the fastest whose worst imbalance meets
    TARGET_IMBALANCE (the goals ask for both), else the fastest. A balance steal with no
    floor is not eligible: it moves a lone session on a quiet fleet at every second or
    third step (RoutingConfig.busy_balance_min_s), which no fleet simulated here shows."""
    combos = list(FIT_GRID)
    cases = [(f, s, g) for g in _ints(args.gpus) for f in args.family.split(",")
             for s in _ints(args.seed)]
    jobs = [(f, g, args.sessions_per_gpu, args.scale, s, args.load, kv,
             ("kvsaga", "workflow", "lru"), c) for c in combos for f, s, g in cases]
    with ProcessPoolExecutor(args.workers) as pool:
        rows = list(pool.map(run_one, jobs))
    scored = []
    for c in combos:
        mine = [r for r in rows if r["knobs"] == c]
        gm = math.exp(sum(math.log(r["tct_mean_s"]) for r in mine) / len(mine))
        imb = max(r["load_imbalance"] for r in mine)
        scored.append((gm, imb, c))
    print(f"fit on (family, seed, GPUs) {cases}, load {args.load}x, {args.sessions_per_gpu} "
          "sessions per GPU (geometric mean of mean TCT, worst load_imbalance):")
    scored.sort(key=lambda x: x[0])
    eligible = [s for s in scored if _quiet_safe(s[2])]
    ok = [s for s in eligible if s[1] <= TARGET_IMBALANCE]
    pick = (ok or eligible)[0]
    for s in scored:
        gm, imb, c = s
        note = "  <- picked" if s is pick else "" if _quiet_safe(c) else "  (no floor)"
        print(f"  {gm:8.2f} s  {imb:.3f}  {c}{note}")


def _quiet_safe(knobs: dict) -> bool:
    """Whether a setting keeps a lone session home on a quiet fleet: no balance steal, or
    one with a floor."""
    return not knobs.get("busy_balance") or knobs.get("busy_balance_min_s", 0.0) > 0


def section_title(args) -> str:
    """The RESULTS heading a run writes: the default fleet at the default load has the main
    section; another fleet size has its own, and so has the default fleet at another load
    (sessions per GPU or arrival rate)."""
    if args.gpus != "8":
        return f"{SECTION[:-1]}, {args.gpus} GPUs)"
    if (args.sessions_per_gpu, args.load) != (DEFAULT_SPG, DEFAULT_LOAD):
        return f"{SECTION[:-1]}, {args.sessions_per_gpu} sessions per GPU at {args.load:g}x)"
    return SECTION


def _ints(text: str) -> list[int]:
    return [int(x) for x in str(text).split(",") if x.strip()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gpus", default="8", help="comma-separated GPU counts")
    p.add_argument("--family", default=",".join(FAMILIES), help="comma-separated families")
    p.add_argument("--sessions-per-gpu", type=int, default=DEFAULT_SPG)
    p.add_argument("--scale", type=float, default=0.2)
    p.add_argument("--load", type=float, default=DEFAULT_LOAD,
                   help="arrivals per GPU, x the family's default rate")
    p.add_argument("--seed", default="7", help="trace seed (--fit: comma-separated)")
    p.add_argument("--kv-memory", default="3G", help="KV capacity of each GPU")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--fit", action="store_true", help="rank RoutingConfig knobs (no write)")
    p.add_argument("--runs", choices=("all", "goal"), default="all",
                   help="goal: only round-robin + fcfs + lru, affinity + fcfs + lru and "
                        "kvsaga + workflow + lru (for large fleets)")
    p.add_argument("--no-ideal", action="store_true",
                   help="skip the ideal reference (one GPU per session: slow for fleets)")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    kv = parse_bytes(args.kv_memory)
    if args.fit:
        fit(args, kv)
        return
    seed = _ints(args.seed)[0]
    runs = [*(GOAL_RUNS if args.runs == "goal" else RUNS), *([] if args.no_ideal else ["ideal"])]
    lines = []
    for gpus in _ints(args.gpus):
        for family in args.family.split(","):
            jobs = [(family, gpus, args.sessions_per_gpu, args.scale, seed, args.load, kv,
                     run, None) for run in runs]
            with ProcessPoolExecutor(args.workers) as pool:
                rows = list(pool.map(run_one, jobs))
            wall = sum(r["wall_s"] for r in rows)
            floor_s = floor_tct(trace(family, gpus, args.sessions_per_gpu, args.scale, seed,
                                      args.load), SimConfig(kv_memory_bytes=kv).cost)
            n = gpus * args.sessions_per_gpu
            block = [f"### {gpus} GPUs: {n} {family} sessions (seed {seed}, load "
                     f"{args.load}x, scale {args.scale}), {args.kv_memory} KV per GPU "
                     f"({wall:.0f} s of simulation)", "", "```", format_rows(rows), "```",
                     "", *verdicts(rows, floor_s), ""]
            print("\n".join(block), flush=True)
            lines += block
    cmd = (f"python bench/cluster.py --gpus {args.gpus} --family {args.family} "
           f"--sessions-per-gpu {args.sessions_per_gpu} --scale {args.scale} --load "
           f"{args.load} --seed {seed} --kv-memory {args.kv_memory}"
           + (" --runs goal" if args.runs == "goal" else "")
           + (" --no-ideal" if args.no_ideal else ""))
    body = "\n".join([
        f"`{cmd}`. Preset a100-llama3-8b. Each GPU: the real manager, policy and "
        "scheduler; the router: kvsaga.routing (docs/cluster.md), its defaults fitted with "
        "`--fit` on seeds 1 and 2 (the four families), not on this seed. Mean TCT ratios are "
        f"baseline / kvsaga; `ideal` is one {IDEAL_KV} GPU per session (not a router), and "
        "the floor (`floor_tct`) a lower bound on any router's mean TCT computed from the "
        "cost model without simulating.", "", *lines])
    if not args.no_write:
        title = section_title(args)
        write_section(title, body, Path(__file__).resolve().parent / "RESULTS.md")
        print(f"wrote {title} to bench/RESULTS.md")


if __name__ == "__main__":
    main()
