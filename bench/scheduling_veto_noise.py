"""The AFS veto's noise floor: how far the default's own two-tenant mix ratios move under
changes that carry no information about the scheduler (null perturbations), and the
calibrated veto rule (`policies_check.afs_noise_veto`) computed from them.

    python bench/scheduling_veto_noise.py run OUT.json --seeds 102,...,109 \
        [--null NAME] [--config fcfs+lru | --policy SPEC] [--defaults JSON] [--workers 2]
    python bench/scheduling_veto_noise.py calibrate BASE.json FCFS.json NULL.json [...]
    python bench/scheduling_veto_noise.py judge BASE.json FCFS.json CAND.json \
        --nulls NULL.json [...]
    python bench/scheduling_veto_noise.py judge-saved tests/bench/afs_noise_s43.json CAND.json
    python bench/scheduling_veto_noise.py save OUT.json BASE.json FCFS.json NULL.json [...] \
        --about TEXT
    python bench/scheduling_veto_noise.py tct BASE.json RUN.json [...]
    python bench/scheduling_veto_noise.py compare OLD_CALIBRATION.json NEW_CALIBRATION.json

`run`: the AFS veto's cases (both mixes of `bench/scheduling_mix.py` on each seed, at their
capacities: 32 cases on the AFS fit seeds 102-109), each run shared and each tenant alone on
half the GPU (`add_tenant_slowdowns`, the veto's denominator), under workflow+graph (or
`--config`), the workflow defaults set to `--defaults` as the veto sets them, and with the
null perturbation `--null` (one of `NULLS`) applied to the shared and the alone runs alike.
`--policy SPEC` runs workflow+SPEC instead (a policy name or a spec such as
`graph[spread=1]`, registered by `policies_check.register`): how a candidate for the
default eviction policy is put to the same calibrated veto as a scheduler candidate.
The JSON it writes is `bench/scheduling_veto_split.py run`'s (`compare` reads it) plus the
null's and the config's names.

`calibrate`: each null run against the unperturbed base, case by case: how many of the 32
ratios rise at two decimals (what the veto, `policies_check.afs_veto`, rejects on), how many
cross the goal each way, and the distribution of the change in log(ratio); every pair of
runs of the same scheduler (base and nulls) under the veto; the calibrated rule's thresholds
(`policies_check.afs_noise_thresholds`) and each null judged, both ways against the base,
with thresholds from the base and the other nulls only.

`judge`: the calibrated rule (`policies_check.afs_noise_veto`) on a candidate's run against
the base, with the thresholds frozen in `policies_check` (`AFS_NOISE_MEAN_LOG`,
`AFS_NOISE_GOAL_LOSS`); `--nulls` recomputes them from the null runs and fails if they are
not the frozen ones (the rule is judged with what was committed, never refitted).
`judge-saved`: the same, with the base, fcfs+lru and null ratios read from a committed
calibration (tests/bench/afs_noise_s43.json, `calibrate`'s runs reduced to their ratios), so
a candidate needs its own run only.
`tct`: each run's mean TCT (all sessions of a case, and each tenant's) against a base
run's, as the geometric mean of the 32 cases' ratios and the largest rise: the cost side of
a candidate that the veto, which reads ratios only, does not see (session 41: null runs
drift it too, so a candidate is read against the nulls' drift).
`save`: that reduction (session 33; sessions 25-32 did it by a script not kept): the base,
fcfs+lru and null runs, checked as `calibrate` checks them, written as one JSON file of each
run's defaults, null, config and sorted (case, ratio) pairs, "about" saying what it is.
`compare`: a newer committed calibration's base against an older one's (`compare_lines`):
the moved ratios, the mean d log ratio and goal cases, the thresholds the old nulls give
around the new base and the old veto on the move (session 43 judged by it whether session
41's calibration could still judge the default).

The goal a case meets (issue 10): afs_max_slowdown_ratio <= 1.5 and below fcfs+lru's on the
same case, both as printed (two decimals); fcfs+lru's ratio is read from the unperturbed
FCFS.json (no workflow default moves it).

The nulls, and why none changes the quality of any scheduling decision:

- "jitter1" .. "jitter4": every session's arrival moved later by a uniform draw in
  [0, 0.5 ms) (`JITTER_S`; a fixed RNG per null, mix and seed). The traces' arrivals are
  Poisson draws at seconds apart and tools last seconds; half a millisecond is below a
  single batch step (2 ms overhead alone), so no scheduler could be judged better or worse
  for it; it only moves which batch step an arrival first meets.
- "slow" / "fast": every step time x (1 + 1e-4) / x (1 - 1e-4), "slow2" / "fast2" and
  "slow3" / "fast3" x (1 +/- 2e-4) and x (1 +/- 3e-4) (the preset's bandwidths and
  FLOP/s divided, its per-step overheads multiplied, as `tenant_share` slices a GPU): a
  0.01-0.03% faster or slower GPU, far inside the cost model's own uncertainty (its efficiencies
  are "assumed" to two digits); every policy and scheduler sees the same scaled model.
- "swap": the two tenants' names exchanged ("a" <-> "b"; session ids kept): a fair share
  is symmetric in its tenants, so this only flips tie-breaks that fall to name or insertion
  order and the per-tenant salts of prefix hashes (tenants never share blocks either way).
  Rows are reported under the original tenant names.

Why (issue 10, session 25): every `--fit` round for many sessions passed the fit and lost
the AFS veto, which rejects a candidate if any of 32 ratios rises at two decimals; the
ratio is a ratio of slowdowns over a few dozen sessions, and one moved step cascades.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import random
import statistics
import sys
from pathlib import Path

import policies_check as pc
from ascii_args import ascii_int, int_arg
from scheduling import PRESET, capacity
from scheduling_mix import MIX_FRACS, MIXES, mix_trace, set_workflow_defaults
from scheduling_veto_split import json_object

from kvsaga.sim.compare import add_tenant_slowdowns
from kvsaga.sim.cost import StepCostModel
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.workers import worker_pool

JITTER_S = 5e-4  # arrivals move later by U[0, JITTER_S)
STEP_EPS = 1e-4  # "slow" / "fast": step times x (1 +/- STEP_EPS)
NULLS = {"jitter1": ("jitter", 1), "jitter2": ("jitter", 2), "jitter3": ("jitter", 3),
         "jitter4": ("jitter", 4), "slow": ("step", 1 + STEP_EPS),
         "fast": ("step", 1 - STEP_EPS), "swap": ("swap", None),
         "slow2": ("step", 1 + 2 * STEP_EPS), "fast2": ("step", 1 - 2 * STEP_EPS),
         "slow3": ("step", 1 + 3 * STEP_EPS), "fast3": ("step", 1 - 3 * STEP_EPS)}
SWAP = {"a": "b", "b": "a"}


def scale_steps(cost: StepCostModel, k: float) -> StepCostModel:
    """`cost` with every step time (compute, memory, links, transfers, overheads) x `k`."""
    if not (isinstance(k, float) and math.isfinite(k) and k > 0):
        raise ValueError(f"a step-time factor must be a finite float > 0, got {k!r}")
    g = cost.gpu
    gpu = dataclasses.replace(g, name=f"{g.name}*{k}", hbm_bw=g.hbm_bw / k,
                              peak_flops=g.peak_flops / k, pcie_bw=g.pcie_bw / k,
                              nvlink_bw=g.nvlink_bw / k)
    return dataclasses.replace(cost, name=f"{cost.name}*{k}", gpu=gpu,
                               step_overhead_s=cost.step_overhead_s * k,
                               allreduce_latency_s=cost.allreduce_latency_s * k)


def perturbed(null: str | None, name: str, seed: int, sessions: list) -> list:
    """The mix's sessions under the null `null` (None: unperturbed)."""
    if null is None:
        return sessions
    kind, arg = NULLS[null]
    if kind == "jitter":
        rng = random.Random(f"{arg}:{name}:{seed}")
        out = [dataclasses.replace(s, arrival_s=s.arrival_s + rng.uniform(0.0, JITTER_S))
               for s in sessions]
        return sorted(out, key=lambda s: (s.arrival_s, s.id))
    if kind == "swap":
        return [dataclasses.replace(s, tenant=SWAP[s.tenant]) for s in sessions]
    return sessions


