"""Simulator speed: sessions simulated per CPU second, the per-step reference against the
fast path (decode runs), side by side in one run, on the same traces; plus the README's
`kvsaga sim` quickstart end to end with one worker process and with several.

    python bench/sim_speed.py                   # the default run (several minutes on 2 cores)
    python bench/sim_speed.py --profile         # cProfile's top entries, both paths
    python bench/sim_speed.py --profile --case 'readme graph' --top 25
    python bench/sim_speed.py --split           # shares of schedule, manager calls, policy
    python bench/sim_speed.py --baseline ../old-checkout --no-write
    python bench/sim_speed.py --baseline ../goal-checkout --previous ../last-landing
    python bench/sim_speed.py --issue-baseline ../f9d2af5 --baseline ../3017e06 --repeat 2

Each simulation runs twice, each time in a fresh process, `Simulator(reference=True)`
(every batch step through `Scheduler.schedule`, as before decode runs existed) and the
default fast path; the two results must be identical (the script stops otherwise).
Sessions/s is sessions over CPU seconds (`time.process_time`), which other processes on a
shared machine disturb far less than wall time. `--baseline PATH` also times the same
simulations with the kvsaga of another checkout (PYTHONPATH=PATH, its own simulator and
core), right after them; `--previous PATH` likewise times a checkout of the last change
measured (its rows must equal this tree's: a speed-up changes no result).
`--issue-baseline PATH` times the simulator issue 12 measured (a checkout of f9d2af5, pure
Python) on the same trace files, with the same preset, capacity in blocks and host tier;
it has no scheduler module and no cluster simulator, so its rows differ (its admission
rule stands in for the scheduler) and the cluster case is marked n/a; the 10x goal is
judged against it, over all the cases it runs and per case. A checkout with a C++ core
(3017e06) needs it built in place (`python setup.py build_ext --inplace` in it), else it
runs its Python core. The last cases are the issue's own quickstart (200 full-size swe
sessions at 20 GiB, one case per policy): the issue's simulator takes minutes on each.
Writes what this run measured as its block of bench/RESULTS.md's "## Simulator speed"
section, between marker lines naming this script (bench/results_blocks.py): the block its
last run wrote is replaced and nothing else (the notes written by hand there stay), and a run
refuses before it measures if the text between the markers was edited by hand.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import results_blocks
from ascii_args import ascii_int, int_arg

from kvsaga.config import parse_bytes
from kvsaga.sim.simulator import SimConfig
from kvsaga.sim.trace import write_trace
from kvsaga.sim.workloads import generate

HERE = Path(__file__).resolve().parent
SECTION = "## Simulator speed"
WRITER = "bench/sim_speed.py"  # its RESULTS.md block's writer (bench/results_blocks.py)
GOAL = 10.0  # issue 12: sessions per CPU second over the baseline's
README_ARGS = ["--workload", "swe", "--sessions", "30", "--seed", "1", "--scale", "0.25",
               "--kv-memory", "4G", "--policy", "lru,ttl,graph,belady"]
# The quickstart the issue ran (f9d2af5's README, `--kv-gib 20` then, without its `--plot`).
ISSUE_POLICIES = ("lru", "saga", "ttl", "graph", "belady")
ISSUE_ARGS = ["--workload", "swe", "--sessions", "200", "--seed", "1", "--policy",
              ",".join(ISSUE_POLICIES), "--kv-memory", "20G"]


@dataclasses.dataclass(frozen=True)
class Case:
    """One simulation: a generated trace and a config."""

    name: str
    family: str
    sessions: int
    scale: float
    kv_memory: str
    policy: str
    scheduler: str = "workflow"
    host_memory: str | None = None
    gpus: int = 1  # > 1: a ClusterSimulator behind the kvsaga router

    def trace(self):
        return generate(self.family, self.sessions, seed=1, scale=self.scale)

    def issue_config(self) -> dict | None:
        """What the issue's simulator (f9d2af5) is given for this case: the same preset,
        capacity in blocks and host tier, and the admission rule nearest this case's
        scheduler (`fifo` is vLLM's rule, as `fcfs`; `reserve`, its default, is the
        warm-first rule the workflow scheduler grew from); None where it cannot run the
        case (it has no cluster simulator)."""
        if self.gpus > 1:
            return None
        cfg = self.config()
        return dict(preset=cfg.preset, num_gpu_blocks=cfg.blocks(),
                    num_host_blocks=cfg.host_blocks() or None, policy=self.policy,
                    admission="fifo" if self.scheduler == "fcfs" else "reserve")

    def config(self) -> SimConfig:
        return SimConfig(policy=self.policy, scheduler=self.scheduler,
                         kv_memory_bytes=parse_bytes(self.kv_memory),
                         host_memory_bytes=parse_bytes(self.host_memory)
                         if self.host_memory else None)


CASES = [
    # The README quickstart's four simulations.
    *(Case(f"readme {p}", "swe", 30, 0.25, "4G", p) for p in ("lru", "ttl", "graph", "belady")),
    # bench/scheduling.py's sizes, under pressure, both schedulers.
    Case("bfcl x80 @0.5, 1700M, fcfs lru", "bfcl", 80, 0.5, "1700M", "lru", "fcfs"),
    Case("bfcl x80 @0.5, 1700M, workflow graph", "bfcl", 80, 0.5, "1700M", "graph"),
    Case("web x24 @0.15, 2300M, fcfs graph", "web", 24, 0.15, "2300M", "graph", "fcfs"),
    Case("swe x24 @0.15, 2300M + 4G host, graph", "swe", 24, 0.15, "2300M", "graph",
         "workflow", "4G"),
    # Full-size SWE sessions (the issue's slow case), one policy.
    Case("swe x20 @1.0, 20G, lru", "swe", 20, 1.0, "20G", "lru"),
    # A cluster (bench/cluster.py's shape, smaller): runs stop at every other GPU's step.
    Case("cluster 4 GPUs, swe x24 @0.2, 3G", "swe", 24, 0.2, "3G", "graph", gpus=4),
    # The README quickstart the issue ran (f9d2af5's: `kvsaga sim --workload swe --sessions
    # 200 --seed 1 --policy lru,saga,ttl,graph,belady --kv-gib 20`), one case per policy.
    *(Case(f"issue quickstart {p}", "swe", 200, 1.0, "20G", p)
      for p in ISSUE_POLICIES),
]


def select(texts: list[str] | None) -> list[Case]:
    """The cases whose name contains one of `texts` (None: all of them)."""
    return [c for c in CASES if texts is None or any(t in c.name for t in texts)]


def same(a: dict, b: dict) -> bool:
    """Equal rows, NaN equal to NaN."""
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True,
                                                                    default=str)


def measure(cases: list[Case], repeat: int, baseline: str | None = None,
            previous: str | None = None, issue: str | None = None) -> list[dict]:
    """Per case: the best of `repeat` CPU times of each path (and of the baseline, previous
    and issue checkouts), each run in a fresh process, one after the other (CPU time on a
    shared machine drifts with its load, and a process that ran other simulations runs
    slower), and whether the results are equal. Every arm reads the case's trace from the
    same JSON Lines file (written here with `write_trace`)."""
    here = str(HERE.parent)
    paths = {"ref": here, "fast": here, "base": baseline, "prev": previous, "issue": issue}
    out = []
    with tempfile.TemporaryDirectory(prefix="sim_speed_") as tmp:
        for case in cases:
            trace = Path(tmp) / "trace.jsonl"
            write_trace(case.trace(), trace)
            modes = [m for m in ("ref", "fast", "base", "prev", "issue") if paths[m]
                     and (m != "issue" or case.issue_config() is not None)]
            best = dict.fromkeys(modes, math.inf)
            rows = {}
            for _ in range(repeat):
                for mode in modes:
                    t, rows[mode] = run_case(case, trace, paths[mode], mode)
                    best[mode] = min(best[mode], t)
            out.append(case_row(case, best, rows, paths))
    return out


def case_row(case: Case, best: dict, rows: dict, paths: dict) -> dict:
    """One case's figures: rates (sessions per CPU second) and whether rows agree."""
    if not same(rows["ref"], rows["fast"]):
        diff = {k: (rows["ref"][k], rows["fast"][k]) for k in rows["ref"]
                if rows["ref"][k] != rows["fast"][k]}
        sys.exit(f"sim_speed: {case.name}: fast path and reference differ: {diff}")
    n = case.sessions
    fast = rows["fast"]
    r = dict(case=case.name, sessions=n, steps=fast.get("num_batch_steps"),
             ref_s=best["ref"], fast_s=best["fast"], ref_rate=n / best["ref"],
             fast_rate=n / best["fast"], speedup=best["ref"] / best["fast"],
             recomputed=fast.get("recomputed_tokens"))
    if paths["base"]:
        key = ("recomputed_tokens", "tct_mean_s")
        r.update(base_s=best["base"], base_rate=n / best["base"],
                 base_same=all(rows["base"][k] == fast[k] for k in key))
    if paths["prev"]:
        r.update(prev_s=best["prev"], prev_rate=n / best["prev"],
                 prev_same=same(rows["prev"], fast))
    if paths["issue"]:
        if "issue" in best:
            old = rows["issue"]
            r.update(issue_s=best["issue"], issue_rate=n / best["issue"],
                     issue_steps=old["num_batch_steps"],
                     issue_recomputed=old["recomputed_tokens"])
        else:
            r.update(issue_s=None, issue_rate=None)
    print(f"{case.name:38s} ref {r['ref_rate']:7.1f}  fast {r['fast_rate']:7.1f}"
          + (f"  baseline {r['base_rate']:7.1f}" if paths["base"] else "")
          + (f"  previous {r['prev_rate']:7.1f}" if paths["prev"] else "")
          + (f"  issue {r['issue_rate']:7.1f}" if r.get("issue_rate") else
             "  issue n/a" if paths["issue"] else "")
          + f" sessions/CPU s  ({r['speedup']:.2f}x)", flush=True)
    return r


