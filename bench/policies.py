"""Eviction policies on held-out agent traffic: tuned on some seeds, judged on others.

Two modes, never mixed:

- `--tune` runs the fit set: the four built-in families (swe, web, bfcl, assistant) at
  `FAMILY_SEEDS` and the held-out traces below at `TRACE_SEEDS` (every seed read while the
  policies were built), and picks, among `TUNE_CANDIDATES` (lru, saga, ttl, graph
  with `median_returns` and with `spread`, its forecast's spread priced, for queued and
  demoted sessions or queued ones only, releasing a demoted session until its tool returns
  (`demoted_release`), and `adaptive` over all four rankings or over
  graph's and ttl's only, by realized or ghost regret or by shadow caches of their own), by
  the tune rule below. It writes the pick
  to bench/plots/policies_tune.json and its own RESULTS.md section; `DEFAULT_POLICY`
  (kvsaga/policy/__init__.py) and the policies' default constants must be that pick
  (tests/bench/test_policies.py checks it); the code is bench/policies_tune.py. `--regret`
  is a diagnosis and may run the fit seeds; `--reference` is bench/policies_reference.py.
- the default mode evaluates at other seeds (`EVAL_SEEDS`, first run once the default was
  fixed; a seed this tune or any other bench's fit read is refused, bench/fit_seeds.py, also
  the seeds of a `--from-json` file, but not the seen seeds session 34 kept the default
  policy on: they are this evaluation's own, labelled seen) on the built-in swe family and on
  workloads those families never produced:

- `swe-slow`: swe with every tool 3x slower and 1.5x the log-latency spread (heavier tails);
- `web-short`: web with half the steps and 1.5x the prompt sizes;
- `swe+bfcl`: swe and bfcl sessions served together (workflows mixed);
- `bfcl-v4`: sessions shaped by the Berkeley Function Calling Leaderboard v4 multi-turn data
  that the `bfcl-eval` package ships (kvsaga/sim/bfcl.py; skipped, and said so, when that
  package is not installed: `pip install --no-deps bfcl-eval`; a `--tune` without it covers
  part of the fit set only, saved apart); the fit seeds draw from the
  "fit" half of BFCL's tasks and every other seed from the "eval" half (`entry_half`), so
  an evaluation never replays a task the fit set served;
- `swe`: the built-in family at an unseen seed.

Each trace is served at capacities that are shares of its peak prompt working set (the most
blocks that live sessions' prompts and paused contexts hold at once;
`peak_prompt_working_set`, kept so that the published grids reproduce: it leaves out
running steps' decoded tokens, 0.1-0.8% of `peak_working_set` here; docs/simulator.md).
Each evaluation run adds a section of its own at the end of bench/RESULTS.md, titled with its
seeds and the time it was written (`eval_title`), its output one marked block under it
(bench/results_blocks.py): no run replaces another's record, so a run made in another
worktree leaves one section to copy into main's RESULTS.md as it is. `--reference`,
`--regret` and `--tune` (and bench/policies_cv.py) replace their own marked block of their
section and nothing else: notes written there by hand stay. The options and those writers
are bench/policies_cli.py.

    python bench/policies.py --tune           # pick the default (tuning seeds only)
    python bench/policies.py                  # the evaluation (held-out seeds and traces)
    python bench/policies.py --traces swe-slow --fractions 0.5 --no-write
    python bench/policies.py --regret --fractions 0.3   # per-victim regret by block class
    python bench/policies.py --reference      # every policy against the exact optimum (tiny)
    python bench/policies.py --smooth         # also each pressured case at 5 pool sizes

`--smooth` (bench/policies_smooth.py, sixteenth session) judges each pressured case also by
its mean over five pool sizes within +-2% of its own, since one block of pool swings a case
~2x; both verdicts are printed. With `--tune --smooth` the pick is made on the smoothed
figures and written to bench/plots/policies_tune_smooth.json; that pick is the default
only if the run covered the whole fit set and the pick passes issue 10's non-thrash check
(bench/policies_tune.py, `smoothed_default`).

The tune rule (`TUNE_RULE`; written down on 2026-12-01 before any run under it, and the
default is whatever it picks): over the fit set's pressured cases (lru hit rate in
`HIT_RANGE`, one case per distinct pool size), with r = a candidate's recomputed tokens /
the least of lru's, saga's and ttl's on the same case, minimize, in this order,
  1. the worst r over the fit cases,
  2. the number of fit cases with r > 1.0,
  3. the total recomputed tokens over the fit cases, where totals within `TIE_SHARE` (2%)
     of the least are equal, and among equals the incumbent (`TUNE_INCUMBENT`, the default
     the tuning started from) stays.
The worst ratio comes first because the goal is per case ("on every trace") and because a
count of cases at r <= 1.0 favours a baseline by construction: lru, saga and ttl can never
be above the best of themselves on a case they win, so the count (the rule until this
session) rewarded ttl's own wins; the worst ratio does not.
The tie band was added by the lead in the fifteenth session, after the fresh seeds 921,
922 had run: the shadow-cache `adaptive` had tied `graph[median_returns=1]` on keys 1 and 2
and led by 1.1% of tokens on key 3 (13.022M against 13.168M), inside the spread that one
block of pool moves a case by (bench/policies_chaos.py `--jitter`, run on seen seeds before
the fresh run: each case spans ~2x), while costing about three more experts' work per step
than graph alone (the real ttl and two shadows, each a full expert; its fit-set
simulations took 2.3x graph's time) and changing the policy that the scheduling
goals of issue 10 are judged with, whose checks it had not run. A challenger that ties on
keys 1 and 2 must now lead the incumbent by more than 2% of tokens. Decided after the fresh run
(which graph won), so 921 and 922 are no longer a clean test of this choice.

`belady` is a reference, not a lower bound: admission depends on what is resident, and it
ranks by the trace's release times; the exhaustive optimum (kvsaga/sim/exhaustive.py) is
the only exact bound and is feasible for tiny traces only. Every table says so. `hindsight`
(kvsaga/sim/hindsight.py) is belady and oracle-ttl told each step's admission wait in
earlier runs, the least of several such runs: tighter, an achievable figure, not a bound
(the scheduler reads a policy's graph, which oracle-ttl keeps and the exhaustive search's
policy does not); the 1.10x goal is judged against the best run found (`FOUND_FROM`).
"""