def run_case(task: tuple) -> dict:
    """One case (mix, seed, capacity) under `config` and the null: its ratio and each
    tenant's shared / alone TCT and slowdown (under the tenants' original names)."""
    name, seed, frac, config, null = task
    sched, policy = config.split("+", 1)
    sessions = perturbed(null, name, seed, mix_trace(name, seed))
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(mix_trace(name, seed), frac, 2),
                    policy=policy, scheduler=sched)
    if null is not None and NULLS[null][0] == "step":
        cfg = dataclasses.replace(cfg, preset=scale_steps(cfg.cost, NULLS[null][1]))
    row = Simulator(sessions, cfg).run().to_dict()
    add_tenant_slowdowns(row, sessions, cfg)
    back = SWAP if null is not None and NULLS[null][0] == "swap" else {}
    return {"mix": name, "seed": seed, "frac": frac, "ratio": row["afs_max_slowdown_ratio"],
            "tenants": {back.get(t, t): {k: e[k] for k in ("tct_mean_s", "tct_alone_s",
                                                           "slowdown")}
                        for t, e in row["tenants"].items()}}


def run_rows(seeds: list[int], config: str, null: str | None, workers: int) -> list[dict]:
    tasks = [(name, seed, frac, config, null) for seed in seeds for name in MIXES
             for frac in MIX_FRACS[name]]
    with worker_pool(workers) as ex:
        return list(ex.map(run_case, tasks))