# One simulation in a fresh process, with the kvsaga on PYTHONPATH (an older checkout has
# no `reference` argument: it is passed only when set). Timed: building the simulator and
# its run, not reading the trace.
RUN_SCRIPT = """
import json, sys, time
from kvsaga.config import parse_bytes
from kvsaga.sim.cluster import ClusterSimulator
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.trace import load_trace
c, trace, reference = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
s = load_trace(trace)
cfg = SimConfig(policy=c["policy"], scheduler=c["scheduler"],
                kv_memory_bytes=parse_bytes(c["kv_memory"]),
                host_memory_bytes=parse_bytes(c["host_memory"]) if c["host_memory"] else None)
kw = {"reference": True} if reference else {}
t = time.process_time()
if c["gpus"] > 1:
    cluster = ClusterSimulator(s, cfg, gpus=c["gpus"], router="kvsaga")
    for gpu in cluster.gpus:
        gpu.reference = reference
    row = cluster.run().row()
else:
    row = Simulator(s, cfg, **kw).run().to_dict()
t = time.process_time() - t
print(json.dumps([t, row], default=str))
"""

# The same for the issue's simulator (f9d2af5: no scheduler module, no cluster, capacity
# in blocks through `num_gpu_blocks`, its own admission rules).
ISSUE_RUN_SCRIPT = """
import json, sys, time
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.trace import load_trace
c, trace = json.loads(sys.argv[1]), sys.argv[2]
s = load_trace(trace)
cfg = SimConfig(**c)
t = time.process_time()
row = Simulator(s, cfg).run().to_dict()
t = time.process_time() - t
print(json.dumps([t, row], default=str))
"""


