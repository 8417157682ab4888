"""The multi-tenant part of bench/scheduling.py: the two tenant mixes, their traces, and the
Agent Fair Share lines and per-tenant table of the report (split from bench/scheduling.py,
which runs them unless `--no-mix`).

Two mixes, each two tenants on one GPU, each tenant's slowdown against its own trace alone
on half the GPU under the same scheduler and policy (`afs_max_slowdown_ratio`: largest over
smallest):

- "mix": tenant a runs swe sessions, tenant b web sessions, 12 each at 2x the families'
  rates. Different families: the tenants' floors (solo TCT over TCT alone) differ, and
  in the shared run the mix hardly contends (see the report's AFS lines).
- "noisy" (a noisy neighbour), declared before any workflow run on it: both tenants run web
  sessions (one family, so both tenants' floors are alike and the ratio measures the
  scheduler, not the workloads); tenant a arrives at 4x the family's rate (32 sessions),
  tenant b at 1x (8 sessions), over the same span. At 50% and 25% of the mix's peak working
  set a alone on half the GPU thrashes while b alone on half fits: sharing first come first
  served, a's sessions crowd b's out. Reported on seeds `NOISY_SEEDS`, which no scheduler
  or policy fit read (seed 2, also `MIX_SEED`, is a seed of the cluster router fit and the
  vLLM gate fit, bench/fit_seeds.py: neither fits what this mix judges).

`--report --seeds` (fresh seeds) refuses every seed of bench/fit_seeds.py; with
`--fit-seeds` (a diagnosis: RESULTS records such runs on the AFS fit seeds) it takes only
those seeds and prints "fit seeds, not held out" first.
"""

from __future__ import annotations

import dataclasses

from ascii_args import ascii_int, int_arg
from fit_seeds import AFS_FIT_SEEDS, diagnosis_header, fit_seed_error
from scheduling import DEFAULT, PRESET, _label, trace

from kvsaga.sim.metrics import tenant_key
from kvsaga.sim.simulator import SimConfig, simulate

MIX_SEED = 2
MIX_LOAD = 2.0  # at 1x the mix stays under its capacity floor: no pressure at any capacity
# Per mix: (tenant, family, load x the family's rate, sessions) per tenant.
MIXES = {
    "mix": (("a", "swe", MIX_LOAD, 12), ("b", "web", MIX_LOAD, 12)),
    "noisy": (("a", "web", 4.0, 32), ("b", "web", 1.0, 8)),
}
MIX_FRACS = {"mix": (1.0, 0.5), "noisy": (0.5, 0.25)}
NOISY_SEEDS = (2, 7, 8)
# The AFS probe (mix only): the default with tenant a (swe, the higher slowdown) weighted 4x
# in Agent Fair Share, i.e. admitted ahead of b; it shows how far admission order moves the
# ratio.
AFS_PROBE = {"tenant_weights": {"a": 4.0}}
# Agent Fair Share of compute is on by default since session 13 (`fit_share`'s pick,
# `kvsaga.scheduler.fair_share.SHARE_STEP_TOKENS`): the mixes also run the default with it
# off, the arm it is judged against.
COMPUTE_SHARE = {"share_step_tokens": 0}


def mix_trace(name: str, seed: int):
    """The mix's tenants, each running its own family's sessions, interleaved by arrival."""
    out = []
    for tenant, fam, load, n in MIXES[name]:
        for s in trace(fam, seed, load, sessions=n):
            out.append(dataclasses.replace(s, id=f"{tenant}-{s.id}", tenant=tenant))
    return sorted(out, key=lambda s: (s.arrival_s, s.id))