from __future__ import annotations

import functools
import json
import math
import platform
import sys
import time
from pathlib import Path

from fit_seeds import POLICY_FAMILY_SEEDS, POLICY_TRACE_SEEDS, fit_seed_error
from policies_cli import (  # split out, re-exported: `main` calls them through this module
    REF_WRITER,
    REGRET_WRITER,
    TUNE_WRITER,  # noqa: F401
    WRITER,  # noqa: F401
    append_evaluation,
    eval_title,
    parse,
    refuse_early,
    write_section,
)
from policy_specs import parse_spec, split_specs  # noqa: F401 (the spec grammar, re-exported)

from kvsaga.policy import DEFAULT_POLICY, make_policy
from kvsaga.sim.compare import peak_prompt_working_set
from kvsaga.sim.hindsight import best_offline, record
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.workloads import WORKLOADS, mixed, perturb
from kvsaga.workers import worker_pool

HERE = Path(__file__).resolve().parent
SECTION = "## Eviction policies (held-out, simulated)"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PRESET = "a100-llama3-8b"
BASELINES = ("lru", "saga", "ttl")
SPREAD = "graph[spread=1,spread_states=queued]"  # opt-in, evaluated beside the default
POLICIES = ("lru", "saga", "ttl", "graph", SPREAD, "adaptive", "belady", "oracle-ttl",
            "hindsight")
