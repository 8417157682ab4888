"""Every policy against the exact optimum on tiny traces (`python bench/policies.py
--reference`): how far `belady` and `oracle-ttl`, the offline references of the held-out
tables, and `hindsight` (kvsaga/sim/hindsight.py: the least of their runs told earlier runs'
admission waits) are from a true lower bound (kvsaga/sim/exhaustive.py), where that bound is
feasible. Under `workflow` each policy that keeps an execution graph is also judged against
the optimum fed its own graph (`exhaustive_optimum(..., fed=P)`), the bound that holds for
it there; the plain search bounds only the graph-less policies.
"""

from __future__ import annotations

import dataclasses
import math
import time

from kvsaga.sim.exhaustive import TINY, exhaustive_optimum, random_tiny_trace, random_wait_trace
from kvsaga.sim.hindsight import best_offline, record
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.workers import worker_pool

REF_SECTION = "## Offline references against the exact optimum (tiny traces, simulated)"
REF_POLICIES = ("lru", "saga", "ttl", "graph", "adaptive", "belady", "oracle-ttl", "hindsight")
ONLINE = ("lru", "saga", "ttl", "graph", "adaptive")  # whose schedules steer `hindsight`
GRAPH_KEEPERS = ("saga", "ttl", "graph", "adaptive", "oracle-ttl")  # `Scheduler._graph` reads
MAX_EXTRA = 12  # capacities searched: longest session + 1 to + MAX_EXTRA blocks at most
# The trace shapes: generator, seeds (no policy constant was chosen on them), and the most
# simulations one search may run before its capacity is left out.
SHAPES = {
    "tiny": (random_tiny_trace, range(200, 224), 20_000),
    "waits": (random_wait_trace, range(400, 410), 5_000),
}


def _fed_optimum(sessions, config, policy: str, ran: int, max_runs: int) -> float:
    """The optimum fed `policy`'s graph, searched below its own run's figure + 1 (it can
    be no more, if the bound holds: a run of the policy is one of the search's); inf when
    the policy beat every run the search tried (the bound failed there)."""
    best = exhaustive_optimum(sessions, config, max_runs=max_runs, fed=policy, below=ran + 1)
    return math.inf if best is None else best.recomputed_tokens


def _case(sessions, config, seed: int, shape: str, max_runs: int) -> dict:
    """One (trace, capacity): the plain optimum, every policy, hindsight, the fed optima
    (under workflow) and whether the online policies' runs demoted or queued a step."""
    best = exhaustive_optimum(sessions, config, max_runs=max_runs)
    row = {"seed": seed, "shape": shape, "scheduler": config.scheduler,
           "blocks": config.num_gpu_blocks, "optimum": best.recomputed_tokens, "fed": {}}
    runs = [record(sessions, config, p) for p in ONLINE]
    row["hindsight"] = best_offline(sessions, config, runs).recomputed_tokens
    for p in REF_POLICIES[:-1]:
        row[p] = Simulator(sessions, dataclasses.replace(config, policy=p)).run() \
            .recomputed_tokens
    row["demoted"] = any(r.demotions for r in runs)
    row["waited"] = any(w > 0 for r in runs for w in r.waits.values())
    if config.scheduler == "workflow":  # fcfs reads no graph: there the plain one is it
        row["fed"] = {p: _fed_optimum(sessions, config, p, row[p], max_runs)
                      for p in GRAPH_KEEPERS}
    return row