def mix_tasks(configs, mix_seed: int = MIX_SEED,
              noisy_seeds: tuple[int, ...] = NOISY_SEEDS) -> list[tuple]:
    """Every mix's runs: `configs` (scheduler, policy) at its capacities, "mix" on
    `mix_seed` with the AFS probe, "noisy" on `noisy_seeds`."""
    default = tuple(DEFAULT.split("+"))
    tasks = [("mix", mix_seed, MIX_LOAD, f, s, p, None) for f in MIX_FRACS["mix"]
             for s, p in configs]
    tasks += [("mix", mix_seed, MIX_LOAD, f, *default, AFS_PROBE) for f in MIX_FRACS["mix"]]
    tasks += [("mix", mix_seed, MIX_LOAD, f, *default, COMPUTE_SHARE) for f in MIX_FRACS["mix"]]
    tasks += [("noisy", seed, 1.0, f, s, p, params) for seed in noisy_seeds
              for f in MIX_FRACS["noisy"]
              for s, p, params in (("fcfs", "lru", None), (*default, None),
                                   (*default, COMPUTE_SHARE))]
    return tasks


def tenant_solo(name: str, seed: int) -> dict[str, float]:
    """Mean solo time per tenant of the mix: each session's least TCT under any schedule,
    bench/scheduling_bound.py's fact 1 (its prefills in the cheapest chunking with every
    token it could hit cached, its decode steps, its tool pauses), so no scheduler, whatever
    its order or memory, finishes a tenant's tasks sooner: a strict floor. Until session 48
    the floor was the unloaded TCT (`kvsaga.sim.metrics.unloaded_tct`), which fixes the
    chunking and hits no shared prefix, so a schedule could beat it slightly (review s48,
    bench finding 6) and a "strict" verdict within ~0.2% of 1.5 could be wrong."""
    from scheduling_bound import session_needs
    cfg = SimConfig(preset=PRESET)
    sessions = mix_trace(name, seed)
    out = {}
    for tenant, *_ in MIXES[name]:
        xs = [session_needs(s, cfg.cost, cfg.max_num_batched_tokens).solo_s for s in sessions
              if s.tenant == tenant]
        out[tenant] = sum(xs) / len(xs)
    return out


def add_whole_gpu(row: dict, sessions, config: SimConfig) -> None:
    """Add each tenant's mean TCT alone on the whole GPU (`tct_whole_s`: its sessions only,
    at the mix's KV capacity, under the same scheduler, policy and parameters) to
    `row["tenants"]`: what the tenant gets when the other is absent. Its gap to the shared
    run is what the other tenant costs it; its gap to the solo time (`tenant_solo`) is the
    tenant's own sessions contending with each other, which no order between tenants
    removes."""
    for tenant, entry in row["tenants"].items():
        own = [s for s in sessions if tenant_key(s.tenant) == tenant]
        entry["tct_whole_s"] = simulate(own, config).tct_mean_s


def slowdown_floors(r: dict, solo: dict[str, float], *,
                    whole: bool = False) -> tuple[dict[str, float], float]:
    """Each tenant's slowdown floor on row `r` and the lowest afs_max_slowdown_ratio
    reachable without slowing a tenant down: the highest floor over the smallest slowdown
    (which cannot rise), and never below 1, as the ratio (largest slowdown over smallest)
    never is. The floor is the tenant's solo time (`tenant_solo`) over its TCT alone on half
    the GPU (no order of admission or compute finishes its tasks sooner: a strict bound), or,
    with `whole`, its TCT alone on the whole GPU over the same (`add_whole_gpu`: what the
    scheduler gives the tenant with the other absent; not strict, but the solo floor also
    assumes away the tenant's own sessions' contention)."""
    ten = r["tenants"]
    floors = {t: (v["tct_whole_s"] if whole else solo[t]) / v["tct_alone_s"]
              for t, v in ten.items()}
    return floors, max(1.0, max(floors.values()) / min(v["slowdown"] for v in ten.values()))