OFFLINE = ("belady", "oracle-ttl", "hindsight")
CANDIDATES = ("graph", SPREAD, "adaptive")  # online ones judged on the goals
FRACTIONS = (0.3, 0.6)
# The fit set: every seed read while the policies were built (2026-11-29 to 12-01; 301 and
# 302 were the evaluation of 2026-11-30, 401 and 402 that of 2026-12-01's seventh session,
# and are fit data since). --tune runs the built-in
# families at FAMILY_SEEDS and the held-out traces at TRACE_SEEDS; the evaluation refuses
# all of them (and every other fit's seeds, bench/fit_seeds.py, which holds these values)
# and runs EVAL_SEEDS, first run once the default was fixed.
FAMILY_SEEDS = POLICY_FAMILY_SEEDS  # 1, 101
# 951, 952 (fresh in session 27, rerun in session 31 on the scheduler's round-34 default)
# joined the fit set in session 32 so that graph's worst held-out cases could be diagnosed
# (the diagnosis tools read fit seeds only) and its lever tuned on them.
TRACE_SEEDS = POLICY_TRACE_SEEDS  # 102, 103, 201, 202, 301, 302, 401, 402, 951, 952
TUNE_SEEDS = FAMILY_SEEDS + TRACE_SEEDS
# 501, 502 were first run on 2026-12-01 (seventh session), 601, 602 in the tenth, 701, 702
# in the eleventh, 801, 802 in the twelfth, 901, 902 in the thirteenth, and are seen since;
# 911, 912 were chosen by the lead (fourteenth session) before any run on them and are run
# once, after the default is frozen; 921, 922 likewise in the fifteenth, 931, 932 in the
# sixteenth session (their one fresh run: RESULTS "Eviction policies (held-out, sixteenth
# session: ...)"; seen since; later fresh seeds, 941 on, were run with `--seeds`, never
# added to EVAL_SEEDS). So the default run labels 931, 932 held out, not fresh.
SEEN = (501, 502, 601, 602, 701, 702, 801, 802, 901, 902, 911, 912, 921, 922)
EVAL_SEEDS = (*SEEN, 931, 932)
SEED_SETS: tuple[tuple[str, tuple[int, ...]], ...] = (  # subsets judged apart as well
    ("seen seeds 501-922", SEEN),
    ("seeds 931, 932 (held out of the fit; fresh in the sixteenth session, seen since)",
     (931, 932)))
FAMILIES = ("swe", "web", "bfcl", "assistant")  # what --tune runs, with TRACES
TUNE_CANDIDATES = ("lru", "saga", "ttl", "graph[median_returns=1]", "graph[spread=1]",
                   "graph[spread=1,spread_states=queued]",
                   # fourteenth session: adaptive as it is (graph, ttl, saga, lru take turns,
                   # realized regret) and three selectors between graph's and ttl's rankings
                   # only: realized regret, ghost regret with shadows naming an eighth of each
                   # search's victims, ghost regret with full shadows
                   "adaptive[experts=graph+ttl+saga+lru,realized=1,shadow_share=0.125]",
                   "adaptive[experts=graph+ttl,realized=1,shadow_share=0.125]",
                   "adaptive[experts=graph+ttl,realized=0,shadow_share=0.125]",
                   "adaptive[experts=graph+ttl,realized=0,shadow_share=1]",
                   # fifteenth session: graph and ttl judged by shadow caches of their own
                   # (kvsaga/policy/shadow.py), 10% hysteresis, 8 pool sizes of memory
                   "adaptive[experts=graph+ttl,shadow_cache=1,switch_margin=0.1,"
                   "shadow_memory=8]",
                   # session 32: graph releasing a demoted session until its tool returns,
                   # as ttl does (docs/policies.md, "Session 32")
                   "graph[demoted_release=1]")
TUNE_JSON = HERE / "plots" / "policies_tune.json"
TUNE_SECTION = "## Eviction policies: tuning (simulated)"
REGRET_SECTION = "## Eviction regret by block class (simulated; a diagnosis, any seed)"
HIT_RANGE = (0.8, 0.98)  # lru hit rates of "under pressure but not thrashing"
TARGET_BEST, TARGET_BELADY = 1.0, 1.10
# The best run found: the least of these and the judged policy's runs (not other candidates':
# the yardstick must not move with --policies).
FOUND_FROM = (*BASELINES, "belady", "oracle-ttl", "hindsight")
REF_FOUND = ("the best run found (the least of lru's, saga's, ttl's, belady's, oracle-ttl's, "
             "hindsight's and this policy's runs: each a feasible run; not a lower bound, and "
             "under a scheduler that reads the policy's graph, as `workflow` does, not "
             "guaranteed at or above the exact optimum)")