def run_case(case: Case, trace: Path, path: str, mode: str) -> tuple[float, dict]:
    """(CPU seconds, result row) of one simulation of `trace` with the kvsaga at `path`
    (`mode` "ref": the reference path; "issue": through the issue's simulator's API)."""
    root = str(Path(path).resolve())
    env = dict(os.environ, PYTHONPATH=root)
    if mode == "issue":
        argv = [ISSUE_RUN_SCRIPT, json.dumps(case.issue_config()), str(trace)]
    else:
        argv = [RUN_SCRIPT, json.dumps(dataclasses.asdict(case)), str(trace),
                "1" if mode == "ref" else "0"]
    # Run in the checkout's root: `python -c` puts the working directory first on sys.path,
    # ahead of PYTHONPATH, so another working directory's kvsaga would be the one timed.
    done = subprocess.run([sys.executable, "-c", *argv], env=env, cwd=root, check=True,
                          capture_output=True, text=True)
    t, row = json.loads(done.stdout.strip().splitlines()[-1])
    return t, row


def quickstart_wall(jobs: int, args: list[str] = README_ARGS) -> float:
    """Wall seconds of a `kvsaga sim` command (the README's) with `--jobs jobs`."""
    cmd = [sys.executable, "-m", "kvsaga.cli", "sim", *args, "--jobs", str(jobs), "--quiet"]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - t