def afs_floor(r: dict, solo: dict[str, float]) -> str:
    """`slowdown_floors` of row `r`, in words, with what 1.5 would take and, where the floors
    rule 1.5 out, that it would take slowing the less slowed tenant down."""
    ten = r["tenants"]
    floors, low = slowdown_floors(r, solo)
    # <= 1.5 with the highest floor reached: the least slowed tenant must slow to floor / 1.5
    top = max(floors.values())
    fast = min(ten, key=lambda t: ten[t]["slowdown"])
    need = top / 1.5 * ten[fast]["tct_alone_s"]
    out = (f"at best {low:.2f} without slowing a tenant (slowdown floors, solo TCT / "
           f"alone: " + ", ".join(f"{t} {solo[t]:.1f} s / {ten[t]['tct_alone_s']:.1f} s "
                                  f"= {f:.2f}" for t, f in floors.items()) + "); 1.5 would "
           f"need {fast}'s mean TCT >= {need:.1f} s (now {ten[fast]['tct_mean_s']:.1f} s) even "
           f"with every other tenant at its floor")
    wlow = None  # rows saved before `add_whole_gpu` lack the whole-GPU figures
    if all("tct_whole_s" in v for v in ten.values()):
        wfloors, wlow = slowdown_floors(r, solo, whole=True)
        wtop = max(wfloors.values())
        out += ("; with each tenant at its TCT alone on the whole GPU (" + ", ".join(
            f"{t} {v['tct_whole_s']:.1f} s" for t, v in ten.items()) + f"), at best "
            f"{wlow:.2f}, and 1.5 would need {fast}'s mean TCT >= "
            f"{wtop / 1.5 * ten[fast]['tct_alone_s']:.1f} s")
    return out + f": {_verdict(low, wlow)}"


def _verdict(low: float, wlow: float | None) -> str:
    """Whether 1.5 takes slowing a tenant down, from the lowest ratios reachable without it
    by the solo floors (`low`, strict) and the whole-GPU ones (`wlow`; None: absent)."""
    if low > 1.5:
        return "1.5 only by slowing a tenant (strict)"
    if wlow is not None and wlow > 1.5:
        return "1.5 only by slowing a tenant, unless one beats its TCT alone on the whole GPU"
    return "1.5 within the floors"


def _slowdowns(r: dict) -> str:
    return ", ".join(f"{t} {v['slowdown']:.2f}" for t, v in r["tenants"].items())


def afs_lines(rows: list[dict], mix_seed: int = MIX_SEED,
              noisy_seeds: tuple[int, ...] = NOISY_SEEDS) -> list[str]:
    """The goals lines of both mixes: "mix" per capacity (fcfs+lru, the default, the probe)
    with the floor without slowing a tenant (the floors of `mix_seed`, the rows' seed);
    "noisy" per capacity and seed of `noisy_seeds`, fcfs+lru vs the default."""
    lines = []
    mix = [r for r in rows if r["family"] == "mix"]
    solo = tenant_solo("mix", mix_seed) if mix else {}
    for r in mix:
        label = _label(r)
        if label not in ("fcfs+lru", DEFAULT) and not r.get("params"):
            continue
        line = (f"- Two-tenant mix at {r['frac']:.0%}, {label}: afs_max_slowdown_ratio "
                f"{r['afs_max_slowdown_ratio']:.2f} (slowdowns {_slowdowns(r)})")
        if label == DEFAULT:
            line += (f"; {afs_floor(r, solo)}; admission wait {r['admission_wait_s']:.1f} s "
                     f"a session")
        lines.append(line)
    noisy = [r for r in rows if r["family"] == "noisy"]
    sched, policy = DEFAULT.split("+")
    shared = _label({"scheduler": sched, "policy": policy, "params": COMPUTE_SHARE})
    for frac in MIX_FRACS["noisy"]:
        at = [r for r in noisy if r["frac"] == frac]
        for label in (DEFAULT, shared):
            if any(_label(r) == label for r in at):
                lines.append(_noisy_line(at, frac, label, noisy_seeds, noisy))
    return lines


def _run_key(r: dict) -> tuple:
    """A row's run: (mix, seed, arm, capacity in blocks). `scheduling.capacity` floors a
    capacity at what the longest sessions need, so two capacities of a mix (the noisy mix's
    50% and 25% most often) can be one simulation; rows without `capacity_blocks` stand in
    with their fraction."""
    return r["family"], r["seed"], _label(r), r.get("capacity_blocks", r["frac"])