# Totals within this share of the least count as equal, and the incumbent keeps its place
# among equals (the lead, fifteenth session, after the fresh run of 921, 922: the module
# docstring says why).
TIE_SHARE = 0.02
TUNE_INCUMBENT = "graph[median_returns=1]"  # the default the tuning started from
TUNE_RULE = ("the worst ratio to the best of lru, saga and ttl over the fit set's pressured "
             "cases, then the number of those cases above 1.0x of it, then the total "
             f"recomputed tokens over them (least first; totals within {TIE_SHARE:.0%} of the "
             "least are equal, and among equals the incumbent default stays: a band the lead added "
             "after the fifteenth session's fresh run)")


def _scaled(family: str, n: int, seed: int, scale: float, spec=None):
    spec = spec if spec is not None else WORKLOADS[family]
    return spec.generate(n, seed, arrival_rate=spec.arrival_rate / scale, scale=scale)


FAMILY_SIZE = {"swe": (24, 0.2), "web": (24, 0.2), "bfcl": (60, 0.5), "assistant": (24, 0.2)}


def build_trace(name: str, seed: int):
    """A trace by name (module docstring); None when its data is not installed."""
    if name == "swe-slow":
        spec = perturb(WORKLOADS["swe"], "swe-slow", latency=3.0, spread=1.5)
        return _scaled("swe", 24, seed, 0.2, spec)
    if name == "web-short":
        spec = perturb(WORKLOADS["web"], "web-short", steps=0.5, tokens=1.5)
        return _scaled("web", 24, seed, 0.2, spec)
    if name == "swe+bfcl":
        return mixed(_scaled("swe", 16, seed, 0.2), _scaled("bfcl", 60, seed, 0.5))
    if name == "bfcl-v4":
        from kvsaga.sim.bfcl import bfcl_trace
        # Fit seeds draw from one half of BFCL's tasks, every other seed from the other, so
        # that an evaluation never replays a task the fit set served (kvsaga/sim/bfcl.py).
        half = "fit" if seed in TUNE_SEEDS else "eval"
        try:
            return bfcl_trace(80, seed, arrival_rate=0.3, scale=0.5, half=half)
        except ModuleNotFoundError:
            return None
    if name in FAMILY_SIZE:
        n, scale = FAMILY_SIZE[name]
        return _scaled(name, n, seed, scale)
    raise ValueError(f"unknown trace {name!r}; choose from {', '.join(TRACES + FAMILIES)}")


TRACES = ("swe-slow", "web-short", "swe+bfcl", "bfcl-v4", "swe")


def _blocks(peak: int, longest: int, frac: float) -> int:
    """GPU blocks for a capacity fraction of the peak, never below the longest session + 1
    block (else that session could never run)."""
    return max(int(peak * frac), longest + 1)


def _capacity(trace, frac: float) -> tuple[int, int]:
    base = SimConfig(preset=PRESET)
    peak = peak_prompt_working_set(trace, base)
    longest = max(base.cost.kv_spec.num_blocks_for(s.total_tokens) for s in trace)
    return _blocks(peak, longest, frac), peak


@functools.cache
def _peak(name: str, seed: int) -> tuple[int, int]:
    """(peak prompt working set, longest session) of a trace in blocks, once per process: the peak
    takes longer to find than most of the trace's simulations."""
    trace = build_trace(name, seed)
    base = SimConfig(preset=PRESET)
    longest = max(base.cost.kv_spec.num_blocks_for(s.total_tokens) for s in trace)
    return peak_prompt_working_set(trace, base), longest