Key = tuple[str, int, float]


def ratios(rows: list[dict]) -> dict[Key, float]:
    return {(r["mix"], r["seed"], r["frac"]): r["ratio"] for r in rows}


def _name(key: Key) -> str:
    return f"{key[0]} seed {key[1]} {key[2]:.0%}"


def null_stats(base: dict[Key, float], other: dict[Key, float],
               fcfs: dict[Key, float]) -> dict:
    """`other` against `base`, case by case: rises / falls / equal at two decimals, the
    goal's crossings each way, the change in log(ratio) per case."""
    if set(base) != set(other) or set(base) - set(fcfs):
        raise ValueError("the runs do not hold the same cases (or FCFS lacks some)")
    d = [math.log(other[k] / base[k]) for k in sorted(base)]
    up = sum(round(other[k], 2) > round(base[k], 2) for k in base)
    down = sum(round(other[k], 2) < round(base[k], 2) for k in base)
    met0 = {k for k in base if pc.goal_met(base[k], fcfs[k])}
    met1 = {k for k in base if pc.goal_met(other[k], fcfs[k])}
    lost, won = sorted(met0 - met1), sorted(met1 - met0)
    moved = [x for x in d if abs(x) >= pc.AFS_NOISE_MOVED]
    return {"up": up, "down": down, "equal": len(d) - up - down, "lost": lost, "won": won,
            "d": d, "moved": len(moved), "mean": statistics.fmean(d),
            "median": statistics.median(d), "min": min(d), "max": max(d),
            "p10": statistics.quantiles(d, n=10, method="inclusive")[0],
            "p90": statistics.quantiles(d, n=10, method="inclusive")[-1],
            "rms_moved": math.sqrt(statistics.fmean(x * x for x in moved)) if moved else 0.0}


STATS_HEAD = ("| run vs base | ratios moved (d log ratio "
              f"{pc.AFS_NOISE_MOVED:g} or more either way) | higher / lower / equal at 2 "
              "decimals | the old veto | goal met -> missed | missed -> met | d log ratio: "
              "mean / median / p10 / p90 / min / max | rms (moved cases) |")