def _same_run_as(r: dict, rows: list[dict]) -> dict | None:
    """The row of `rows` at a larger capacity that is the same run as `r` (None: none)."""
    return next((o for o in rows if o["frac"] > r["frac"] and _run_key(o) == _run_key(r)),
                None)


def goal_runs(rows: list[dict], label: str = DEFAULT) -> list[tuple[str, bool]]:
    """Issue 10's AFS goal (`noisy_goal_met`: <= 1.5 and below fcfs+lru's at the same seed
    and capacity) for arm `label`, once per distinct run of both mixes: a capacity floored
    to a larger one's run is that run, counted once (as the fit's `p95_misses` counts a run
    shared by two fit points once; review s48, bench finding 4). Each run's name (mix, seed,
    its largest capacity) and whether it met the goal, largest capacity first."""
    out: dict[tuple, tuple[str, bool]] = {}
    for w in sorted((r for r in rows if r["family"] in MIXES and _label(r) == label),
                    key=lambda r: -r["frac"]):
        f = next((r for r in rows if _label(r) == "fcfs+lru" and r["family"] == w["family"]
                  and r["seed"] == w["seed"] and r["frac"] == w["frac"]), None)
        if f is not None and _run_key(w) not in out:
            out[_run_key(w)] = (f"{w['family']} {w['seed']} {w['frac']:.0%}", noisy_goal_met(
                w["afs_max_slowdown_ratio"], f["afs_max_slowdown_ratio"]))
    return list(out.values())


def goal_count_line(rows: list[dict], label: str = DEFAULT) -> str:
    """`goal_runs` in one line: how many distinct runs met the AFS goal, and which."""
    runs = goal_runs(rows, label)
    met = [name for name, ok in runs if ok]
    return (f"- Agent Fair Share goal (<= 1.5 and below fcfs+lru's, unrounded) on {label}, "
            f"per distinct run (a capacity floored to a larger one's run is counted once): "
            f"met at {len(met)} of {len(runs)}" + (f" ({', '.join(met)})" if met else ""))


NOISY_GOAL = 1.5  # issue 10's goal: afs_max_slowdown_ratio <= 1.5 and below fcfs+lru's


def noisy_goal_met(ratio: float, fcfs_ratio: float) -> bool:
    """The noisy-neighbour goal on one seed, on the unrounded ratios: `ratio` at most
    NOISY_GOAL and below fcfs+lru's `fcfs_ratio`. (The calibrated AFS veto's goal count,
    bench/policies_check.py `goal_met`, rounds to two decimals first, on purpose: it is a
    noise guard whose frozen calibration counts that way. The two can differ on a ratio
    within 0.005 of 1.5, or of fcfs+lru's; `_goal_ratio` prints such a ratio to 3 decimals.)"""
    return ratio <= NOISY_GOAL and ratio < fcfs_ratio


def _goal_ratio(x: float, other: float) -> str:
    """A ratio as the goal line prints it: two decimals, or three where two would hide
    which side of the goal it is on (within 0.005 of NOISY_GOAL, or printed equal to the
    `other` it is compared with while not equal to it)."""
    close = abs(x - NOISY_GOAL) < 0.005 or (x != other and f"{x:.2f}" == f"{other:.2f}")
    return f"{x:.3f}" if close else f"{x:.2f}"