def _run(task: tuple) -> dict:
    name, seed, frac, policy, *size = task  # size: a pool other than the case's (--smooth)
    trace = build_trace(name, seed)
    peak, longest = _peak(name, seed)
    blocks = size[0] if size else _blocks(peak, longest, frac)
    t = time.perf_counter()
    base, params = parse_spec(policy)
    extra = {}
    if base == "hindsight":
        if params:
            raise ValueError(f"{policy!r}: hindsight takes no parameters, got {sorted(params)}")
        r, extra = _hindsight(trace, blocks)
    else:
        config = SimConfig(preset=PRESET, num_gpu_blocks=blocks, policy=base)
        built = make_policy(base, cost=config.cost, **params) if params else None
        r = Simulator(trace, config, policy=built).run()
    row = r.to_dict()
    row.update(trace=name, seed=seed, frac=frac, policy=policy, peak=peak, longest=longest,
               hit_rate=r.hit_rate, wall_s=time.perf_counter() - t, **extra)
    return row


def _hindsight(trace, blocks: int):
    """The offline reference `hindsight` (kvsaga/sim/hindsight.py): belady and oracle-ttl
    from the trace's times and from the admission waits of lru's, saga's, ttl's and the
    default's runs; the least of them, and which run reached it."""
    config = SimConfig(preset=PRESET, num_gpu_blocks=blocks)
    runs = [record(trace, config, p) for p in dict.fromkeys((*BASELINES, DEFAULT_POLICY))]
    ref = best_offline(trace, config, runs)
    return ref.best.result, {"hindsight_from": ref.best.source}


def skipped_traces(traces: list[str], seed: int) -> list[str]:
    """The traces of `traces` whose data is not installed (`build_trace` gives None, e.g.
    bfcl-v4 without the `bfcl-eval` package): `run` skips them, and a tune asked for one
    covers part of the fit set only."""
    return [t for t in traces if build_trace(t, seed) is None]


def run(traces: list[str], fractions: list[float], policies: list[str], seeds: list[int],
        workers: int) -> tuple[list[dict], list[str]]:
    """Every (trace, seed, capacity, policy) simulation; returns the rows and the traces
    skipped (data not installed)."""
    skipped = skipped_traces(traces, seeds[0])
    tasks = [(t, s, f, p) for t in traces if t not in skipped for s in seeds
             for f in fractions for p in policies]
    with worker_pool(workers) as pool:
        rows = list(pool.map(_run, tasks))
    return rows, skipped


def _ratio(a: float, b: float) -> float:
    return a / b if b else (1.0 if a == 0 else math.inf)


Case = tuple  # (trace, seed, capacity share)


def _index(rows: list[dict]) -> dict[tuple, dict]:
    return {(r["trace"], r["seed"], r["frac"], r["policy"]): r for r in rows}


def _order(case: Case) -> tuple:
    t, s, f = case
    names = TRACES + FAMILIES
    return (names.index(t) if t in names else 99, s, f)


def _best_baseline(by: dict, case: Case) -> float:
    """The least recomputed tokens of lru, saga and ttl on `case`; NaN unless all three ran
    there (the best of whichever ran is another yardstick: `--policies graph,lru` judged
    graph against lru alone under the name "best of lru, saga, ttl")."""
    if not all((*case, p) in by for p in BASELINES):
        return math.nan
    return min(by[(*case, p)]["recomputed_tokens"] for p in BASELINES)


def _missing_baselines(by: dict, cases: list[Case]) -> list[str]:
    """The baselines that did not run on some of `cases`, in BASELINES' order."""
    return [p for p in BASELINES if any((*c, p) not in by for c in cases)]


def tables(rows: list[dict], policies: list[str]) -> list[str]:
    """Recomputed tokens per (trace, seed, capacity), with ratios to the best baseline."""
    by = _index(rows)
    keys = sorted({(r["trace"], r["seed"], r["frac"]) for r in rows}, key=_order)
    cols = " | ".join(policies)
    out = [f"| trace | seed | capacity | blocks | lru hit rate | {cols} |",
           "|---|---:|---:|---:|---:|" + "---:|" * len(policies)]
    for case in keys:
        best = _best_baseline(by, case)
        cells = []
        for p in policies:
            r = by.get((*case, p))
            if r is None:
                cells.append("-")
                continue
            x = r["recomputed_tokens"]
            ratio = "n/a" if math.isnan(best) else f"{_ratio(x, best):.2f}x"
            cells.append(f"{x / 1e6:.3f} ({ratio})")
        lru = by.get((*case, "lru"))
        blocks = lru["num_gpu_blocks"] if lru else "-"
        hit = f"{lru['hit_rate']:.3f}" if lru else "-"
        t, s, f = case
        out.append(f"| {t} | {s} | {f:.0%} | {blocks} | {hit} | " + " | ".join(cells) + " |")
    return out