def stats_row(label: str, s: dict) -> str:
    lost = ", ".join(_name(k) for k in s["lost"]) or "-"
    won = ", ".join(_name(k) for k in s["won"]) or "-"
    return (f"| {label} | {s['moved']} of {len(s['d'])} | {s['up']} / {s['down']} / "
            f"{s['equal']} | {'rejects' if s['up'] else 'passes'} | {len(s['lost'])}: {lost} "
            f"| {len(s['won'])}: {won} | {s['mean']:+.4f} / {s['median']:+.4f} / "
            f"{s['p10']:+.3f} / {s['p90']:+.3f} / {s['min']:+.3f} / {s['max']:+.3f} | "
            f"{s['rms_moved']:.3f} |")


def calibrate_lines(base: dict[Key, float], fcfs: dict[Key, float],
                    nulls: dict[str, dict[Key, float]]) -> list[str]:
    """`calibrate`'s tables (module docstring)."""
    if len(nulls) < 2:
        raise ValueError("calibrate needs two or more null runs")
    out = [f"Null runs against the unperturbed base ({len(base)} cases; goal: ratio <= "
           f"{pc.AFS_GOAL} and below fcfs+lru's, at two decimals):", "", STATS_HEAD,
           "|---|---|---|---|---|---|---|---|"]
    stats = {n: null_stats(base, r, fcfs) for n, r in nulls.items()}
    out += [stats_row(n, s) for n, s in stats.items()]
    rejected = sum(s["up"] > 0 for s in stats.values())
    out += ["", f"The old veto (any ratio higher at two decimals) rejects {rejected} of "
            f"{len(stats)} null runs; ratios higher: "
            + ", ".join(f"{n} {s['up']}" for n, s in stats.items()) + "."]
    runs = {"base": base, **nulls}
    pairs = list(itertools.permutations(runs, 2))
    ups = [null_stats(runs[a], runs[b], fcfs)["up"] for a, b in pairs]
    met = {n: sum(pc.goal_met(r[k], fcfs[k]) for k in r) for n, r in runs.items()}
    out += [f"Every ordered pair of the {len(runs)} runs of one scheduler (base and nulls, "
            f"{len(pairs)} pairs) under the old veto: rejected {sum(u > 0 for u in ups)}; "
            f"ratios higher per pair: min {min(ups)}, median {statistics.median(ups):g}, max "
            f"{max(ups)}. Cases meeting the goal per run: "
            + ", ".join(f"{n} {m}" for n, m in met.items()) + "."]
    t_mean, t_loss, parts = pc.afs_noise_thresholds(base, nulls, fcfs)
    out += ["", f"The calibrated rule's thresholds from these runs: mean d log ratio at most "
            f"{t_mean:.4f} ({parts}); goal cases lost (net) at most {t_loss}."]
    loo = []
    for n in nulls:
        tm, tl, _ = pc.afs_noise_thresholds(base, {m: r for m, r in nulls.items() if m != n},
                                            fcfs)
        ways = [pc.afs_noise_veto(x, y, fcfs, mean_log_max=tm, goal_loss_max=tl)[0]
                for x, y in ((base, nulls[n]), (nulls[n], base))]
        loo.append(f"{n} against base {'passes' if ways[0] else 'rejected'}, base against "
                   f"{n} {'passes' if ways[1] else 'rejected'} (thresholds {tm:.4f} / {tl})")
    out.append("Each null judged by the rule with thresholds from the base and the other nulls "
               "only, both ways: " + "; ".join(loo) + ".")
    return out


def saved_run(run: dict) -> dict:
    """A `run` output as a calibration file keeps it: its defaults, null, config and
    sorted (case, ratio) pairs (`judge-saved` and `policies_check.saved_calibration` read
    them back)."""
    return {"defaults": run.get("defaults"), "null": run.get("null"),
            "config": run.get("config"),
            "ratios": [[list(k), x] for k, x in sorted(ratios(run["rows"]).items())]}


def mean_tct(row: dict) -> float:
    """A case's mean TCT over all its sessions: each tenant's mean weighted by its sessions
    (`MIXES`)."""
    n = {t: k for t, _, _, k in MIXES[row["mix"]]}
    return (sum(n[t] * v["tct_mean_s"] for t, v in row["tenants"].items())
            / sum(n[t] for t in row["tenants"]))