def _noisy_line(at: list[dict], frac: float, label: str, seeds: tuple[int, ...],
                others: list[dict] | None = None) -> str:
    """The noisy-neighbour goal at one capacity for the arm `label`, per seed of `seeds`
    against fcfs+lru (`noisy_goal_met`, unrounded), with each tenant's floor; a seed whose
    run here is the same as at a larger capacity of `others` (`_same_run_as`: the capacity
    floored) is marked so, its figures repeated, and counted once by `goal_runs`."""
    per = []
    met = True
    for seed in seeds:
        f = next(r for r in at if r["seed"] == seed and _label(r) == "fcfs+lru")
        w = next(r for r in at if r["seed"] == seed and _label(r) == label)
        fr, wr = f["afs_max_slowdown_ratio"], w["afs_max_slowdown_ratio"]
        met = met and noisy_goal_met(wr, fr)
        solo = tenant_solo("noisy", seed)
        floors, low = slowdown_floors(w, solo)
        wlow = (slowdown_floors(w, solo, whole=True)[1]
                if all("tct_whole_s" in v for v in w["tenants"].values()) else None)
        behind = [t for t, v in w["tenants"].items() if v["slowdown"] > 1]
        same = _same_run_as(w, others or at)
        seen = ("" if same is None else f" ({w['capacity_blocks']} blocks: the same run as "
                f"at {same['frac']:.0%}, counted once)")
        per.append(f"seed {seed}{seen}: fcfs+lru {_goal_ratio(fr, wr)} ({_slowdowns(f)})"
                   f", {label} {_goal_ratio(wr, fr)} ({_slowdowns(w)}; "
                   f"floors " + ", ".join(f"{t} {v:.2f}" for t, v in floors.items())
                   + f"; at best {low:.2f} without slowing a tenant"
                   + ("" if wlow is None else f", {wlow:.2f} by the whole-GPU floors")
                   + f": {_verdict(low, wlow)}"
                   + (f"; slower than alone on half the GPU: {', '.join(behind)}" if behind
                      else "") + ")")
    return (f"- Noisy neighbour at {frac:.0%}, {label} (goal <= 1.5 and below fcfs+lru's, "
            f"judged on the unrounded ratios (3 decimals where 2 would hide the side); a "
            f"tenant's floor: its solo TCT / its TCT alone on half the GPU): "
            f"{'met' if met else 'missed'}; " + "; ".join(per))


def tenant_table(rows: list[dict]) -> list[str]:
    """Per tenant of every mix row: TCT mean, TCT alone on half the GPU, slowdown."""
    out = []
    mix_seeds = {r["seed"] for r in rows if r["family"] == "mix"}
    for r in rows:
        if r["family"] not in MIXES:
            continue
        seed = f" seed {r['seed']}" if r["family"] == "noisy" or len(mix_seeds) > 1 else ""
        out.append(f"- {r['family']}{seed} {r['frac']:.0%} {_label(r)}: " + "; ".join(
            f"{t}: {v['tct_mean_s']:.1f} / {v['tct_alone_s']:.1f} / {v['slowdown']:.2f} / "
            f"{v.get('admission_wait_s', 0.0):.1f}" for t, v in r["tenants"].items())
            + f"; afs_max_slowdown_ratio {r['afs_max_slowdown_ratio']:.2f}")
    if out:
        out = ["Tenant mixes, per tenant (TCT mean s / alone on half the GPU s / slowdown / "
               "admission wait s a session):",
               "", *out, ""]
    return out


FIT_SEEDS = AFS_FIT_SEEDS  # the AFS fit seeds of both mixes, 102-109 (never reported)
# Session 13's arms: off, and share_step_tokens 64 / 128 / 256 / 512 with the lags of
# session 12's grid that ever differed there (8192; 32768, which matched 131072 at every
# point); the lag 0 arm (2842931's rule) and 2048 lost to both at every step size.
SHARE_GRID = (0, 64, 128, 256, 512)  # share_step_tokens tried (0: compute share off)
LAG_GRID = (8192, 32768)  # share_lag_tokens tried with each share_step_tokens above 0
FIT_ARMS = ((0, 0),) + tuple((n, lag) for n in SHARE_GRID if n for lag in LAG_GRID)
# The rule (written down before this session's fit ran): a default arm may cost at most
# TCT_SLACK of mean TCT against off at any fit point; among those, the lowest mean ratio.
TCT_SLACK = 0.03


def _arm(arm: tuple[int, int]) -> str:
    return f"share_step_tokens {arm[0]} share_lag_tokens {arm[1]}"