def write_section(body: str, path: Path = HERE / "RESULTS.md") -> None:
    """Write `body` as this script's own marked block of RESULTS.md's `SECTION`
    (bench/results_blocks.py): the block its last run wrote is replaced, nothing else is
    touched (replacing the whole section wiped the notes written by hand under it), and a
    block edited by hand since is refused (`results_blocks.BlockError`, nothing written)."""
    results_blocks.replace_block(path, SECTION, WRITER, body)


def report(rows: list[dict], walls: dict[int, float], cmd: str, seconds: float,
           baseline_name: str = "", loads: tuple[float, float] | None = None,
           previous_name: str = "", issue_name: str = "",
           issue_walls: dict[int, float] | None = None) -> str:
    load = f", load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end" if loads else ""
    lines = [
        f"`{cmd}` ({seconds:.0f} s, Python {platform.python_version()}, "
        f"{os.cpu_count()} shared CPU cores{load}). Sessions simulated per CPU second "
        "(best of the repeats, each simulation in a fresh process, every arm reading the "
        "case's trace from one JSON Lines file): `reference` runs "
        "every batch step through `Scheduler.schedule` (the simulator before decode "
        "runs), `fast` is the default "
        "path; both give identical results (checked on every case), with the same "
        "manager, policy and scheduler code.",
        "",
        "```",
        f"{'case':38s} {'batch steps':>11s} {'reference':>10s} {'fast':>8s} {'speedup':>8s}"
        + (f" {'issue':>9s} {'vs issue':>9s}" if issue_name else "")
        + (f" {'baseline':>9s} {'vs base':>9s}" if baseline_name else "")
        + (f" {'previous':>9s} {'vs prev':>8s}" if previous_name else ""),
    ]
    for r in rows:
        steps = f"{r['steps']:,d}" if r["steps"] is not None else "-"
        line = (f"{r['case']:38s} {steps:>11s} {r['ref_rate']:10.1f} {r['fast_rate']:8.1f}"
                f" {r['speedup']:7.2f}x")
        if issue_name:
            line += (f" {r['issue_rate']:9.1f} {r['issue_s'] / r['fast_s']:8.2f}x"
                     if r["issue_s"] is not None else f" {'n/a':>9s} {'n/a':>9s}")
        if baseline_name:
            line += f" {r['base_rate']:9.1f} {r['base_s'] / r['fast_s']:8.2f}x"
            line += "" if r["base_same"] else " (differs)"
        if previous_name:
            line += f" {r['prev_rate']:9.1f} {r['prev_s'] / r['fast_s']:7.2f}x"
            line += "" if r["prev_same"] else " (row differs)"
        lines.append(line)
    ref = sum(r["ref_s"] for r in rows)
    fast = sum(r["fast_s"] for r in rows)
    lines += ["```", "",
              f"- All cases together: {ref:.1f} CPU s reference, {fast:.1f} CPU s fast "
              f"({ref / fast:.2f}x)."]
    if issue_name:
        lines += issue_lines(rows, issue_name)
    if baseline_name:
        base = sum(r["base_s"] for r in rows)
        ratios = [r["base_s"] / r["fast_s"] for r in rows]
        lines.append(f"- `baseline`: the same simulations with the kvsaga of PATH, a checkout "
                     f"of {baseline_name} "
                     f"(its own simulator and C++ core), {base:.1f} CPU s in all "
                     f"({base / fast:.2f}x the fast path's time; per case {min(ratios):.2f}x "
                     f"to {max(ratios):.2f}x); `vs base` is fast over it, "
                     "and `(differs)` marks a case whose recomputed tokens or mean TCT "
                     "differ from this tree's.")
    if previous_name:
        prev = sum(r["prev_s"] for r in rows)
        differ = [r["case"] for r in rows if not r["prev_same"]]
        lines.append(f"- `previous`: the same simulations with a checkout of {previous_name}, "
                     f"{prev:.1f} CPU s in all ({prev / fast:.2f}x the fast path's time); "
                     "`vs prev` is fast over it. "
                     + (f"Rows that differ from this tree's: {', '.join(differ)}."
                        if differ else "Every result row equals this tree's, field by field."))
    if walls:
        one = walls[1]
        parts = ", ".join(f"`--jobs {j}` {w:.1f} s ({one / w:.2f}x)"
                          for j, w in walls.items() if j != 1)
        lines.append(f"- The README quickstart end to end (`kvsaga sim {' '.join(README_ARGS)}`"
                     f", wall time, 4 simulations): `--jobs 1` {one:.1f} s, {parts}.")
    if issue_walls:
        lines.append(issue_wall_line(rows, issue_walls))
    lines.append(NOTES)
    return "\n".join(lines)