def tct_lines(base: dict, runs: dict[str, dict]) -> list[str]:
    """`tct`: per run against `base` (the same cases), the geometric mean over the cases of
    the mean TCT's ratio (all sessions, then each tenant's) and the case that rose most."""
    def key(r):
        return r["mix"], r["seed"], r["frac"]
    b = {key(r): r for r in base["rows"]}
    out = ["| run vs base | mean TCT, geometric mean of the cases' ratios | largest rise "
           "(case) | tenant a | tenant b |", "|---|---|---|---|---|"]
    for label, run in runs.items():
        rows = sorted(run["rows"], key=key)
        if sorted(b) != [key(r) for r in rows]:
            raise ValueError(f"{label} has other cases than the base")
        q = [mean_tct(r) / mean_tct(b[key(r)]) for r in rows]
        per = {t: [r["tenants"][t]["tct_mean_s"] / b[key(r)]["tenants"][t]["tct_mean_s"]
                   for r in rows] for t in ("a", "b")}
        worst = max(range(len(q)), key=q.__getitem__)
        out.append(f"| {label} | x{_geomean(q):.4f} | x{q[worst]:.3f} "
                   f"({_name(key(rows[worst]))}) | x{_geomean(per['a']):.4f} | "
                   f"x{_geomean(per['b']):.4f} |")
    return out


def _geomean(xs: list[float]) -> float:
    return math.exp(sum(math.log(x) for x in xs) / len(xs))