def in_range(rows: list[dict]) -> list[Case]:
    """(trace, seed, capacity) cases whose lru hit rate is in HIT_RANGE, one per distinct
    pool size (capacities floored at the longest session can coincide)."""
    seen, out = set(), []
    for r in sorted(rows, key=lambda r: _order((r["trace"], r["seed"], r["frac"]))):
        key = (r["trace"], r["seed"], r["num_gpu_blocks"])
        if r["policy"] == "lru" and HIT_RANGE[0] <= r["hit_rate"] <= HIT_RANGE[1] \
                and key not in seen:
            seen.add(key)
            out.append((r["trace"], r["seed"], r["frac"]))
    return out


def _label(case: Case) -> str:
    t, s, f = case
    return f"{t} seed {s}, {f:.0%}"


def goals(rows: list[dict], policy: str) -> list[str]:
    """The issue's goals for `policy`, met or missed, on every pressured case."""
    by = _index(rows)
    cases = in_range(rows)
    if not cases or not all((*c, policy) in by for c in cases):
        return [f"- no case with lru hit rate in {HIT_RANGE} ran {policy}: goals not judged."]
    vs_best, vs_ref = [], []
    with_h = sum((*c, "hindsight") in by for c in cases)
    mixed = 0 < with_h < len(cases)  # one yardstick for all cases, or none judged
    for c in cases:
        mine = by[(*c, policy)]["recomputed_tokens"]
        vs_best.append((_ratio(mine, _best_baseline(by, c)), c))
        if mixed:
            continue
        if with_h:  # the best run found: each of these columns is a feasible run
            found = min(by[(*c, p)]["recomputed_tokens"] for p in (*FOUND_FROM, policy)
                        if (*c, p) in by)
            vs_ref.append((_ratio(mine, found), c))
        elif (*c, "belady") in by:
            vs_ref.append((_ratio(mine, by[(*c, "belady")]["recomputed_tokens"]), c))
    ref = REF_FOUND if with_h else "belady (a reference, not a bound)"
    lines = []
    missing = _missing_baselines(by, cases)
    for what, target, got in (("best of lru, saga, ttl", TARGET_BEST, vs_best),
                              (ref, TARGET_BELADY, vs_ref)):
        if not got:
            continue
        if got is vs_best and missing:
            lines.append(f"- `{policy}` <= {target:.2f}x {what}: not judged: "
                         f"{', '.join(missing)} did not run on every pressured case.")
            continue
        worst = max(got)
        ok = sum(x <= target + 1e-12 for x, _ in got)
        verdict = "met" if ok == len(got) else "missed"
        lines.append(f"- `{policy}` <= {target:.2f}x {what}: **{verdict}**: within it on "
                     f"{ok} of {len(got)} cases; worst {worst[0]:.2f}x ({_label(worst[1])}).")
    if mixed:
        lines.append(f"- `{policy}` against a reference: not judged: `hindsight` ran on "
                     f"{with_h} of {len(cases)} pressured cases (one yardstick or none).")
    return lines


def score(rows: list[dict], policy: str) -> tuple[int, float, int] | None:
    """(pressured cases at or below the best baseline, recomputed tokens over them, cases);
    None when the policy or a baseline did not run every pressured case."""
    by = _index(rows)
    cases = in_range(rows)
    if not all((*c, policy) in by for c in cases) or _missing_baselines(by, cases):
        return None
    mine = [by[(*c, policy)]["recomputed_tokens"] for c in cases]
    ok = sum(x <= _best_baseline(by, c) for x, c in zip(mine, cases, strict=True))
    return ok, float(sum(mine)), len(cases)