def issue_wall_line(rows: list[dict], walls: dict[int, float]) -> str:
    """The issue's quickstart end to end through today's CLI, against the CPU time the
    issue's simulator took on its five simulations (one process ran them one after
    another: its wall time was at least that)."""
    parts = ", ".join(f"`--jobs {j}` {w:.1f} s" for j, w in walls.items())
    quick = [r for r in rows if r["case"].startswith("issue quickstart")]
    old = [r["issue_s"] for r in quick if r.get("issue_s") is not None]
    line = (f"- The issue's quickstart end to end through today's CLI (`kvsaga sim "
            f"{' '.join(ISSUE_ARGS)}`, without `--plot`, whose sweep runs each policy at "
            f"up to 5 capacities), wall time: {parts}.")
    if len(old) == len(ISSUE_POLICIES) and walls:
        each = ", ".join(f"{sum(old) / w:.1f}x with `--jobs {j}`" for j, w in walls.items())
        line += (f" The issue's simulator took {sum(old):.0f} CPU s on the same five "
                 f"simulations (the `issue quickstart` rows, run one after another as its "
                 f"CLI did, so at least that in wall time): {each} (`--jobs 2` uses both "
                 f"cores, so only `--jobs 1` compares one core with one core; and the two "
                 f"simulators' decisions differ there: the rows below).")
    return line