def _fit_point(task: tuple) -> tuple[dict, dict[str, float]]:
    """One fit point (mix, seed, capacity) under each `FIT_ARMS` pair (share_step_tokens,
    share_lag_tokens): per pair, the run's mean TCT and ratio; each tenant's TCT alone on
    half the GPU is simulated once (a tenant alone has no other tenant to share with, so the
    pair does not change it)."""
    from scheduling import capacity

    from kvsaga.sim.compare import tenant_share
    name, seed, frac = task
    sched, policy = DEFAULT.split("+")
    sessions = mix_trace(name, seed)
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(sessions, frac, len(MIXES[name])),
                    policy=policy, scheduler=sched)
    half = tenant_share(cfg, len(MIXES[name]))
    alone = {t: simulate([s for s in sessions if s.tenant == t], half).tct_mean_s
             for t, *_ in MIXES[name]}
    out = {}
    for arm in FIT_ARMS:
        r = simulate(sessions, dataclasses.replace(cfg, scheduler_params={
            "share_step_tokens": arm[0], "share_lag_tokens": arm[1]})).to_dict()
        slow = {t: r["tenants"][t]["tct_mean_s"] / alone[t] for t in alone}
        out[arm] = {"tct_mean_s": r["tct_mean_s"], "slowdowns": slow,
                    "ratio": max(slow.values()) / min(slow.values())}
    return out, alone


def pick_default(points: list[dict], slack: float = TCT_SLACK) -> tuple:
    """The fit's rule. `points`: per fit point, arm -> {"tct_mean_s", "ratio"}; the arm
    (0, 0) is off. An arm qualifies when its mean TCT is at most (1 + slack) x off's at
    every point; the pick is the qualifying arm with the lowest mean ratio over the points.
    Ties: off first, then the larger share_step_tokens (fewer capped steps), then the order
    the arms are listed in (`points[0]`'s, which `_fit_point` builds in `FIT_ARMS` order):
    at one step size, lag 8192 before 32768. Off when no arm lowers the mean ratio.

    Why this rule: the share is judged by the AFS goal's own figure (the ratio, averaged over
    every fit point, both mixes and capacities), but it must not buy fairness with task
    completion time (issue 10's first goal), and a bound per point, not on the mean,
    keeps one mix's gain from paying for another's loss. 3% is small against the 2x the
    TCT goal asks and against the seed-to-seed spread of a point; the share acts only
    while two or more tenants compete, so one tenant's runs pay nothing."""
    off = (0, 0)
    arms = list(points[0])
    ok = [a for a in arms if all(p[a]["tct_mean_s"] <= (1 + slack) * p[off]["tct_mean_s"]
                                 for p in points)]

    def mean_ratio(arm):
        return sum(p[arm]["ratio"] for p in points) / len(points)

    return min(ok, key=lambda a: (mean_ratio(a), a != off, -a[0]))


def fit_share(workers: int) -> tuple[int, int]:
    """Fit Agent Fair Share of compute on both mixes at `FIT_SEEDS` and their capacities:
    prints every point and each arm's summary, and returns `pick_default`'s pick
    (share_step_tokens, share_lag_tokens)."""
    from kvsaga.workers import worker_pool
    points = [(name, seed, frac) for name in MIXES for seed in FIT_SEEDS
              for frac in MIX_FRACS[name]]
    with worker_pool(workers) as ex:
        res = list(ex.map(_fit_point, points))
    off = (0, 0)
    for (name, seed, frac), (by, _) in zip(points, res, strict=True):
        for arm, r in by.items():
            print(f"{_arm(arm)}, {name} seed {seed} {frac:.0%}: ratio {r['ratio']:.2f} ("
                  + ", ".join(f"{t} {v:.2f}" for t, v in r["slowdowns"].items())
                  + f"), mean TCT {r['tct_mean_s']:.1f} s "
                  f"({r['tct_mean_s'] / by[off]['tct_mean_s'] - 1:+.1%} vs off)")
    by_point = [by for by, _ in res]
    for arm in FIT_ARMS:
        rel = [by[arm]["tct_mean_s"] / by[off]["tct_mean_s"] - 1 for by in by_point]
        print(f"{_arm(arm)}: mean ratio "
              f"{sum(by[arm]['ratio'] for by in by_point) / len(by_point):.3f}, mean TCT "
              f"{sum(by[arm]['tct_mean_s'] for by in by_point) / len(by_point):.2f} s, "
              f"worst point {max(rel):+.1%} vs off, points over {TCT_SLACK:.0%}: "
              f"{sum(x > TCT_SLACK for x in rel)}")
    best = pick_default(by_point)
    print(f"picked {_arm(best)} (lowest mean ratio with mean TCT within {TCT_SLACK:.0%} of "
          f"off at every point; both mixes, seeds {', '.join(map(str, FIT_SEEDS))})")
    return best