def rank(rows: list[dict], policy: str) -> tuple[float, int, float] | None:
    """The tune rule's key (module docstring), least first: (worst ratio to the best of lru,
    saga and ttl, pressured cases above 1.0x of it, recomputed tokens over them); None when
    the policy or a baseline did not run every pressured case."""
    by = _index(rows)
    cases = in_range(rows)
    if not cases or not all((*c, policy) in by for c in cases) or _missing_baselines(by, cases):
        return None
    ratios = [_ratio(by[(*c, policy)]["recomputed_tokens"], _best_baseline(by, c))
              for c in cases]
    total = float(sum(by[(*c, policy)]["recomputed_tokens"] for c in cases))
    return max(ratios), sum(x > TARGET_BEST + 1e-12 for x in ratios), total


def _header(command: str, wall_s: float, seeds: list[int], what: str) -> str:
    return (f"`{command}`: {wall_s / 60:.1f} min, Python {platform.python_version()}, preset "
            f"{PRESET}, {what} seeds {', '.join(map(str, seeds))}.")


def _tuned() -> dict | None:
    return json.loads(TUNE_JSON.read_text(encoding="utf-8")) if TUNE_JSON.exists() else None


def markdown(rows: list[dict], skipped: list[str], policies: list[str], command: str,
             wall_s: float, seeds: list[int]) -> str:
    out = [SECTION, "", _header(command, wall_s, seeds, "held-out")]
    tuned = _tuned()
    if tuned is not None:
        traces = ", ".join(dict.fromkeys(tuned["traces"]))
        out.append(f"Tuned (`{tuned['command']}`) on the fit seeds "
                   f"{', '.join(map(str, tuned['seeds']))} (families at "
                   f"{', '.join(map(str, FAMILY_SEEDS))}, held-out traces at "
                   f"{', '.join(map(str, TRACE_SEEDS))}) of {traces}, "
                   f"which picked by the tune rule ({TUNE_RULE}) `{tuned['pick']}` "
                   f"(`DEFAULT_POLICY` = `{DEFAULT_POLICY}`); nothing here was tuned.")
    import policies_tune as T  # imports this module: loaded here, not at the top
    if T.TUNE_SMOOTH_JSON.exists():
        s = json.loads(T.TUNE_SMOOTH_JSON.read_text(encoding="utf-8"))
        out.append(f"Tuned on the smoothed figures (`{s['command']}`, "
                   f"{T.coverage(s['seeds'], s['traces'], s['candidates'], T.ran_fractions(s))}): "
                   f"`{s['pick']}`; {T.default_verdict(s)}.")
    if skipped:
        out.append(f"Skipped (data not installed): {', '.join(skipped)}.")
    out += ["", "Recomputed prompt tokens (millions) and, in brackets, their ratio to the best "
            "of lru, saga and ttl on the same trace and capacity. `belady` and `oracle-ttl` "
            "are offline references, **not lower bounds**: admission depends on what is "
            "resident and they rank by the trace's release times, so an online policy can "
            "beat them (their gap to the exact optimum on tiny traces: \"## Offline "
            "references against the exact optimum\"). `hindsight` is the least of belady's "
            "and oracle-ttl's runs given the admission waits of earlier runs (their own, "
            "lru's, saga's, ttl's and the default's; kvsaga/sim/hindsight.py): each a "
            "feasible run, at most belady and oracle-ttl, not a lower bound (and under the "
            "`workflow` scheduler, which reads a policy's graph, not guaranteed at or above "
            "the exact optimum); the 1.10x goal is judged against the best run found, the "
            "least of lru, saga, ttl, belady, oracle-ttl, hindsight and the policy judged.", ""]
    from policies_verdict import ranking, wins  # it imports this module: here, not on top
    out += tables(rows, policies)
    out += ["", f"Cases under pressure but not thrashing (lru hit rate in {HIT_RANGE}; "
            "capacities that floor to the same pool counted once):", ""]
    out += wins(rows, policies)
    out += ["", *ranking(rows, policies)]
    for label, subset in SEED_SETS:
        mine = [r for r in rows if r["seed"] in subset]
        if mine and len(mine) < len(rows):
            out += ranking(mine, policies, label)
    for p in dict.fromkeys((DEFAULT_POLICY, *CANDIDATES)):
        if p not in policies:
            continue
        what = ("the default policy (`kvsaga.policy.DEFAULT_POLICY` = "
                f"`{p}`)" if p == DEFAULT_POLICY else f"`{p}`")
        out += ["", f"Goals for {what}, on those cases:", ""]
        out += goals(rows, p)
        for label, subset in SEED_SETS:
            mine = [r for r in rows if r["seed"] in subset]
            if mine and len(mine) < len(rows):
                out += [f"- {label}:"] + ["  " + line for line in goals(mine, p)]
    return "\n".join(out) + "\n"