def issue_lines(rows: list[dict], issue_name: str) -> list[str]:
    """The goal judged against the issue's simulator, over all cases it runs and per case,
    and what its rows did (its admission rules are not today's)."""
    ran = [r for r in rows if r["issue_s"] is not None]
    skipped = [r["case"] for r in rows if r["issue_s"] is None]
    out = [f"- `issue`: the simulator issue 12 measured, a checkout of {issue_name} (the last "
           "commit before the issue's work; pure Python, no C++ core), on the same trace "
           "files, preset, capacity in blocks and host tier, timed the same way (building "
           "the simulator and its run, CPU seconds). It has no scheduler module: its "
           "admission rule stands in for the scheduler (`fifo`, vLLM's rule, for `fcfs`; "
           "`reserve`, its default warm-first rule, for `workflow`), so its decisions and "
           "result rows may differ from this tree's (below: its batch steps and recomputed "
           "tokens beside this tree's). `vs issue` is fast over it."]
    if not ran:
        return out + ["- Goal (issue 12, item 4): no case ran on the issue's simulator."]
    issue = sum(r["issue_s"] for r in ran)
    fast = sum(r["fast_s"] for r in ran)
    ratios = {r["case"]: r["issue_s"] / r["fast_s"] for r in ran}
    misses = [c for c, x in ratios.items() if x < GOAL]
    out.append(f"- Goal (issue 12, item 4): >= {GOAL:.0f}x the issue's simulator's sessions "
               f"per CPU second. Over the {len(ran)} cases it runs: {issue:.1f} CPU s against "
               f"{fast:.1f}, **{issue / fast:.2f}x** ("
               + ("met" if issue / fast >= GOAL else "missed")
               + f"); per case {min(ratios.values()):.2f}x to {max(ratios.values()):.2f}x, "
               + (f"{len(misses)} of {len(ran)} under {GOAL:.0f}x (misses): "
                  + ", ".join(f"{c} {ratios[c]:.2f}x" for c in misses) + "."
                  if misses else f"every case at {GOAL:.0f}x or more.")
               + (f" Not run on it (no cluster simulator then): {', '.join(skipped)}."
                  if skipped else ""))
    same = [r for r in ran if (r["issue_steps"], r["issue_recomputed"])
            == (r["steps"], r["recomputed"])]
    if same:
        s_issue, s_fast = (sum(r[k] for r in same) for k in ("issue_s", "fast_s"))
        out.append(f"- Over the {len(same)} cases where both simulators made the same decisions "
                   f"(equal batch steps and recomputed tokens: the same work, done faster): "
                   f"{s_issue:.1f} CPU s against {s_fast:.1f}, {s_issue / s_fast:.2f}x; "
                   f"elsewhere part of the ratio is work today's scheduler does not do "
                   f"(the issue's `reserve` rule recomputes more).")
    out += ["", "```",
            f"{'case':38s} {'batch steps: issue':>18s} {'today':>10s} "
            f"{'recomputed tokens: issue':>24s} {'today':>12s}"]
    for r in ran:
        out.append(f"{r['case']:38s} {r['issue_steps']:18,d} {r['steps']:10,d} "
                   f"{r['issue_recomputed']:24,d} {r['recomputed']:12,d}")
    return out + ["```", ""]


