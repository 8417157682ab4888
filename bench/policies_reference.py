"""Every policy against the exact optimum on tiny traces (`python bench/policies.py
--reference`): how far `belady` and `oracle-ttl`, the offline references of the held-out
tables, and `hindsight` (kvsaga/sim/hindsight.py: the least of their runs told earlier runs'
admission waits) are from a true lower bound (kvsaga/sim/exhaustive.py), where that bound is
feasible.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor

from kvsaga.sim.exhaustive import TINY, exhaustive_optimum, random_tiny_trace
from kvsaga.sim.hindsight import best_offline, record
from kvsaga.sim.simulator import SimConfig, Simulator

REF_SECTION = "## Offline references against the exact optimum (tiny traces, simulated)"
REF_SEEDS = range(200, 224)  # tiny traces; no policy constant was chosen on them
REF_POLICIES = ("lru", "saga", "ttl", "graph", "adaptive", "belady", "oracle-ttl", "hindsight")
ONLINE = ("lru", "saga", "ttl", "graph", "adaptive")  # whose schedules steer `hindsight`
MAX_EXTRA = 12  # capacities searched: longest session + 1 to + MAX_EXTRA blocks at most


def _reference_case(task: tuple) -> tuple[list[dict], list[str]]:
    """Every policy and the exhaustive optimum on one tiny trace, at each capacity from the
    longest session + 1 block up to where the optimum recomputes nothing, or MAX_EXTRA
    blocks past the longest session.

    Returns:
        The rows, and what was left out: each capacity too big to search, and the trace
        when the cap came before the optimum reached 0.
    """
    seed, scheduler = task
    sessions = random_tiny_trace(seed)
    longest = max(TINY.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    rows, left_out = [], []
    for blocks in range(longest + 1, longest + MAX_EXTRA + 1):
        config = SimConfig(preset=TINY, num_gpu_blocks=blocks, scheduler=scheduler)
        try:
            best = exhaustive_optimum(sessions, config, max_runs=20_000)
        except RuntimeError:
            left_out.append(f"seed {seed} at {blocks} blocks (too many choices to search)")
            continue
        if best.recomputed_tokens == 0:
            break
        row = {"seed": seed, "scheduler": scheduler, "blocks": blocks,
               "optimum": best.recomputed_tokens}
        runs = [record(sessions, config, p) for p in ONLINE]
        row["hindsight"] = best_offline(sessions, config, runs).recomputed_tokens
        for p in REF_POLICIES[:-1]:
            row[p] = Simulator(sessions, dataclasses.replace(config, policy=p)).run() \
                .recomputed_tokens
        rows.append(row)
    else:
        left_out.append(f"seed {seed} above {longest + MAX_EXTRA} blocks (the cap: no "
                        "capacity up to it was searched to an optimum of 0)")
    return rows, left_out


def reference(workers: int, command: str) -> str:
    """Each policy's recomputation over the exact optimum on tiny traces, per scheduler."""
    t = time.perf_counter()
    tasks = [(s, sched) for sched in ("fcfs", "workflow") for s in REF_SEEDS]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        cases = list(pool.map(_reference_case, tasks))
    rows = [r for rs, _ in cases for r in rs]
    wall = time.perf_counter() - t
    out = [REF_SECTION, "",
           f"`{command}`: {wall / 60:.1f} min. {len(REF_SEEDS)} random tiny traces "
           "(`kvsaga.sim.exhaustive.random_tiny_trace`, seeds "
           f"{REF_SEEDS.start}-{REF_SEEDS.stop - 1}: 2-3 sessions of 2-3 steps, 4-token "
           "blocks), each at every capacity from its longest session + 1 block up to where "
           f"the optimum recomputes nothing or {MAX_EXTRA} blocks past the longest session "
           "(left out: listed below the table); the optimum is the exhaustive search over every "
           "eviction choice under the same scheduler (kvsaga/sim/exhaustive.py) with a "
           "policy that keeps no execution graph. It bounds every policy under fcfs, and "
           "under workflow every policy that keeps no graph (belady); the workflow "
           "scheduler reads the graph of a policy that keeps one (saga, ttl, graph, "
           "adaptive, oracle-ttl, hence hindsight's oracle-ttl runs), which changes its "
           "admissions, so those can go below it: `< optimum` counts the cases where one "
           "did, `least x` is the least ratio. Cases: the (trace, capacity) pairs where "
           "the optimum recomputes something.", "",
           "| scheduler | cases | policy | = optimum | < optimum | least x optimum "
           "| mean x optimum | worst x optimum |",
           "|---|---:|---|---:|---:|---:|---:|---:|"]
    for sched in ("fcfs", "workflow"):
        mine = [r for r in rows if r["scheduler"] == sched]
        for p in REF_POLICIES:
            ratios = [r[p] / r["optimum"] for r in mine]
            if not ratios:
                continue
            same = sum(r[p] == r["optimum"] for r in mine)
            below = sum(r[p] < r["optimum"] for r in mine)
            out.append(f"| {sched} | {len(mine)} | {p} | {same} | {below} | "
                       f"{min(ratios):.2f}x | {sum(ratios) / len(ratios):.2f}x | "
                       f"{max(ratios):.2f}x |")
    left = [f"- {sched}: {x}" for (_, sched), (_, xs) in zip(tasks, cases, strict=True)
            for x in xs]
    out += ["", "Left out:", *left] if left else []
    out += ["", "So `belady`, `oracle-ttl` and `hindsight` stay *references*, not bounds, in "
            "every table: the exact optimum is out of reach beyond tiny traces, and on these "
            "the gap of each reference to it is the figure above. `hindsight` runs belady and "
            "oracle-ttl from the trace's times and from the admission waits of each online "
            "policy's run above, then from the best of those (kvsaga/sim/hindsight.py)."]
    return "\n".join(out) + "\n"
