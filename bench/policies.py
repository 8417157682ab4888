"""Eviction policies against Belady across KV capacities, for every workload family.

For each family: generate a trace, measure its peak working set (the most blocks that live
sessions' contexts hold at once, served without eviction), then serve it at 25%, 50%, 75%
and 100% of that with each policy; `+host` rows add a host tier as large as the working set.
Writes a markdown table and one plot per family into the "## Eviction policies (simulated)"
section of bench/RESULTS.md (other sections are left alone) and PNGs under bench/plots/.

    python bench/policies.py                     # the default run (~10 min on 2 cores)
    python bench/policies.py --families swe --sessions 20 --scale 0.1 --no-write

Traces are scaled (`--scale`: token counts and tool times) with arrival rates divided by the
same factor, so that the load (sessions in flight) stays that of the family's default.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from kvsaga.sim.compare import config_for, peak_working_set
from kvsaga.sim.plot import plot_sweep
from kvsaga.sim.simulator import SimConfig, simulate
from kvsaga.sim.workloads import WORKLOADS, generate

HERE = Path(__file__).resolve().parent
SECTION = "## Eviction policies (simulated)"
FRACTIONS = (0.25, 0.5, 0.75, 1.0)
POLICIES = ("lru", "saga", "ttl", "graph", "belady", "lru+host", "graph+host", "belady+host")
# (sessions, scale) per family: small enough for ~10 minutes in all on 2 shared cores.
DEFAULTS = {"swe": (40, 0.2), "web": (40, 0.2), "bfcl": (150, 0.5), "assistant": (16, 0.1)}
PRESET = "a100-llama3-8b"
TARGET_BELADY = 1.15
TARGET_TCT = 1.64


# Written after reading the default run's figures (seed 1); re-read them after a change.
ANALYSIS = """What changed, and what the default run says (seed 1):

- **Diagnosis checked** (`SimResult.recomputed_after_preemption_tokens`): under the old
  vLLM-like FIFO admission, retries after preemption made 25-31% of the recomputation on
  swe and web at 25-50% (5-8% on bfcl, ~0 on assistant); the rest was paused contexts
  evicted by over-admission (thrash), which no eviction order fixes.
- **Scheduler** (docs/simulator.md, the same for every policy): a step is admitted only if
  its whole prompt + 64 decode tokens fits beside every running step's reserve, and warm
  resumes (context still resident) go before cold work, at most 16 ahead of the head of the
  queue. Preemptions fell from 0-205 per run to 0-1. Reserve alone (FIFO order) only moved
  the thrash (swe 50% lru 1.82M -> 1.91M); warm-first cut it: lru 1.819M -> 0.700M, graph
  1.705M -> 0.832M, belady 1.717M -> 0.700M at swe 50%; web 50% graph 3.397M -> 2.436M.
- **graph**: time to resume is now the pause fit's median residual, not its mean (heavy
  tails inflated the mean): bfcl 50% 0.683M -> 0.668M, assistant 25% 0.293M -> 0.266M,
  others unchanged (measured under the new scheduler).
- **Belady is no longer a lower bound** (lru 0.91x of it on web 25%, 0.89x at web 75%):
  admission now depends on what is resident, and Belady ranks by the trace's release
  times, not by when the scheduler will admit. Ratios to Belady are less meaningful than
  before; the exhaustive optimum (tests/sim/test_exhaustive.py) remains the bound.
- **graph, admission wait (this run)**: graph recomputed more than lru on swe at 25-50%
  because it priced time to reuse by the tool pause alone. Instrumented (swe 50%, seed 1):
  77% of its session-block victims were sessions that had *just* paused (elapsed 0, predicted
  back in 24-600 ms, correctly for the tool) whose true next use was 2-6 s away: a resumed
  step queues for admission (0 s for most, up to ~9 s under pressure), and evicting it made
  it cold, so it lost warm-first priority. Queued sessions (resume hinted) were all priced at
  1 ms, cold or not. Oracle pause hints fix the tool part only (0.684M). graph now adds the
  mean wait from resume hint to step start, learned separately for warm and cold resumes,
  less the time already queued (kvsaga/policy/graph.py). swe: 25% 1.974M -> 1.696M, 50%
  0.832M -> 0.683M (lru 0.700M), 75% 0.165M -> 0.158M; web 25% 3.498M -> 3.169M, 50%
  2.436M -> 2.373M; bfcl 25% 1.599M -> 1.616M (+1%); assistant unchanged. Seeds 1-6 of
  swe at 25/50/75%: at or below old graph on seeds 1-5 and below lru except seed 4 at 25%
  (5.05M vs 5.04M; seed 4 50%: 4.36M vs lru 4.63M, old 4.90M); worse than both on seed 6
  at 25-50% (2.21M vs lru 2.12M, old 2.01M).
- **graph vs Belady**: within 1.15x except bfcl 50% (1.22x) and assistant 50% (1.37x:
  0.028M vs 0.020M; with oracle pause hints graph reaches 0.020M there, so the learned
  heavy-tailed human pauses are the gap). Missed.