def floors(seeds: list[int], workers: int, params: dict | None = None) -> None:
    """Print, per seed and capacity of "mix" (development seeds only: never the report
    seed), the default's ratio against the lowest reachable without slowing a tenant with
    each floor (solo; alone on the whole GPU), and each tenant's TCT shared / alone on
    the whole GPU / solo: how much of a tenant's slowdown the other tenant causes."""
    from scheduling import run
    sched, policy = DEFAULT.split("+")
    tasks = [("mix", seed, MIX_LOAD, frac, sched, policy, params) for seed in seeds
             for frac in MIX_FRACS["mix"]]
    for r in run(tasks, workers):
        solo = tenant_solo("mix", r["seed"])
        low = slowdown_floors(r, solo)[1]
        whole = slowdown_floors(r, solo, whole=True)[1]
        print(f"mix seed {r['seed']} {r['frac']:.0%} {_label(r)}: ratio "
              f"{r['afs_max_slowdown_ratio']:.2f}, at best {low:.2f} (solo floors), "
              f"{whole:.2f} (whole-GPU floors); " + "; ".join(
                  f"{t} {v['tct_mean_s']:.1f} / {v['tct_whole_s']:.1f} / {solo[t]:.1f} s"
                  for t, v in r["tenants"].items()) + " (shared / whole GPU / solo)")


def report(workers: int, seeds: list[int] | None = None) -> None:
    """Run only the mixes' rows of bench/scheduling.py (`mix_tasks`) and print their goals
    lines and per-tenant table (RESULTS' AFS and noisy-neighbour bullets come from here).
    `seeds`: run both mixes on these seeds instead (fresh seeds, once; or fit seeds in a
    diagnosis, `--fit-seeds`)."""
    from scheduling import CONFIGS, run
    mix_seeds = seeds or [MIX_SEED]
    noisy_seeds = tuple(seeds) if seeds else NOISY_SEEDS
    tasks = []
    for seed in mix_seeds:
        tasks += [t for t in mix_tasks(CONFIGS, seed, noisy_seeds)
                  if t[0] == "mix" or seed == mix_seeds[0]]
    rows = run(tasks, workers)
    for seed in mix_seeds:  # afs_lines' solo floors are this seed's
        print("\n".join(afs_lines([r for r in rows if r["family"] == "mix"
                                   and r["seed"] == seed], seed, noisy_seeds)))
    print("\n".join(afs_lines([r for r in rows if r["family"] == "noisy"],
                              noisy_seeds=noisy_seeds)))
    print(goal_count_line(rows))
    print("\n".join(tenant_table(rows)))


def set_workflow_defaults(params: dict) -> None:
    """Make `params` the `workflow` scheduler's defaults in this process (the simulations'
    forked workers inherit them): `--report --defaults`, the fit's veto, judges a candidate
    as if it were the default, arms with their own parameters included, with no file
    changed (docs/scheduling_fit_history.md, round 11 onward).

    Raises:
        ValueError: a name that is not a `workflow` parameter, or a value it refuses;
            nothing changed.
    """
    from kvsaga import KVCacheManager, KVSpec
    from kvsaga.scheduler import WorkflowScheduler, make_scheduler

    defaults = WorkflowScheduler.__init__.__kwdefaults__
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"--defaults: workflow has no parameter {unknown[0]!r}")
    make_scheduler("workflow", KVCacheManager(KVSpec(1, 1, 4, block_size=16), 64),
                   **params)  # a bad value is refused here, before anything changed
    defaults.update(params)