def _reference_case(task: tuple) -> tuple[list[dict], list[str]]:
    """Every policy and the exhaustive optimum on one trace, at each capacity from the
    longest session + 1 block up to where neither the optimum nor any policy recomputes
    anything (nor, under workflow, any fed optimum), or MAX_EXTRA blocks past the longest
    session.

    Returns:
        The rows, and what was left out: each capacity too big to search, and the trace
        when the cap came first.
    """
    seed, scheduler, shape = task
    make, _, max_runs = SHAPES[shape]
    sessions = make(seed)
    longest = max(TINY.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    rows, left_out = [], []
    for blocks in range(longest + 1, longest + MAX_EXTRA + 1):
        config = SimConfig(preset=TINY, num_gpu_blocks=blocks, scheduler=scheduler)
        try:
            row = _case(sessions, config, seed, shape, max_runs)
        except RuntimeError:
            left_out.append(f"{shape} seed {seed} at {blocks} blocks (too many choices to "
                            f"search: over {max_runs:,} runs)")
            continue
        rows.append(row)
        if not (row["optimum"] or any(row[p] for p in REF_POLICIES)
                or any(row["fed"].values())):
            break
    else:
        left_out.append(f"{shape} seed {seed} above {longest + MAX_EXTRA} blocks (the cap: "
                        "something still recomputed at every capacity up to it)")
    return rows, left_out


def _ratio_cells(pairs: list[tuple[float, float]]) -> str:
    """`cases | = bound | < bound | least x | mean x | worst x` of (policy, bound) pairs
    whose bound is > 0 (a bound of inf: the policy beat every run searched; counted in
    `< bound`, left out of the ratios)."""
    finite = [(x, b) for x, b in pairs if math.isfinite(b)]
    ratios = [x / b for x, b in finite]
    same = sum(x == b for x, b in finite)
    below = sum(x < b for x, b in pairs)
    if not ratios:
        return f"{len(pairs)} | {same} | {below} | - | - | -"
    return (f"{len(pairs)} | {same} | {below} | {min(ratios):.2f}x | "
            f"{sum(ratios) / len(ratios):.2f}x | {max(ratios):.2f}x")


def _plain_table(rows: list[dict]) -> list[str]:
    """Each policy over the plain optimum, where that recomputes something."""
    out = ["| scheduler | trace | cases | policy | = optimum | < optimum | least x optimum "
           "| mean x optimum | worst x optimum |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for sched in ("fcfs", "workflow"):
        for shape in SHAPES:
            mine = [r for r in rows if r["scheduler"] == sched and r["shape"] == shape
                    and r["optimum"] > 0]
            for p in REF_POLICIES:
                if mine:
                    cells = _ratio_cells([(r[p], r["optimum"]) for r in mine])
                    n, rest = cells.split(" | ", 1)
                    out.append(f"| {sched} | {shape} | {n} | {p} | {rest} |")
    return out


def _fed_table(rows: list[dict]) -> list[str]:
    """Under workflow, each graph-keeping policy over the optimum fed its own graph (and
    hindsight over the least of the plain optimum, which bounds its belady runs, and the one
    fed oracle-ttl's graph, which bounds its oracle-ttl runs), where that bound is > 0."""
    out = ["| trace | policy | cases | = fed optimum | < fed optimum | least x | mean x "
           "| worst x | fed > plain | fed < plain |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for shape in SHAPES:
        mine = [r for r in rows if r["scheduler"] == "workflow" and r["shape"] == shape]
        for p in (*GRAPH_KEEPERS, "hindsight"):
            if p == "hindsight":
                bounds = [min(r["optimum"], r["fed"]["oracle-ttl"]) for r in mine]
            else:
                bounds = [r["fed"][p] for r in mine]
            pairs = [(r[p], b) for r, b in zip(mine, bounds, strict=True) if b > 0]
            if not pairs:
                continue
            if p == "hindsight":  # its bound is at most the plain one by construction
                out.append(f"| {shape} | {p} | {_ratio_cells(pairs)} | - | - |")
                continue
            fed = [(b, r["optimum"]) for r, b in zip(mine, bounds, strict=True)
                   if math.isfinite(b)]
            above = sum(b > o for b, o in fed)
            under = sum(b < o for b, o in fed)
            out.append(f"| {shape} | {p} | {_ratio_cells(pairs)} | {above} | {under} |")
    return out


def _zero_table(rows: list[dict]) -> list[str]:
    """The capacities where the plain optimum recomputes nothing but a policy does (left
    out of the ratios): how many per policy, the most it recomputed, and under workflow
    how many of them its fed optimum recomputes something too (its graph's admissions)."""
    out = ["| scheduler | trace | optimum 0 | policy | policy > 0 | worst tokens "
           "| fed optimum > 0 too |",
           "|---|---|---:|---|---:|---:|---:|"]
    for sched in ("fcfs", "workflow"):
        for shape in SHAPES:
            zero = [r for r in rows if r["scheduler"] == sched and r["shape"] == shape
                    and r["optimum"] == 0]
            for p in REF_POLICIES:
                hit = [r for r in zero if r[p] > 0]
                if not hit:
                    continue
                fed = "-"
                if sched == "workflow" and p in GRAPH_KEEPERS:
                    fed = str(sum(r["fed"][p] > 0 for r in hit))
                out.append(f"| {sched} | {shape} | {len(zero)} | {p} | {len(hit)} | "
                           f"{max(r[p] for r in hit)} | {fed} |")
    return out


def _schedule_lines(rows: list[dict]) -> list[str]:
    """How many workflow cases had a demotion or a queued step in an online policy's run."""
    out = []
    for shape in SHAPES:
        mine = [r for r in rows if r["scheduler"] == "workflow" and r["shape"] == shape]
        pressed = [r for r in mine if r["optimum"] > 0]
        out.append(f"- {shape}: {len(mine)} workflow cases (every capacity run), "
                   f"{sum(r['demoted'] for r in mine)} with a demotion and "
                   f"{sum(r['waited'] for r in mine)} with a resumed step that waited for "
                   f"admission (in lru's, saga's, ttl's, graph's or adaptive's run); of the "
                   f"{len(pressed)} whose optimum recomputes something, "
                   f"{sum(r['demoted'] for r in pressed)} and "
                   f"{sum(r['waited'] for r in pressed)}.")
    return out


def reference(workers: int, command: str) -> str:
    """Each policy's recomputation over the exact optimum on tiny traces, per scheduler."""
    t = time.perf_counter()
    tasks = [(s, sched, shape) for shape, (_, seeds, _) in SHAPES.items()
             for sched in ("fcfs", "workflow") for s in seeds]
    with worker_pool(workers) as pool:
        cases = list(pool.map(_reference_case, tasks))
    rows = [r for rs, _ in cases for r in rs]
    wall = time.perf_counter() - t
    tiny, waits = SHAPES["tiny"][1], SHAPES["waits"][1]
    out = [REF_SECTION, "",
           f"`{command}`: {wall / 60:.1f} min. Two trace shapes: `tiny`, {len(tiny)} random "
           "tiny traces (`kvsaga.sim.exhaustive.random_tiny_trace`, seeds "
           f"{tiny.start}-{tiny.stop - 1}: 2-3 sessions of 2-3 steps, 4-token blocks), and "
           f"`waits`, {len(waits)} traces whose tool pauses are long against their steps "
           f"(`random_wait_trace`, seeds {waits.start}-{waits.stop - 1}: 3 sessions of 3 "
           "steps arriving together, pauses of 0.01, 0.5 or 3 s), for the workflow "
           "scheduler's demotions and waits. Each trace at every capacity from its longest "
           "session + 1 block up to where neither the optimum nor any policy recomputes "
           f"anything, or {MAX_EXTRA} blocks past the longest session (a search over "
           f"{SHAPES['tiny'][2]:,} runs on `tiny`, {SHAPES['waits'][2]:,} on `waits`, leaves "
           "its capacity out: listed below). The optimum is the exhaustive search over every "
           "eviction choice under the same scheduler (kvsaga/sim/exhaustive.py) with a policy "
           "that keeps no execution graph: it bounds every policy under fcfs, and under "
           "workflow only those that keep no graph (lru, belady); `< optimum` counts the "
           "cases where a policy went below it, `least x` is the least ratio. Cases: the "
           "(trace, capacity) pairs where the optimum recomputes something.", "",
           *_plain_table(rows), "",
           "**Against the optimum fed the policy's own graph** (workflow only: fcfs reads no "
           "graph). The workflow scheduler reads the graph of a policy that keeps one "
           "(`Scheduler._graph`); `exhaustive_optimum(..., fed=P)` searches every eviction "
           "choice with the scheduler reading the graph of a fresh P fed the run's hooks, so P's"
           " own run is one of its runs and the figure bounds P (kvsaga/sim/exhaustive.py; "
           "adaptive's leaders, elected while it chooses victims, keep graphs that learn alike: "
           "its default experts graph and ttl). Searched below P's own figure + 1 (a run of P's "
           "is one of the search's): `< fed optimum` counts the cases where P beat every run "
           "searched, which would break the bound. Cases: where the fed optimum recomputes "
           "something. hindsight is judged against the least of the plain optimum (its belady "
           "runs) and the optimum fed oracle-ttl's graph (its oracle-ttl runs: a graph learns "
           "only from hooks, not from the oracle). `fed > plain` / `fed < plain`: cases where "
           "the fed optimum is above / below the plain one (the graph's admissions cost or save "
           "recomputation).", "",
           *_fed_table(rows), "",
           "**Where the plain optimum recomputes nothing** (left out of the ratios above): "
           "cases per policy that recompute something there, the most tokens one did, and, "
           "for a graph-keeping policy under workflow, how many of them its fed optimum "
           "recomputes something too (its graph's admissions force it).", "",
           *_zero_table(rows), "",
           "**Demotions and waits** (the online policies' runs under workflow):",
           *_schedule_lines(rows)]
    left = [f"- {sched}: {x}" for (_, sched, _), (_, xs) in zip(tasks, cases, strict=True)
            for x in xs]
    out += ["", "Left out:", *left] if left else []
    out += ["", "So `belady`, `oracle-ttl` and `hindsight` stay *references*, not bounds, in "
            "every table: the exact optimum is out of reach beyond tiny traces, and on these "
            "the gap of each reference to it is the figure above. `hindsight` runs belady and "
            "oracle-ttl from the trace's times and from the admission waits of each online "
            "policy's run above, then from the best of those (kvsaga/sim/hindsight.py)."]
    return "\n".join(out) + "\n"


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/policies.py"))