def _save(path: Path, payload: dict) -> None:
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=float), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    p, args, traces, seeds, policies, fractions, command = parse(argv, __doc__)
    if args.reference:
        from policies_reference import REF_SECTION, reference
        if not args.no_write:
            refuse_early(p, RESULTS, REF_SECTION, REF_WRITER)
        text = reference(args.workers, command)
        print(text)
        if not args.no_write:
            write_section(text, RESULTS, REF_WRITER)
        return 0
    if args.regret:
        online = [x for x in policies if x not in OFFLINE]
        from policies_regret import regret_report, regret_smoothed
        if not args.no_write:
            refuse_early(p, RESULTS, REGRET_SECTION, REGRET_WRITER)
        text = (regret_smoothed if args.smooth else regret_report)(
            traces, seeds[0], fractions[0], online, command)
        print(text)
        if not args.no_write:
            write_section(f"{REGRET_SECTION}\n\n" + text, RESULTS, REGRET_WRITER)
        return 0
    if args.tune:
        from policies_tune import tune  # bench/ is on the path when run as a script
        return tune(p, args, traces, seeds, policies, fractions, command)
    flag = "--seeds"
    if args.from_json:  # the seeds rendered are the file's: those are the ones checked
        saved = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
        seeds, flag = saved["seeds"], f"--from-json {args.from_json} (its seeds)"
    if fit := sorted(set(seeds) & set(TUNE_SEEDS)):
        p.error(f"{flag} {','.join(map(str, fit))}: fit seeds (--tune's {TUNE_SEEDS}); "
                "evaluate on others")
    # another fit read the same sessions; the seeds the default policy was kept on are
    # this evaluation's own seen seeds (EVAL_SEEDS among them), labelled seen, so pass
    if error := fit_seed_error(seeds, flag, seen_ok=True):
        p.error(error)
    t = time.perf_counter()
    title = eval_title(seeds, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if not args.no_write:
        refuse_early(p, RESULTS, title)
    if args.from_json:
        rows, skipped, command = saved["rows"], saved["skipped"], saved["command"]
        wall, seeds, policies = saved["wall_s"], saved["seeds"], saved["policies"]
        extra, smooth_s = saved.get("smooth_rows"), saved.get("smooth_s", 0.0)
    else:
        rows, skipped = run(traces, fractions, policies, seeds, args.workers)
        wall, extra, smooth_s = time.perf_counter() - t, None, 0.0
        if args.smooth:
            import policies_smooth as S
            extra, smooth_s = S.run_smooth(rows, S.smooth_policies(policies, False),
                                           args.workers)
    text = markdown(rows, skipped, policies, command, wall, seeds)
    if extra is not None:
        import policies_smooth as S
        text += "\n".join(S.markdown(S.smoothed(rows, extra), policies, smooth_s,
                                     [DEFAULT_POLICY, "graph"])) + "\n"
    print(text)
    if not args.no_write:
        _save(HERE / "plots" / "policies.json",
              {"rows": rows, "skipped": skipped, "command": command, "wall_s": wall,
               "seeds": seeds, "policies": policies, "smooth_rows": extra,
               "smooth_s": smooth_s})
        append_evaluation(text, RESULTS, title)
    return 0


if __name__ == "__main__":
    sys.exit(main())