# Written after reading the figures of a run; re-read them after a change.
NOTES = """- The fast path: decode runs (plain decode steps back to back; without a host tier
  their step times come from one array call and their usage integrals from one pass, summed
  in order in C), going on while steps wait for room with the scheduler's admissions asked
  at a step only when its last refusal may have changed (`Scheduler.refusal_until`, the
  cache version, an allocation; kept across decode allocations and the evictions they
  cause while `Scheduler.refusal_stands` says so from the manager's eviction journal,
  kvsaga/manager_journal.py), a policy's ticks in a row sent as one where its tick only
  records the time (`tick.coalesces`: ttl, graph, saga, belady), the scheduler's lookups of
  a waiting step kept while `KVCacheManager.cache_version` stands, resumed prompts checked
  and copied by the C++ core only past the context they repeat, GPU hits read off the
  session's block table and counted in C++, each block hashed once, cache residence timed
  by the pool, a step's release reported to a grouped policy in one call. The reference
  path shares all but the decode runs (docs/simulator.md, "Speed").
- `vs issue`: where the issue's simulator takes the decisions this tree takes (the same
  batch steps and recomputed tokens in the second table: the `fcfs` cases, whose rule is
  vLLM's in both, and in this run the host-tier case), the ratio is speed alone. Where
  they differ, its `reserve` rule is not the workflow scheduler: on the issue's quickstart
  it recomputed about 10x to 16x the tokens in the run of 2026-11-30 (it thrashes at 20
  GiB), so part of that ratio is work the workflow scheduler no longer causes, not the
  same work done faster. Every case under 10x is a miss (listed above).
- Where the time goes now (`python bench/sim_speed.py --split`): on the issue's quickstart
  (`--case 'issue quickstart saga'`), the policy's hooks (about two fifths: `choose_victims`
  at each of the 126,216 decode blocks that evict one, `blocks_uncached` of those victims
  and of resumed steps' hits, `blocks_cached` of each finished step's whole context), the
  scheduler's admissions (a third, most of it the 6,058 admitted steps' `begin_step` and
  first chunk: 20,115 attempts and 18,244 lookups, 57,660 and 86,428 before refusals were
  kept across evictions) and the manager's own part of `allocate_slots`, `begin_step` and
  `finish_step`. On the small cases no part dominates. Per admitted step `lookup`, `begin_step`
  and the first chunk's allocation, per finished step `finish_step`, each O(the context's
  blocks) in C++ or, for the grouped policies, in Python (their per-block marks:
  kvsaga/policy/groups.py, search.py); per decode block one `append_tokens` +
  `allocate_slots` (6,700 on readme lru, 13,900 on the full-size case); per run the arrays
  of its step times. 10x on every case needs each step's per-block work gone, not cheaper:
  the grouped policies' marks kept per run, and a paused session's table held whole by the
  pool (a contract change for the pool, every policy's order and the usage metrics);
  docs/simulator.md, "Speed".
- `(differs)`: decisions changed on main since the baseline (other lanes: the workflow
  scheduler's demotions and defaults, ttl's and graph's parameters); readme belady's row
  already differs at 01642d6, before the speed changes, none of which changes a row (each
  checked side by side against its parent). This tree's fast path equals its reference on
  every case.
- CPU time on 2 cores shared by several busy processes moves by 15% or more between
  runs of one simulation (small ratios are noise); the quickstart's wall times depend on
  how busy the cores are."""