def load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def compare_lines(old_path: str, new_path: str) -> list[str]:
    """How the base of one committed calibration (`new_path`, e.g.
    tests/bench/afs_noise_s43.json) stands against an older one's (`old_path`): whether
    fcfs+lru's ratios are the same, which of the base's ratios moved (|d log| >=
    `AFS_NOISE_MOVED`), the mean d log ratio and goal cases (`policies_check.goal_met`),
    the thresholds the old nulls give around the new base, and the old calibration's veto
    (its own thresholds) on the move. Why: a recalibration is only needed when the old one
    cannot judge the new default; this says so from committed files alone.

    Raises:
        ValueError: the two calibrations' cases differ.
    """
    ob, of, onulls, _ = pc.saved_calibration(old_path)
    nb, nf, _, _ = pc.saved_calibration(new_path)
    if set(ob) != set(nb) or set(of) != set(nf):
        raise ValueError(f"{old_path} and {new_path} hold different cases")
    old, new = Path(old_path).name, Path(new_path).name
    d = {k: math.log(nb[k] / ob[k]) for k in ob}
    moved = sorted(k for k, x in d.items() if abs(x) >= pc.AFS_NOISE_MOVED)
    higher = sum(round(nb[k], 2) > round(ob[k], 2) for k in ob)
    lower = sum(round(nb[k], 2) < round(ob[k], 2) for k in ob)
    goals = lambda r, f: sum(pc.goal_met(r[k], f[k]) for k in r)  # noqa: E731
    lines = [f"old calibration: {old}; new: {new}",
             f"fcfs+lru's {len(of)} ratios equal the old ones: {nf == of}",
             f"new base against old base: {len(moved)} of {len(d)} ratios moved "
             f"(|d log| >= {pc.AFS_NOISE_MOVED:g}); mean d log ratio "
             f"{sum(d.values()) / len(d):+.4f}; goal cases {goals(ob, of)} -> {goals(nb, nf)}",
             f"higher / lower at 2 decimals: {higher} / {lower}"]
    lines += [f"  {_name(k)}: {ob[k]:.4f} -> {nb[k]:.4f} ({d[k]:+.4f})" for k in moved]
    t_mean, t_loss, _ = pc.afs_noise_thresholds(nb, onulls, nf)
    lines.append(f"the old nulls around the new base give thresholds {t_mean:.4f} / {t_loss}")
    o_mean, o_loss, _ = pc.afs_noise_thresholds(ob, onulls, of)
    _, verdict = pc.afs_noise_veto(ob, nb, nf, mean_log_max=round(o_mean, 4),
                                   goal_loss_max=o_loss)
    lines.append(f"new base judged against old base under the old thresholds "
                 f"{o_mean:.4f} / {o_loss}: " + "; ".join(verdict))
    lost = [k for k in ob if pc.goal_met(ob[k], of[k]) and not pc.goal_met(nb[k], nf[k])]
    won = [k for k in ob if not pc.goal_met(ob[k], of[k]) and pc.goal_met(nb[k], nf[k])]
    named = lambda ks: ", ".join(_name(k) for k in sorted(ks)) or "-"  # noqa: E731
    lines.append(f"goal met -> missed: {len(lost)}: {named(lost)}; missed -> met: {len(won)}: "
                 f"{named(won)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the veto's cases (module docstring)")
    r.add_argument("out", help="the JSON file to write")
    r.add_argument("--seeds", required=True, help="comma-separated")
    r.add_argument("--null", choices=sorted(NULLS), default=None,
                   help="the null perturbation applied to the shared and alone runs (default: "
                   "none)")
    r.add_argument("--config", default="workflow+graph", choices=("workflow+graph", "fcfs+lru"),
                   help="scheduler+policy of the runs")
    r.add_argument("--policy", default=None,
                   help="run workflow+POLICY (a name or spec, e.g. 'graph[spread=1]'): a "
                   "default-policy candidate under the veto")
    r.add_argument("--defaults", type=json_object, default=None,
                   help="workflow defaults for the run, a JSON object")
    r.add_argument("--workers", type=int_arg, default=1, help="simulations run in parallel")
    c = sub.add_parser("calibrate", help="the nulls against the base (module docstring)")
    c.add_argument("base", help="the base run's JSON (`run` of workflow+graph, no null)")
    c.add_argument("fcfs", help="the fcfs+lru run's JSON (`run --config fcfs+lru`)")
    c.add_argument("nulls", nargs="+", help="the null runs' JSON files (`run --null NAME`)")
    j = sub.add_parser("judge", help="the calibrated rule on a candidate")
    j.add_argument("base", help="the base run's JSON (`run` of workflow+graph, no null)")
    j.add_argument("fcfs", help="the fcfs+lru run's JSON (`run --config fcfs+lru`)")
    j.add_argument("cand", help="the candidate run's JSON")
    j.add_argument("--nulls", nargs="+", required=True,
                   help="the null runs' JSON files (`run --null NAME`): the thresholds they "
                   "give must be the frozen ones")
    js = sub.add_parser("judge-saved", help="judge against a committed calibration")
    js.add_argument("calibration", help="e.g. tests/bench/afs_noise_s43.json")
    sv = sub.add_parser("save", help="reduce the runs to a calibration file (module docstring)")
    sv.add_argument("out", help="the calibration file to write")
    sv.add_argument("base", help="the base run's JSON (`run` of workflow+graph, no null)")
    sv.add_argument("fcfs", help="the fcfs+lru run's JSON (`run --config fcfs+lru`)")
    sv.add_argument("nulls", nargs="+", help="the null runs' JSON files (`run --null NAME`)")
    sv.add_argument("--about", required=True, help="what the calibration is, in words")
    js.add_argument("cand", help="the candidate run's JSON")
    t = sub.add_parser("tct", help="the runs' mean TCT against a base run's, case by case")
    t.add_argument("base", help="a `run` JSON (e.g. the default before the candidate)")
    t.add_argument("runs", nargs="+", help="`run` JSONs of the same cases (candidates, nulls)")
    cm = sub.add_parser("compare", help="one committed calibration's base against an older "
                        "one's (`compare_lines`)")
    cm.add_argument("old", help="the older calibration, e.g. tests/bench/afs_noise_s41.json")
    cm.add_argument("new", help="the newer calibration, e.g. tests/bench/afs_noise_s43.json")
    a = ap.parse_args(argv)
    if a.cmd == "compare":
        try:
            print("\n".join(compare_lines(a.old, a.new)))
        except (ValueError, OSError, KeyError) as e:
            ap.error(str(e))
        return 0
    if a.cmd == "tct":
        try:
            print("\n".join(tct_lines(load(a.base), {
                p: load(p) for p in a.runs})))
        except ValueError as e:
            ap.error(str(e))
        return 0
    if a.cmd == "run":
        if a.workers < 1:
            ap.error(f"--workers must be >= 1, got {a.workers}")
        if a.defaults:
            try:
                set_workflow_defaults(a.defaults)
            except (ValueError, TypeError) as e:
                ap.error(str(e))
        if a.policy is not None:
            if a.config != "workflow+graph":
                ap.error("--policy and --config fcfs+lru exclude each other")
            try:
                a.config = "workflow+" + pc.register(a.policy)
            except (ValueError, TypeError) as e:
                ap.error(str(e))
        rows = run_rows([ascii_int(s) for s in a.seeds.split(",")], a.config, a.null, a.workers)
        with open(a.out, "w") as f:
            json.dump({"defaults": a.defaults, "null": a.null, "config": a.config,
                       "rows": rows}, f, indent=1)
        return 0
    if a.cmd == "judge-saved":
        runs = load(a.calibration)["runs"]
        saved = {n: {tuple(k): x for k, x in r["ratios"]} for n, r in runs.items()}
        return judge_lines(ap, saved["base"], saved["fcfs"],
                           {runs[n]["null"]: r for n, r in saved.items()
                            if n.startswith("null_")}, load(a.cand))
    base, fcfs = load(a.base), load(a.fcfs)
    if base.get("null") or base.get("defaults") or fcfs.get("config") != "fcfs+lru":
        ap.error("BASE must be an unperturbed default run and FCFS a fcfs+lru run")
    nulls = {}
    for path in a.nulls:
        d = load(path)
        if not d.get("null") or d.get("defaults"):
            ap.error(f"{path} is not a null run of the default")
        nulls[d["null"]] = ratios(d["rows"])
    b, f = ratios(base["rows"]), ratios(fcfs["rows"])
    if a.cmd == "calibrate":
        try:
            print("\n".join(calibrate_lines(b, f, nulls)))
        except ValueError as e:
            ap.error(str(e))
        return 0
    if a.cmd == "save":
        try:
            for r in nulls.values():
                null_stats(b, r, f)  # the same cases, fcfs+lru's among them
        except ValueError as e:
            ap.error(str(e))
        named = {"base": base, "fcfs": fcfs,
                 **{f"null_{load(p)['null']}": load(p) for p in a.nulls}}
        if len(named) != 2 + len(a.nulls):
            ap.error("two null runs have the same null")
        with open(a.out, "w") as out:
            json.dump({"about": a.about, "runs": {n: saved_run(d) for n, d in named.items()}},
                      out, separators=(",", ":"))
        print(f"wrote {len(named)} runs ({len(b)} cases each) to {a.out}")
        return 0
    return judge_lines(ap, b, f, nulls, load(a.cand))


def judge_lines(ap: argparse.ArgumentParser, b: dict, f: dict, nulls: dict, cand: dict) -> int:
    """`judge`'s verdict: the nulls must give the frozen thresholds; then the candidate's
    moves against the base and the calibrated rule. 0 if it passes, 1 if rejected."""
    try:
        tm, tl, _ = pc.afs_noise_thresholds(b, nulls, f)
    except ValueError as e:
        ap.error(str(e))
    if (round(tm, 4), tl) != (pc.AFS_NOISE_MEAN_LOG, pc.AFS_NOISE_GOAL_LOSS):
        ap.error(f"the nulls give thresholds {tm:.4f} / {tl}, not the frozen "
                 f"{pc.AFS_NOISE_MEAN_LOG} / {pc.AFS_NOISE_GOAL_LOSS} (z {pc.AFS_NOISE_Z})")
    s = null_stats(b, ratios(cand["rows"]), f)
    label = json.dumps(cand["defaults"]) if cand.get("defaults") else cand.get("config", "-")
    print(STATS_HEAD + "\n|---|---|---|---|---|---|---|---|\n" + stats_row(label, s))
    ok, lines = pc.afs_noise_veto(b, ratios(cand["rows"]), f)
    print("\n".join(lines))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