def _seeds(ap, flag: str, text: str) -> list[int]:
    """Comma-separated integers of `flag`, or `ap.error` naming what was wrong."""
    try:
        seeds = [ascii_int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        ap.error(f"{flag} takes comma-separated integers, got {text!r}")
    if not seeds:
        ap.error(f"{flag} names no seed")
    return seeds


def main(argv: list[str] | None = None) -> int:
    """The command line: the AFS fit (`fit_share`), `--floors`, or `--report`. Every flag
    that only one mode reads is refused without it, so nothing is silently ignored (before
    session 48 `--seeds` without `--report` ran the fit), and `--report --seeds` refuses a
    seed any fit read (bench/fit_seeds.py: the AFS fit seeds and every other bench's)
    unless `--fit-seeds` says the run is a diagnosis on them."""
    import argparse
    import json
    ap = argparse.ArgumentParser(description="fit Agent Fair Share of compute (see fit_share)"
                                 ", with --floors print the mix's floors (see floors), or "
                                 "with --report run the mixes' rows (see report)")
    ap.add_argument("--workers", type=int_arg, default=2, help="simulations run in parallel")
    ap.add_argument("--floors", metavar="SEEDS", help="comma-separated development seeds of "
                    "the mix (never its report seed, MIX_SEED)")
    ap.add_argument("--params", type=json.loads, default=None,
                    help="with --floors: the default scheduler's parameters, as JSON")
    ap.add_argument("--report", action="store_true", help="run and print the mixes' rows")
    ap.add_argument("--seeds", metavar="SEEDS", help="with --report: comma-separated seeds "
                    "for both mixes instead of MIX_SEED and NOISY_SEEDS (held out: a seed "
                    "any fit read, bench/fit_seeds.py, is refused without --fit-seeds)")
    ap.add_argument("--fit-seeds", action="store_true",
                    help="with --report --seeds: a diagnosis on seeds a fit read (those "
                    "of bench/fit_seeds.py only), printed as fit seeds, not held out")
    ap.add_argument("--defaults", type=json.loads, default=None,
                    help="with --report: the workflow scheduler's defaults set to these "
                    "parameters (JSON) for the run, as the fit's veto judges a candidate")
    args = ap.parse_args(argv)
    if args.report and args.floors:
        ap.error("--report and --floors are two modes: run them apart")
    for flag, given, mode in (("--defaults", args.defaults, args.report),
                              ("--seeds", args.seeds, args.report),
                              ("--params", args.params, args.floors)):
        if given is not None and not mode:
            ap.error(f"{flag} applies to {'--floors' if flag == '--params' else '--report'} "
                     "only")
    if args.fit_seeds and args.seeds is None:
        ap.error("--fit-seeds applies to --report --seeds only (the default seeds are "
                 "the report's)")
    seeds = _seeds(ap, "--seeds", args.seeds) if args.seeds is not None else None
    if args.fit_seeds:
        try:
            print(diagnosis_header(seeds, "--report --seeds"))
        except ValueError as e:
            ap.error(str(e))
    elif seeds and (error := fit_seed_error(seeds, "--report --seeds")):
        ap.error(f"{error}; a diagnosis on fit seeds alone: --fit-seeds")
    if args.defaults is not None:
        try:
            set_workflow_defaults(args.defaults)
        except (ValueError, TypeError) as e:
            ap.error(str(e))
        print(f"workflow defaults for this run: {args.defaults}")
    if args.report:
        report(args.workers, seeds)
    elif args.floors:
        chosen = _seeds(ap, "--floors", args.floors)
        if MIX_SEED in chosen:
            ap.error(f"seed {MIX_SEED} is the mix's report seed: pick development seeds")
        floors(chosen, args.workers, args.params)
    else:
        fit_share(args.workers)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