- **graph vs saga**: ahead on every family's sweep total now (swe 2.537M vs 2.766M, at
  every capacity); graph is also below lru on swe at 25-75%.
- **TCT**: swe 50% lru 53.4 s, graph 54.7 s (was 58.0 s): 0.98x, the 1.64x target is
  missed, and no eviction order reaches it under this scheduler: Belady's is 53.2 s.
- Traces are scaled down (table above); no trace or setting of this benchmark changed."""


def _trace(family: str, sessions: int, scale: float, seed: int):
    rate = WORKLOADS[family].arrival_rate / scale
    return generate(family, sessions, seed=seed, arrival_rate=rate, scale=scale)


def _run(task: tuple) -> dict:
    family, sessions, scale, seed, frac, blocks, host_blocks, spec = task
    trace = _trace(family, sessions, scale, seed)
    base = SimConfig(preset=PRESET, num_gpu_blocks=blocks)
    cfg = config_for(spec, base, host_memory_bytes=1.0)  # any size: replaced just below
    if cfg.host_memory_bytes is not None:
        cfg = SimConfig(preset=PRESET, num_gpu_blocks=blocks, policy=cfg.policy,
                        num_host_blocks=host_blocks)
    t = time.perf_counter()
    row = simulate(trace, cfg).to_dict()
    row.update(policy=spec, family=family, frac=frac, wall_s=time.perf_counter() - t)
    return row


def run(families: list[str], sessions: int | None, scale: float | None, seed: int,
        workers: int) -> tuple[list[dict], dict]:
    """Every (family, capacity, policy) run; returns the rows and per-family facts."""
    tasks, facts = [], {}
    for fam in families:
        n, s = DEFAULTS[fam]
        n, s = sessions or n, scale or s
        trace = _trace(fam, n, s, seed)
        base = SimConfig(preset=PRESET)
        peak = peak_working_set(trace, base)
        longest = max(base.cost.kv_spec.num_blocks_for(x.total_tokens) for x in trace)
        facts[fam] = dict(sessions=n, scale=s, peak=peak, longest=longest,
                          prompt_tokens=sum(x.prompt_length(k) for x in trace
                                            for k in range(x.num_steps)))
        for frac in FRACTIONS:
            # The longest session must fit; below that no policy can serve the trace.
            blocks = max(int(peak * frac), longest + 1)
            for spec in POLICIES:
                tasks.append((fam, n, s, seed, frac, blocks, peak, spec))
    with ProcessPoolExecutor(max_workers=workers) as pool:
        rows = list(pool.map(_run, tasks))
    ref = {(r["family"], r["frac"], r["num_host_blocks"]): r["recomputed_tokens"]
           for r in rows if r["policy"].startswith("belady")}
    for r in rows:
        b = ref[(r["family"], r["frac"], r["num_host_blocks"])]
        mine = r["recomputed_tokens"]
        r["belady_ratio"] = mine / b if b else (1.0 if mine == 0 else math.nan)
    return rows, facts


def _cell(r: dict) -> str:
    return (f"{r['recomputed_tokens'] / 1e6:.3f} ({r['belady_ratio']:.2f}x)")


def targets(rows: list[dict], facts: dict) -> list[str]:
    """One line per issue-7 target: met or missed, with the figures."""
    by = {(r["family"], r["frac"], r["policy"]): r for r in rows}
    lines = []
    worst = max((by[(f, q, "graph")]["belady_ratio"], f, q)
                for f in facts for q in FRACTIONS if q < 1.0)
    ok = worst[0] <= TARGET_BELADY
    lines.append(f"- graph within {TARGET_BELADY}x of Belady at every capacity under pressure "
                 f"(< 100% of the peak): **{'met' if ok else 'missed'}**; worst "
                 f"{worst[0]:.3f}x ({worst[1]}, {worst[2]:.0%}).")
    for fam in facts:
        g = sum(by[(fam, q, "graph")]["recomputed_tokens"] for q in FRACTIONS)
        s = sum(by[(fam, q, "saga")]["recomputed_tokens"] for q in FRACTIONS)
        wins = sum(by[(fam, q, "graph")]["recomputed_tokens"]
                   <= by[(fam, q, "saga")]["recomputed_tokens"] for q in FRACTIONS)
        lines.append(f"- graph ahead of saga on {fam}: **{'met' if g < s else 'missed'}** "
                     f"(sweep total {g / 1e6:.3f}M vs {s / 1e6:.3f}M recomputed tokens; "
                     f"graph <= saga at {wins} of {len(FRACTIONS)} capacities).")
    if "swe" in facts:
        lru, graph = by[("swe", 0.5, "lru")], by[("swe", 0.5, "graph")]
        gh, lh = by[("swe", 0.5, "graph+host")], by[("swe", 0.5, "lru+host")]
        x, xh = lru["tct_mean_s"] / graph["tct_mean_s"], lru["tct_mean_s"] / gh["tct_mean_s"]
        lines.append(f"- mean TCT >= {TARGET_TCT}x better than lru on swe at 50%: "
                     f"**{'met' if x >= TARGET_TCT else 'missed'}** for graph ({x:.2f}x: "
                     f"{lru['tct_mean_s']:.1f} s vs {graph['tct_mean_s']:.1f} s); graph+host "
                     f"is {xh:.2f}x better than lru ({gh['tct_mean_s']:.1f} s), but lru+host "
                     f"is {lru['tct_mean_s'] / lh['tct_mean_s']:.2f}x ({lh['tct_mean_s']:.1f} s):"
                     f" the host tier, not the policy, gives that gain.")
    return lines


def markdown(rows: list[dict], facts: dict, command: str, wall_s: float) -> str:
    out = [SECTION, ""]
    out.append(f"`{command}` on the 2-core CPU machine (shared), {wall_s / 60:.1f} min; "
               f"preset {PRESET} (block {16} tokens = 2 MiB). Traces, per family: sessions x "
               f"scale (token counts and tool times multiplied, arrival rate divided by it), "
               f"peak working set (blocks of live contexts, served without eviction) and the "
               f"longest session:")
    out.append("")
    out.append("| family | sessions | scale | prompt tokens | peak working set | longest |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for fam, f in facts.items():
        out.append(f"| {fam} | {f['sessions']} | {f['scale']} | {f['prompt_tokens'] / 1e6:.1f}M"
                   f" | {f['peak']} blocks | {f['longest']} blocks |")
    out.append("")
    out.append("Recomputed prompt tokens (millions) and their ratio to Belady's with the same "
               "host tier; `+host` rows have a host tier as large as the peak working set "
               "(PCIe 25 GB/s). Capacity as a share of the peak working set (floored at the "
               "longest session + 1 block).")
    out.append("")
    by = {(r["family"], r["frac"], r["policy"]): r for r in rows}

    def table(cell) -> list[str]:
        """One row per (family, capacity), one column per policy, `cell(row)` in each."""
        lines = [
            "| family | capacity | blocks | " + " | ".join(POLICIES) + " |",
            "|---|---:|---:|" + "---:|" * len(POLICIES),
        ]
        for fam in facts:
            for q in FRACTIONS:
                cells = [cell(by[(fam, q, p)]) for p in POLICIES]
                blocks = by[(fam, q, "lru")]["num_gpu_blocks"]
                lines.append(f"| {fam} | {q:.0%} | {blocks} | " + " | ".join(cells) + " |")
        return lines + [""]

    out += table(_cell)
    out += ["Mean task completion time (s), modelled:", ""]
    out += table(lambda r: f"{r['tct_mean_s']:.1f}")
    out += ["Preemptions (running steps preempted for lack of blocks, then retried):", ""]
    out += table(lambda r: f"{r['num_preemptions']}")
    out.append("Targets (issue 7):")
    out.append("")
    out += targets(rows, facts)
    out.append("")
    out.append(ANALYSIS)
    out.append("")
    for fam in facts:
        out.append(f"![{fam}](plots/policies_{fam}.png)")
    out.append("")
    return "\n".join(out)


def write_section(text: str, path: Path) -> None:
    """Replace (or append) our section of RESULTS.md, leaving the others alone."""
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Measured results\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text + "\n", doc)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    path.write_text(doc, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", default=",".join(DEFAULTS), help="comma-separated families")
    p.add_argument("--sessions", type=int, default=None, help="sessions per family")
    p.add_argument("--scale", type=float, default=None, help="trace scale")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workers", type=int, default=2, help="processes")
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--from-json", default=None,
                   help="re-render the section from a saved bench/plots/policies.json")
    args = p.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    for f in families:
        if f not in DEFAULTS:
            p.error(f"unknown family {f!r}; choose from {', '.join(DEFAULTS)}")
    t = time.perf_counter()
    if args.from_json:
        saved = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        rows, facts, wall, command = (saved["rows"], saved["facts"], saved["wall_s"],
                                      saved["command"])
    else:
        rows, facts = run(families, args.sessions, args.scale, args.seed, args.workers)
        wall = time.perf_counter() - t
        command = " ".join(["python bench/policies.py",
                            *(argv if argv is not None else sys.argv[1:])])
    text = markdown(rows, facts, command, wall)
    print(text)
    if not args.no_write:
        (HERE / "plots").mkdir(exist_ok=True)
        for fam in facts:
            mine = [dict(r, capacity_pct=100 * r["frac"]) for r in rows if r["family"] == fam]
            plot_sweep(mine, HERE / "plots" / f"policies_{fam}.png",
                       title=f"{fam}: {facts[fam]['sessions']} sessions x{facts[fam]['scale']}",
                       x_key="capacity_pct", x_label="GPU KV capacity (% of peak working set)")
        (HERE / "plots" / "policies.json").write_text(json.dumps(
            {"facts": facts, "rows": rows, "wall_s": wall, "command": command}, indent=1,
            default=float), encoding="utf-8")
        write_section(text, HERE / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