def jobs_list(text: str) -> list[int]:
    """A `--jobs`/`--issue-jobs` value: comma-separated positive ints in ASCII digits ('' for
    none), read when the flags are parsed, not after minutes of measuring."""
    try:
        jobs = [ascii_int(j) for j in text.split(",") if j.strip()]
    except ValueError:
        jobs = [0]
    if min(jobs, default=1) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers >= 1 ('' for "
                                         f"none), got {text!r}")
    return jobs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int_arg, default=1, help="runs per path; the best counts")
    ap.add_argument("--jobs", type=jobs_list, default="1,2",
                    help="--jobs values for the quickstart timing (empty: skip it)")
    ap.add_argument("--issue-jobs", type=jobs_list, default="1,2", help="--jobs values for "
                    "timing the issue's quickstart through today's CLI (empty: skip it)")
    ap.add_argument("--baseline", metavar="PATH", help="a checkout of an older kvsaga")
    ap.add_argument("--baseline-name", default=None,
                    help="what to call it in RESULTS.md (default: the path)")
    ap.add_argument("--issue-baseline", metavar="PATH3", help="a checkout of the simulator "
                    "issue 12 measured (f9d2af5), timed on the same traces; the 10x goal is "
                    "judged against it")
    ap.add_argument("--issue-baseline-name", default=None,
                    help="what to call it in RESULTS.md (default: the path)")
    ap.add_argument("--previous", metavar="PATH2", help="a checkout of the last change "
                    "measured, timed beside (its rows must equal this tree's)")
    ap.add_argument("--previous-name", default=None,
                    help="what to call it in RESULTS.md (default: the path)")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top entries of "
                    "both paths on the --case cases (default: the first README case and the "
                    "full-size case), and stop")
    ap.add_argument("--case", action="append", metavar="TEXT", help="only the cases whose "
                    "name contains TEXT (repeatable); a subset is printed, not written")
    ap.add_argument("--split", action="store_true", help="print where the fast path's time "
                    "goes on the --case cases (default: all): schedule calls by outcome, "
                    "manager calls, decode runs, policy hooks; and stop")
    ap.add_argument("--top", type=int_arg, default=15, help="entries per profile")
    ap.add_argument("--no-write", action="store_true", help="do not touch bench/RESULTS.md")
    ap.add_argument("--json", metavar="OUT", help="also save what this run measured (rows, "
                    "wall times, command, load) to OUT")
    ap.add_argument("--from-json", metavar="IN", help="measure nothing: write the section "
                    "from a run saved with --json (after its notes changed)")
    args = ap.parse_args(argv)
    cases = select(args.case)
    if not cases:
        ap.error(f"no case name contains any of {args.case}")
    if not (args.no_write or args.case or args.profile or args.split):
        try:  # a block it may not write over: refused before the run
            results_blocks.check(HERE / "RESULTS.md", SECTION, WRITER)
        except results_blocks.BlockError as e:
            ap.error(f"{e} (or run with --no-write)")
    if args.profile or args.split:
        from sim_speed_profile import print_split, profile  # bench/ is on the path as a script
    if args.profile:
        for case in cases if args.case else (CASES[0], *select(["@1.0"])):
            profile(case, args.top)
        return 0
    if args.split:
        for case in cases:
            if case.gpus == 1:
                print_split(case)
        return 0
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        saved["walls"] = {int(j): w for j, w in saved["walls"].items()}
        saved["issue_walls"] = {int(j): w for j, w in saved["issue_walls"].items()}
    else:
        saved = run_all(args, cases)
        if args.json:
            Path(args.json).write_text(json.dumps(saved, indent=1), encoding="utf-8")
    body = report(saved["rows"], saved["walls"], saved["cmd"], saved["seconds"],
                  saved["baseline_name"], tuple(saved["loads"]), saved["previous_name"],
                  saved["issue_name"], saved["issue_walls"])
    print(body)
    if not args.no_write and not args.case:
        write_section(body, HERE / "RESULTS.md")
    return 0


def run_all(args, cases: list[Case]) -> dict:
    """Every measurement of a run, as `report` takes them."""
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    rows = measure(cases, args.repeat, args.baseline, args.previous, args.issue_baseline)
    walls = {j: quickstart_wall(j) for j in args.jobs}
    issue_walls = {j: quickstart_wall(j, ISSUE_ARGS) for j in args.issue_jobs}
    cmd = "python bench/sim_speed.py" + (f" --repeat {args.repeat}" if args.repeat != 1 else "")
    if args.issue_baseline:
        cmd += " --issue-baseline PATH3"
    if args.baseline:
        cmd += " --baseline PATH"
    if args.previous:
        cmd += " --previous PATH2"
    return dict(rows=rows, walls=walls, issue_walls=issue_walls, cmd=cmd,
                seconds=time.perf_counter() - t0, loads=(load0, os.getloadavg()[0]),
                baseline_name=args.baseline_name or args.baseline or "",
                previous_name=args.previous_name or args.previous or "",
                issue_name=args.issue_baseline_name or args.issue_baseline or "")


if __name__ == "__main__":
    raise SystemExit(main())
