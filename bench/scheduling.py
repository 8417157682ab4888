"""Schedulers side by side: fcfs (vLLM v1's rule) vs workflow-atomic admission, with the lru
and graph policies and the default one (`kvsaga.policy.DEFAULT_POLICY`), over a load x
KV-capacity grid of every workload family and a two-tenant mix (simulated; `kvsaga.sim`, the
same scheduler code the engine runs).

    python bench/scheduling.py              # the default run (a few minutes on 2 cores)
    python bench/scheduling.py --fit        # the fit of workflow's parameters (seeds 101-106)
    python bench/scheduling.py --families swe --no-write

Capacity is a fraction of each trace's peak prompt working set (the most blocks its live
sessions' prompts and paused contexts hold at once, served without eviction;
`peak_prompt_working_set`: running steps' decoded tokens left out, 0-0.8% under
`peak_working_set` on these traces, kept so that the published grids reproduce;
docs/simulator.md): 1.0 is next to no pressure, 0.25 heavy thrash. Load
multiplies the family's arrival rate. Traces are scaled (`scale`: token counts and tool
times) with arrival rates divided by the same factor, so the load stays the family's.
Writes its own block of bench/RESULTS.md's "## Scheduling (simulated)" section, between
markers naming this script, at the section's end (bench/results_blocks.py: its next run
replaces that block and nothing else; the hand-written subsections stay; a block edited by
hand since is refused, before any simulation), and bench/plots/scheduling.png, from what
this run measured.

Parameters of `workflow` are its defaults, chosen by `--fit` on seeds 101-106 (swe, web, bfcl
at load 1, capacity 0.5 and 0.25, and load 2, capacity 0.5); the figures report seed 1
(every family), the tenant mix (seed 2), held-out variants of the families and held-out
seeds (bench/scheduling_fit.py, which holds the fit). The scheduler's fit never reads seed 1,
but the eviction policy tune, the cluster router fit and the vLLM gate fit did
(bench/fit_seeds.py): the policy tune ran these four families at seed 1, so the report
seed's `workflow+graph` lines judge `graph` on the sessions it was tuned on, not held out
(as seed 2 is a seed of the cluster and gate fits, bench/scheduling_mix.py).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import fit_seeds
import results_blocks
import scheduling_bound
import scheduling_oracle
from ascii_args import int_arg
from scheduling_goals import goals, miss_line, verdict, waits  # noqa: F401 (re-exported)

from kvsaga.policy import DEFAULT_POLICY
from kvsaga.scheduler import DEFAULT_SCHEDULER
from kvsaga.sim.compare import add_tenant_slowdowns, peak_prompt_working_set
from kvsaga.sim.metrics import unloaded_tct
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.workloads import WORKLOADS, perturb
from kvsaga.workers import worker_pool

HERE = Path(__file__).resolve().parent
SECTION = "## Scheduling (simulated)"
# The heading of the block a run writes (at the end of SECTION, between its markers).
OWN_HEADING = "### The last run written by bench/scheduling.py (its next run replaces it)"
PRESET = "a100-llama3-8b"
# (sessions, scale) per family: small enough for a few minutes in all on 2 shared cores.
DEFAULTS = {"swe": (24, 0.15), "web": (24, 0.15), "bfcl": (80, 0.5), "assistant": (10, 0.1)}
GRID = ((1.0, 1.0), (1.0, 0.5), (1.0, 0.25), (2.0, 0.5))  # (load, capacity fraction)
REPORT_SEED, FIT_SEEDS = 1, fit_seeds.SCHEDULER_FIT_SEEDS  # fit seeds: 101-106
DEFAULT = f"{DEFAULT_SCHEDULER}+{DEFAULT_POLICY}"  # what the goals are about
CONFIGS = (("fcfs", "lru"), ("fcfs", "graph"), ("workflow", "lru"), ("workflow", "graph"))
if (DEFAULT_SCHEDULER, DEFAULT_POLICY) not in CONFIGS:
    CONFIGS += ((DEFAULT_SCHEDULER, DEFAULT_POLICY),)
# The other admission order, queue order ("fifo": the default until `--fit`'s round 4 chose
# "predicted", kvsaga/scheduler/admission_order.py), run beside the default at every grid
# point of the report and held-out seeds.
FIFO = {"admission_order": "fifo"}
# Held-out variants (never fitted on): slower / faster tools, longer sessions, bigger
# prompts; run at load 1x, capacity 50%, fcfs+lru vs the default.
PERTURBED = {"swe*": ("swe", {"latency": 3.0, "tokens": 1.2}),
             "web*": ("web", {"latency": 0.5, "steps": 1.3}),
             "bfcl*": ("bfcl", {"latency": 2.0, "tokens": 1.5, "spread": 1.5})}
# Written after reading the default run's figures; re-read them after a change.
NOTES = """Notes (what the columns mean, and where a goal cannot be met):
- Gain bound: fcfs+lru's mean TCT over a lower bound on the mean TCT of any scheduler and
  policy at that capacity (bench/scheduling_bound.py, whose docstring proves it: the
  largest of each session's solo time, phases whose contexts cannot share the GPU run one
  at a time, and memory-time kept or recomputed across pauses in windows of time). The
  unloaded TCT is not used: it fixes the chunking and hits no shared prefix, so a schedule
  can beat it slightly. Where the bound is below 2 the 2x goal is out of reach for any
  scheduler: at seed 1, swe at 1x load and 50% (its tools take almost no time, so a
  session's TCT is nearly all GPU time) and every 100% point; other seeds: the held-out
  table's gain bound column.
- KV utilization (kv_utilization) is the time-averaged share of the GPU's KV blocks holding
  KV that is used: referenced by a running step, or cached and hit later (a paused
  session's blocks count for its whole pause when it comes back and hits them). Free
  blocks, the growth headroom workflow's gate keeps, and cached blocks nobody hits again
  (ended sessions', or a paused session's evicted before it returns) count as unused. That
  is what the published 0.71 / 0.59 count. It is averaged over the whole makespan, ramp-up
  and drain included, so it cannot exceed the live share: the time-averaged share of the
  GPU that the live sessions' contexts could fill at all (kv_live_share; up to
  shared-prefix blocks; it counts running steps' decoded tokens since session 44, before
  which it left them out, read low, and the ratio below read high). Where the live share
  is below 0.85 no scheduler reaches 0.85 without holding sessions back. The second
  reading, utilization of the fillable memory (kv_utilization / kv_live_share), asks how
  much of what live data could fill holds used KV; docs/scheduler.md says why both are
  reported. Where the live share is near 1
  (bfcl) fcfs+lru, which runs every live session at once, reads higher than workflow,
  whose gate keeps room for the admitted sessions' next steps.
- The two-tenant mix runs at 2x load: at 1x its peak working set stays under its capacity
  floor (2 x (longest session + 1) blocks, so each tenant's half of the GPU holds its
  longest session), leaving it without pressure at every capacity; at 2x the 50% point
  contends (fcfs+lru recomputes there). Each tenant's slowdown is against its own trace
  alone on half the GPU under the same scheduler and policy, so a tenant that gains more
  from sharing the whole GPU shows a lower slowdown.
- Why the misses (the goals lines above give, at each miss, the share of the mean TCT spent
  waiting for admission; admission wait and demotions are workflow's own counters, in the
  per-family tables): where the live share is near 1 (bfcl at 25%), memory, not eviction
  order, bounds how many sessions run at once. fcfs+lru admits them all and recomputes;
  workflow admits what fits and the rest queue, so most of its mean TCT there is admission
  wait. The gain bound assumes unbounded KV, so it is far from reachable where the live
  share is near 1. What holds sessions back (the goals lines' split of the admission
  wait, `wait_causes`): "contexts" (the admitted sessions' own contexts plus the waiting
  one's prompt exceed the GPU) and "pool" (the running steps' blocks leave no room for the
  waiting step's first chunk; mostly a demoted session back with a long context) are
  memory that is really full; "growth" (it would fit but for predicted growth) is the part
  a less cautious gate could admit. Where the live share is low (swe), sessions wait only
  a small share of the makespan, and then the admitted contexts fill most of the GPU: the
  low average is the time nobody waits. On the fit seeds (`--fit`, 101-106) the defaults
  (growth charged only while a step is queued or running, predicted from the paused-on
  tool: paused_growth False, tool_growth True) raised the smallest gain from 1.20x to 1.43x
  with p95 and tasks/h constrained there; admitting more (overcommit) raised it less or
  made non-thrash figures worse (bench/scheduling_fit.py prints the candidates). The fit
  never reads this report seed (the eviction policy tune did: the policy's gains here are
  not held out, bench/fit_seeds.py), and the held-out seeds' table shows the spread. Where the
  wait is small (swe at 25%), 2x would need a mean TCT within a few percent of the same
  trace's with no memory pressure (its 100% point, in the goals line) at a quarter of the
  memory, where one session's context near its end fills most of the pool: there the
  capacity is its floor, the longest session + 1 block, on every fit seed.
  bench/scheduling_recompute.py splits the recomputation by the step that redoes it: on
  the fit seeds 60-71% is demoted sessions admitted again, the rest sessions admitted
  throughout their pause, whose blocks go almost only while the admitted contexts exceed
  the GPU (docs/scheduler.md, "Where swe 1x 25%'s recomputation comes from"). Demoting
  at once when a queued step's growth overflows (`queue_shrink`, `--fit` round 6, graph
  the default policy then) raised
  swe 1x 25% to 1.83x on the fit seeds (from 1.75x) but lowered bfcl 1x 25% to 1.48x (from
  1.51x), so it stays opt-in. The shrink ages
  sessions it already demoted (`shrink_aging`), so the same long-tool sessions are not
  demoted at every pause. At bfcl the GPU is busy most of the makespan even with no memory
  pressure (the miss lines' 100% figure), so recomputation (mostly of demoted sessions'
  contexts) lengthens the queue. A demoted session's next step goes ahead of the other
  waiting demoted ones, but each is overtaken at most `max_overtake` (16) times: unbounded,
  a session demoted early could wait until the trace's end (the miss lines give the
  longest single wait). The second `--fit` round (shrink_order x max_overtake on seeds
  101-106, with ttl, the default policy then) chose it with a smallest gain of 1.30x (bfcl
  1x 25%), against 1.43x for the unbounded order in the first round: the bound costs mean
  TCT there and buys p95. The fourth round (eighth session) reran the fit with graph, the
  default policy then (`bench/policies.py --tune`; kvsaga.policy.DEFAULT_POLICY names
  today's): bench/scheduling_fit.py records it.
- Oracle rows (workflow-oracle, the pressured points; bench/scheduling_oracle.py): the
  default with the sessions waiting for admission in order of their true remaining steps,
  which no online scheduler knows. The miss lines and the held-out table (seeds 1, 7, 8,
  13-16) quote them: where the oracle reaches 2x and the default does not, memory does not rule
  2x out; the default lacks the sessions' lengths. docs/scheduler.md ("Where bfcl 1x
  25%'s time goes") has the fit seeds' figures and the online orders tried.
- Gittins order rows (`workflow+POLICY (admission_order gittins)`, the pressured points of
  seeds 1, 7, 8, 13-16; the held-out table's last column): the Gittins index of censored
  session lengths (kvsaga/scheduler/session_length.py), opt-in: `--fit` round 8 (seeds
  101-106) gave it a smallest gain of 1.48x against the default's 1.50x (bfcl 1x 25%).
- Fifo order rows (`workflow+POLICY (admission_order fifo)`, POLICY the default; every
  grid point of seeds 1, 7, 8, 13-16; the held-out table's fifo column): the order of waiting
  sessions before the default became the predicted one (least predicted remaining work
  first, with aging: kvsaga/scheduler/admission_order.py). `--fit`'s fourth round chose
  "predicted" (aging_s 80) on seeds 101-106 with graph, the default policy then (smallest
  gain 1.31x -> 1.51x at bfcl 1x 25%, no non-thrash figure worse there by over 2%); these
  rows and the "fifo admission order" goals line show what that choice gives and costs on
  the report and held-out seeds, which the fit never read. docs/scheduler.md
  ("Admission by predicted remaining work") has the orders tried.
- Bounded waiting: the reserve (`max_wait_s`, 120 s since `--fit` round 8 with graph; 60 s
  from round 7, fitted with ttl):
  once the session waiting longest has waited that long, nothing is admitted before it;
  the miss lines give the longest single wait.
- Held out: swe* (tools 3x slower) at 50% is hardly under pressure (see fcfs+lru's hit
  rate); there the admission gate costs workflow mean and p95 TCT for no gain.
- AFS, noisy mix (declared in bench/scheduling_mix.py before any workflow run on it; seeds
  2, 7, 8 never developed on): fcfs+lru lets tenant a crowd b out; workflow's memory share
  (docs/scheduler.md, "Agent Fair Share") keeps b's admission wait under a second a
  session on seeds 7 and 8 (the per-tenant rows' last figure), and b's remaining slowdown
  is compute: b's steps run in batches full of a's work on
  a saturated GPU, while its baseline has half a GPU to itself. Admission cannot bound that;
  Agent Fair Share of compute (on by default since session 13, `share_step_tokens` 128:
  the tenant behind in service may fill the batch step, the others' prefill is capped; the
  `(share_step_tokens 0)` rows are the default with it off) shortens those steps, and a
  gains from it too, so the ratio (slowest over fastest) stays above 1.5 at most points;
  the goals lines give each tenant's floor. On a real engine, with a fixed cost per step,
  the cap makes a long prompt beside another tenant's decodes take many steps.
- AFS, mix: each tenant's slowdown is against its run alone on half the GPU, which is
  pressured, while in the shared run nearly no session waits for admission (the goals
  lines' admission wait), so AFS's deficits have little to reorder (the probe row, tenant a
  weighted 4x, equals the default's). The goals line gives two floors: the solo one
  (scheduling_bound's fact 1; strict: no order finishes a tenant's tasks sooner) and each
  tenant's TCT alone on the whole GPU at the mix's capacity (`add_whole_gpu`: what it gets
  with the other tenant absent, its own sessions still sharing batch steps), with the TCT
  the less slowed tenant would need for 1.5, and says whether 1.5 takes slowing a tenant
  down. Agent Fair Share
  is work-conserving: it acts only while a tenant is held back from its share, and does
  not delay a tenant to equalise the gains from sharing (docs/scheduler.md, "Agent Fair
  Share", has the decision and the development seeds' floors: `python
  bench/scheduling_mix.py --floors SEEDS`). Equal admissions (within one session of equal
  shares: the deviation bound, tests/scheduler/test_fair_share.py) are not equal
  slowdowns when one tenant's sessions are longer.
- The default policy (kvsaga.policy.DEFAULT_POLICY) is chosen by `bench/policies.py
  --tune`, not here; workflow+graph's rows show the other agent-aware policy under the same
  scheduler."""


def trace(family: str, seed: int, load: float, sessions: int | None = None):
    """The family's sessions (a `PERTURBED` name: its variant, as many as the base)."""
    if family in PERTURBED:
        base, knobs = PERTURBED[family]
        spec = perturb(WORKLOADS[base], family, **knobs)
    else:
        base, spec = family, WORKLOADS[family]
    n, scale = DEFAULTS[base]
    rate = spec.arrival_rate * load / scale
    return spec.generate(sessions or n, seed, arrival_rate=rate, scale=scale)


def capacity(sessions, frac: float, tenants: int = 1) -> int:
    """`frac` of the peak prompt working set (the module docstring), but at least what the
    longest session (on each tenant's share of the GPU, for a mix) needs."""
    base = SimConfig(preset=PRESET)
    longest = max(base.cost.kv_spec.num_blocks_for(s.total_tokens) for s in sessions)
    return max(int(peak_prompt_working_set(sessions, base) * frac), tenants * (longest + 1))


def _run(task: tuple) -> dict:
    family, seed, load, frac, sched, policy, params = task
    import scheduling_mix  # it imports this module's helpers
    sessions = (scheduling_mix.mix_trace(family, seed) if family in scheduling_mix.MIXES
                else trace(family, seed, load))
    tenants = len({s.tenant for s in sessions})
    oracle = sched == scheduling_oracle.NAME  # the default with the oracle's order
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(sessions, frac, tenants),
                    policy=policy, scheduler=DEFAULT_SCHEDULER if oracle else sched,
                    scheduler_params=params)
    t = time.perf_counter()
    sim = (scheduling_oracle.simulator if oracle else Simulator)(sessions, cfg)
    row = sim.run().to_dict()
    # Admission queueing (workflow): waits of new sessions and of demoted ones to be admitted
    # again, per session of the trace; it is part of every task's TCT.
    row["admission_wait_s"] = getattr(sim.scheduler, "admission_wait_s", 0.0) / len(sessions)
    row["num_demotions"] = getattr(sim.scheduler, "num_demotions", 0)
    row["admission_wait_max_s"] = getattr(sim.scheduler, "admission_wait_max_s", 0.0)
    # What held the waiting sessions back (`WorkflowScheduler.wait_causes`), per session, and
    # how full the admitted contexts kept the GPU while someone waited.
    causes = getattr(sim.scheduler, "wait_causes", {})
    row["wait_causes"] = {k: v / len(sessions) for k, v in causes.items()}
    waiting = getattr(sim.scheduler, "waiting_s", 0.0)
    row["waiting_share"] = waiting / row["makespan_s"] if row["makespan_s"] else 0.0
    row["waiting_context_fill"] = (sim.scheduler.waiting_context_s / waiting if waiting
                                   else math.nan)
    if tenants > 1:
        add_tenant_slowdowns(row, sessions, cfg)
        scheduling_mix.add_whole_gpu(row, sessions, cfg)
        waits = getattr(sim.scheduler, "tenant_admission_wait_s", {})
        for tenant, entry in row["tenants"].items():  # per session of the tenant
            entry["admission_wait_s"] = waits.get(tenant, 0.0) / entry["tasks"]
    if (sched, policy) == ("fcfs", "lru"):  # the goals' baseline: its row holds the bound
        b = scheduling_bound.mean_tct_bound(sessions, cfg.cost, cfg.num_gpu_blocks,
                                            cfg.max_num_batched_tokens)
        row.update(tct_bound_mean_s=b["bound_s"], tct_bound_from=b["which"])
    row.update(family=family, seed=seed, load=load, frac=frac, policy=policy,
               params=params, capacity_blocks=cfg.num_gpu_blocks, wall_s=time.perf_counter() - t,
               tct_unloaded_mean_s=sum(unloaded_tct(s, cfg.cost, cfg.max_num_batched_tokens)
                                       for s in sessions) / len(sessions))
    return row


def run(tasks: list[tuple], workers: int) -> list[dict]:
    with worker_pool(workers) as ex:
        return list(ex.map(_run, tasks))


def _label(r: dict) -> str:
    label = f"{r['scheduler']}+{r['policy']}"
    if r.get("params"):
        label += " (" + "; ".join(
            f"{k} " + (", ".join(f"{t}: {w:g}" for t, w in v.items()) if isinstance(v, dict)
                       else str(v)) for k, v in r["params"].items()) + ")"
    return label


def table(rows: list[dict], family: str) -> str:
    head = ("| load | capacity | scheduler+policy | TCT mean s | TCT p95 s | admission wait s "
            "| demotions | tasks/h | hit rate | recomputed | KV util | SLO |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        if r["family"] != family:
            continue
        lines.append(f"| {r['load']:g}x | {r['frac']:.0%} | {_label(r)} | {r['tct_mean_s']:.1f} "
                     f"| {r['tct_p95_s']:.1f} | {r['admission_wait_s']:.1f} | {r['num_demotions']} "
                     f"| {r['tasks_per_hour']:.0f} | {r['hit_rate']:.3f} "
                     f"| {r['recomputed_tokens'] / 1e6:.2f}M | {r['kv_utilization']:.3f} "
                     f"| {r['slo_attainment']:.2f} |")
    return "\n".join(lines)


def perturbed_table(rows: list[dict]) -> str:
    """fcfs+lru vs the default on the held-out variants."""
    out = ["| variant | fcfs+lru hit | fcfs+lru TCT s | default TCT s | TCT mean gain "
           "| gain bound | p95 gain | tasks/h ratio |", "|---|---|---|---|---|---|---|---|"]
    for fam in PERTURBED:
        f = _pick(rows, fam, 1.0, 0.5, "fcfs+lru")
        w = _pick(rows, fam, 1.0, 0.5, DEFAULT)
        out.append(f"| {fam} | {f['hit_rate']:.3f} | {f['tct_mean_s']:.1f} "
                   f"| {w['tct_mean_s']:.1f} | {f['tct_mean_s'] / w['tct_mean_s']:.2f}x "
                   f"| {bound(f):.2f}x | {f['tct_p95_s'] / w['tct_p95_s']:.2f}x "
                   f"| {w['tasks_per_hour'] / f['tasks_per_hour']:.2f} |")
    return "\n".join(out)


def _pick(rows, family, load, frac, label):
    return next(r for r in rows if (r["family"], r["load"], r["frac"], _label(r))
                == (family, load, frac, label))


def bound(f: dict) -> float:
    """The largest mean-TCT gain over fcfs+lru any scheduler could reach on this trace at
    this capacity (bench/scheduling_bound.py; rows saved before it: the unloaded TCT)."""
    return f["tct_mean_s"] / f.get("tct_bound_mean_s", f["tct_unloaded_mean_s"])


def _fifo(rows: list[dict], key: tuple, params: dict = FIFO) -> dict | None:
    """The fifo admission order's row (or `params`') at `key` (None: not run)."""
    label = _label({"scheduler": DEFAULT_SCHEDULER, "policy": DEFAULT_POLICY,
                    "params": params})
    found = [r for r in rows if (r["family"], r["load"], r["frac"], _label(r)) == (*key, label)]
    return found[0] if found else None


def plot(rows: list[dict], families: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = families + (["mix"] if any(r["family"] == "mix" for r in rows) else [])
    fig, axes = plt.subplots(1, len(fams), figsize=(3.2 * len(fams), 3.2), squeeze=False)
    try:
        for ax, fam in zip(axes[0], fams, strict=True):
            for sched, pol in CONFIGS:
                pts = sorted((r["frac"], r["tct_mean_s"]) for r in rows
                             if r["family"] == fam and r["load"] == 1.0
                             and (r["scheduler"], r["policy"]) == (sched, pol))
                ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o",
                        linestyle="-" if sched == "workflow" else "--", label=f"{sched}+{pol}")
            ax.set_title(f"{fam} (load 1x)")
            ax.set_xlabel("KV capacity / peak working set")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("mean TCT (s)")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=70)
    finally:
        plt.close(fig)


def write_section(body: str) -> None:
    """Write the run's body as this script's own marked block of RESULTS.md's `SECTION`
    (bench/results_blocks.py): the block its last run wrote is replaced, nothing else is
    touched (the section's hand-written subsections stay), and a block edited by hand since
    is refused (`results_blocks.BlockError`)."""
    results_blocks.replace_block(HERE / "RESULTS.md", SECTION, "bench/scheduling.py",
                                 f"{OWN_HEADING}\n\n{body}")


def main(argv: list[str] | None = None) -> int:
    import scheduling_fit  # they import this module's helpers
    import scheduling_mix
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default=",".join(DEFAULTS),
                    help="comma-separated workflow families of the grid, the held-out seeds "
                         "and the other admission orders (default: %(default)s); the "
                         f"held-out variants ({', '.join(PERTURBED)}) and the two-tenant "
                         "mixes run whatever it names (--no-mix skips the mixes)")
    ap.add_argument("--no-mix", action="store_true", help="skip the tenant mixes")
    ap.add_argument("--workers", type=int_arg, default=2,
                    help="simulator processes run in parallel (default: %(default)s)")
    ap.add_argument("--fit", action="store_true", help="run the parameter fit and exit")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--save-rows", metavar="JSON", help="also save the measured rows")
    ap.add_argument("--reuse-rows", metavar="JSON", help="take the rows of tasks a saved "
                    "run measured from it (same code: check), simulate only the rest")
    ap.add_argument("--from-rows", metavar="JSON",
                    help="render the section from rows a run saved (its command and wall "
                         "time), without simulating: to rewrite the notes")
    args = ap.parse_args(argv)
    if args.fit:
        scheduling_fit.fit(args.workers)
        return 0
    if not args.no_write:  # a block it may not write over: refused before the run
        try:
            results_blocks.check(HERE / "RESULTS.md", SECTION, "bench/scheduling.py")
        except results_blocks.BlockError as e:
            ap.error(f"{e} (or run with --no-write)")
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    for f in families:
        WORKLOADS[f]  # unknown family: lists the known ones
    tasks = [(f, REPORT_SEED, load, frac, s, p, None) for f in families for load, frac in GRID
             for s, p in CONFIGS]
    for seed in (REPORT_SEED, *scheduling_fit.HELD_OUT_SEEDS):
        tasks += scheduling_oracle.oracle_tasks(families, GRID, seed, DEFAULT_POLICY)
    tasks += scheduling_fit.held_out_tasks(families)
    tasks += [(f, seed, load, frac, DEFAULT_SCHEDULER, DEFAULT_POLICY, FIFO)
              for seed in (REPORT_SEED, *scheduling_fit.HELD_OUT_SEEDS) for f in families
              for load, frac in GRID]
    tasks += scheduling_fit.other_order_tasks(families,
                                              (REPORT_SEED, *scheduling_fit.HELD_OUT_SEEDS))
    tasks += [(f, REPORT_SEED, 1.0, 0.5, s, p, None) for f in PERTURBED
              for s, p in (("fcfs", "lru"), tuple(DEFAULT.split("+")))]
    if not args.no_mix:
        tasks += scheduling_mix.mix_tasks(CONFIGS)
    if args.from_rows:
        saved = json.loads(Path(args.from_rows).read_text())
        rows, wall, cmd = saved["rows"], saved["wall_s"], saved["command"]
        reused = saved.get("reused", "")
    else:
        t0 = time.perf_counter()
        old = json.loads(Path(args.reuse_rows).read_text()) if args.reuse_rows else None
        rows = scheduling_fit.run_reusing(tasks, old["rows"] if old else [], args.workers)
        wall = time.perf_counter() - t0
        argv_ = sys.argv[1:] if argv is None else list(argv)
        cmd = " ".join(["python bench/scheduling.py", *argv_])
        reused = (f"; {rows.reused} of them reused from {args.reuse_rows}, made by "
                  f"`{old['command']}` ({old['wall_s']:.0f} s)" if old else "")
        if args.save_rows:
            Path(args.save_rows).write_text(json.dumps(
                {"rows": rows, "wall_s": wall, "command": cmd, "reused": reused}))
    mixes = scheduling_mix.MIXES
    held = [r for r in rows if r["seed"] in scheduling_fit.HELD_OUT_SEEDS
            and r["family"] not in mixes]
    n_sims = len(rows)
    rows = [r for r in rows if r["seed"] == REPORT_SEED or r["family"] in mixes]
    parts = [f"Command: `{cmd}` ({n_sims} simulations{reused}; {wall:.0f} s on this machine). "
             f"Preset {PRESET}; seed {REPORT_SEED} per family, the two-tenant mixes "
             f"(bench/scheduling_mix.py) seeds {scheduling_mix.MIX_SEED} (mix) and "
             f"{', '.join(map(str, scheduling_mix.NOISY_SEEDS))} (noisy); "
             f"workflow's parameters are its defaults, fitted with `--fit` on seeds "
             f"{', '.join(map(str, FIT_SEEDS))} (swe, web, bfcl), never on these traces. "
             f"Capacity: share of the trace's peak working set; load: x the family's arrival "
             f"rate.",
             "", f"### Goals ({DEFAULT}, the defaults, vs fcfs+lru; from this run)", "",
             *verdict(rows, families), "", goals(rows, families), ""]
    for fam in families + (["mix", "noisy"] if not args.no_mix else []):
        if fam in mixes:
            what = ", ".join(f"{t}: {n} {f} sessions at {x:g}x" for t, f, x, n in mixes[fam])
        else:
            what = "{} sessions, scale {}".format(*DEFAULTS[fam])
        parts += [f"### {fam} ({what})", "", table(rows, fam), ""]
    parts += ["### Held-out variants (load 1x, capacity 50%)", "",
              "; ".join(f"{k}: {b} with " + ", ".join(f"{x} x{v:g}" for x, v in kn.items())
                        for k, (b, kn) in PERTURBED.items()) + ".", "",
              perturbed_table(rows), "",
              f"### Held-out seeds ({', '.join(map(str, scheduling_fit.HELD_OUT_SEEDS))}: "
              f"held out of the fit, each read in earlier reports, so none is fresh (fresh "
              f"seeds run apart, once: `bench/scheduling_fit.py --held-out`); {DEFAULT} vs "
              f"fcfs+lru where fcfs+lru's hit rate < 0.8)", "",
              scheduling_fit.held_out_table(held, families), ""]
    parts += scheduling_mix.tenant_table(rows)
    parts += [NOTES, "", "![mean TCT vs capacity](plots/scheduling.png)"]
    body = "\n".join(parts)
    print(body)
    if not args.no_write:
        try:
            write_section(body)
        except results_blocks.BlockError as e:  # edited while it ran
            print(f"not written: {e}", file=sys.stderr)
            return 2
        (HERE / "plots").mkdir(exist_ok=True)
        plot(rows, families, HERE / "plots" / "scheduling.png")
        print("wrote bench/RESULTS.md (its block in \"Scheduling (simulated)\") and "
              "bench/plots/scheduling.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
