"""Issue 10's checks of a default-policy change, for a policy *spec*, not only a bare name:
its non-thrash check and its AFS veto.

`bench/scheduling_fit.py --policy-check AGAINST --policy NAME` judges a change of the default
policy on issue 10's fit seeds, but takes registered names only, and a tune candidate is
often a policy with other constants (`graph[demoted_mean=1]`). This registers each spec
given under its own spec string as a policy name (a subclass whose defaults are the spec's
constants; nothing else changes) and runs that check, so both arms can be specs:

    python bench/policies_check.py --policy 'graph[demoted_mean=1]' \\
        --against 'graph[demoted_mean=0]'

The AFS veto (`--afs`, or after the non-thrash check when neither `--afs` nor
`--non-thrash` is given) is the one issue 10's scheduler fit applies to its candidates
(docs/scheduling_fit_history.md, rounds 10-13): the rows of `bench/scheduling_mix.py
--report` with the candidate as the default policy against those with the incumbent. Only
the default's own rows are run (the mixes' `mix_tasks` at their report seeds, with
fcfs+lru beside them; the AFS probe and the compute-share-off arm are diagnostics, not the
goal), each arm the default scheduler with its policy. The candidate fails if any row's
afs_max_slowdown_ratio, as the goals lines print it (two decimals), is higher than the
incumbent's, and says which crossed issue 10's goal (<= 1.5) from met to missed. The
lead's rule since the seventeenth session, after graph[demoted_mean=1] had passed the
non-thrash check and moved the two-tenant mix at 50% from 1.44 to 1.59:

    python bench/policies_check.py --afs --policy 'graph[demoted_mean=1]' --against graph

The registration lives in this process and the workers it forks (the simulations are run
by a process pool, which on Linux forks).
"""

from __future__ import annotations

import argparse
import math
import sys

from policies import parse_spec  # bench/ is on the path when run as a script

from kvsaga.policy import POLICIES

AFS_GOAL = 1.5  # issue 10's AFS goal: the two-tenant mixes' afs_max_slowdown_ratio <= 1.5


def register(spec: str) -> str:
    """Make `spec` a policy name: `POLICIES[spec]` builds its policy with the spec's
    constants as defaults (a bare name is left as it is). Returns the name."""
    if spec in POLICIES:
        return spec
    name, params = parse_spec(spec)
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r} in {spec!r}")
    base = POLICIES[name]
    base(**params)  # a bad constant fails here, naming it, before anything is registered

    def init(self, *args, **kw) -> None:
        base.__init__(self, *args, **{**params, **kw})

    POLICIES[spec] = type(f"{base.__name__}Spec", (base,), {"__init__": init, "name": spec})
    return spec


def afs_tasks(policies: list[str]) -> list[tuple]:
    """`bench/scheduling_mix.py --report`'s tasks for the default's own rows (`mix_tasks`
    at the report seeds, fcfs+lru beside them), once per policy of `policies` as the
    default policy (fcfs+lru's rows once: no default policy moves them)."""
    import scheduling_mix  # after the registration, as scheduling_fit
    default = tuple(scheduling_mix.DEFAULT.split("+"))
    base = [t for t in scheduling_mix.mix_tasks((("fcfs", "lru"), default)) if t[6] is None]
    tasks = [t for t in base if t[4:6] != default]
    for policy in policies:
        tasks += [(*t[:5], policy, t[6]) for t in base if t[4:6] == default]
    return tasks


def afs_veto(rows: list[dict], policy: str, against: str) -> tuple[list[str], int]:
    """The rows where `policy` as the default makes afs_max_slowdown_ratio worse than
    `against` does (compared as printed, two decimals), each with its change, and how many
    of them crossed `AFS_GOAL` from met to missed. Empty: the candidate passes."""
    from scheduling import DEFAULT_SCHEDULER

    def arm(name):
        return {(r["family"], r["seed"], r["frac"]): r["afs_max_slowdown_ratio"]
                for r in rows if r["scheduler"] == DEFAULT_SCHEDULER and r["policy"] == name}

    old, new = arm(against), arm(policy)
    if set(old) != set(new) or not old:
        raise ValueError(f"the AFS rows of {policy!r} and {against!r} differ in their cases")
    worse, crossed = [], 0
    for key in sorted(old):
        o, n = round(old[key], 2), round(new[key], 2)
        if n > o:
            met = o <= AFS_GOAL < n
            crossed += met
            worse.append(f"{key[0]} seed {key[1]} {key[2]:.0%} {o:.2f} -> {n:.2f}"
                         + (f" (the goal <= {AFS_GOAL} met -> missed)" if met else ""))
    return worse, crossed


# The calibrated AFS veto (issue 10, session 25; docs/scheduler.md "The AFS veto's noise
# floor"): thresholds computed by `afs_noise_thresholds` from the null runs of
# `bench/scheduling_veto_noise.py calibrate`, frozen here before any candidate is judged.
AFS_NOISE_Z = 1.645  # one-sided 95% band of the mean of n cases' changes
# Frozen from `python bench/scheduling_veto_noise.py calibrate` on the base, fcfs+lru and 11
# null runs of today's default (`readmit_charge` "room_returns_queue", `--fit` round 34's
# pick), session 32, 2026-12-04 (bench/RESULTS.md "The AFS veto recalibrated on round 34's
# default"; tests/bench/afs_noise_s32.json): the band 1.645 x 0.0972 / sqrt(32) = 0.0283 (the
# largest pair mean +0.0276, jitter2 -> slow3); goal cases per run 15-17 (slow3 15 against
# jitter2's 17: a net loss of 2). History: session 26's, on the default before (the prefill
# cap of 128 tokens gated "demoted_queue", "uncached"), 0.0270 and 1
# (tests/bench/afs_noise_s26.json), which judged rounds 27-35; session 25's, on the default
# before that (the cap off), 0.0265 and 3 (tests/bench/afs_noise_s25.json). None: not
# calibrated.
AFS_NOISE_MEAN_LOG: float | None = 0.0283
AFS_NOISE_GOAL_LOSS: int | None = 2
# A null "moved" a case when its log(ratio) changed by at least this: a sub-millisecond
# arrival jitter shifts every TCT by ~1e-5 without changing a decision; one moved step cascades
# into changes of 1e-2 and more (bench/scheduling_veto_noise.py's tables).
AFS_NOISE_MOVED = 1e-3


def goal_met(ratio: float, fcfs_ratio: float) -> bool:
    """Issue 10's AFS goal on one case, as the goals lines print it (two decimals): the
    ratio at most `AFS_GOAL` and below fcfs+lru's."""
    r = round(ratio, 2)
    return r <= AFS_GOAL and r < round(fcfs_ratio, 2)


def _ratio_changes(base: dict, other: dict) -> list[float]:
    if not base or set(base) != set(other):
        raise ValueError("the runs do not hold the same cases")
    for arm in (base, other):
        for key, x in arm.items():
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
                raise ValueError(f"a ratio at {key!r} is not a finite number > 0: {x!r}")
    return [math.log(other[k] / base[k]) for k in sorted(base)]


def afs_noise_thresholds(base: dict, nulls: dict[str, dict], fcfs: dict) -> tuple[float, int, str]:
    """The calibrated veto's thresholds from null runs of the incumbent (`nulls`: name ->
    case -> afs_max_slowdown_ratio, as `base`, its unperturbed run; `fcfs` fcfs+lru's ratio
    per case). The base is one realization like any null, and a null's direction is
    arbitrary, so every ordered pair of the runs (base included) is a draw of what the veto
    sees from a candidate that changes nothing:

    mean threshold = max(the largest mean over the cases of d = log(ratio / ratio before)
    of any ordered pair, AFS_NOISE_Z x s / sqrt(n)), n the cases and s the root mean square
    of the nulls' d against the base over the cases they moved (|d| >= AFS_NOISE_MOVED: a
    candidate moves every case, so untouched cases would understate its noise); goal-loss
    threshold = the largest net loss (lost minus won) of cases meeting the goal (`goal_met`)
    of any ordered pair. Returns both and the parts, in words.

    Raises:
        ValueError: no null, the runs' cases differ (or fcfs lacks some), or a ratio is not
            a finite number > 0.
    """
    if not nulls:
        raise ValueError("afs_noise_thresholds needs one or more null runs")
    if set(base) - set(fcfs):
        raise ValueError("the fcfs+lru ratios lack some of the runs' cases")
    moved = [x for r in nulls.values() for x in _ratio_changes(base, r)
             if abs(x) >= AFS_NOISE_MOVED]
    runs = {"base": base, **nulls}
    met = {name: sum(goal_met(r[k], fcfs[k]) for k in base) for name, r in runs.items()}
    pairs = [(a, b) for a in runs for b in runs if a != b]
    mean = {(a, b): sum(_ratio_changes(runs[a], runs[b])) / len(base) for a, b in pairs}
    top = max(mean, key=mean.get)
    s = math.sqrt(sum(x * x for x in moved) / len(moved)) if moved else 0.0
    band = AFS_NOISE_Z * s / math.sqrt(len(base))
    loss = max(met[a] - met[b] for a, b in pairs)
    parts = (f"the largest mean of {len(pairs)} ordered pairs of runs {mean[top]:+.4f} "
             f"({top[0]} -> {top[1]}); {AFS_NOISE_Z} x {s:.4f} (rms of {len(moved)} moved "
             f"cases) / sqrt({len(base)}) = {band:.4f}")
    return max(mean[top], band), max(0, loss), parts


def afs_noise_veto(base: dict, cand: dict, fcfs: dict, *, mean_log_max: float | None = None,
                   goal_loss_max: int | None = None) -> tuple[bool, list[str]]:
    """The calibrated AFS veto: the candidate's ratios `cand` against the incumbent's `base`
    (case -> afs_max_slowdown_ratio, the same cases; `fcfs` fcfs+lru's ratio per case). It
    fails if the mean over the cases of log(cand / base) exceeds `mean_log_max`, or if the
    cases meeting the goal (`goal_met`) fall by more than `goal_loss_max` (net: those lost
    minus those won). Defaults: the frozen `AFS_NOISE_MEAN_LOG` and `AFS_NOISE_GOAL_LOSS`.
    Returns (passes, the verdict's lines).

    Raises:
        ValueError: the case sets differ, a ratio is not finite and > 0, or no threshold
            (not calibrated yet).
    """
    mean_log_max = AFS_NOISE_MEAN_LOG if mean_log_max is None else mean_log_max
    goal_loss_max = AFS_NOISE_GOAL_LOSS if goal_loss_max is None else goal_loss_max
    if mean_log_max is None or goal_loss_max is None:
        raise ValueError("the calibrated AFS veto has no thresholds yet (run "
                         "bench/scheduling_veto_noise.py calibrate and freeze them)")
    if not base or set(base) != set(cand) or set(base) - set(fcfs):
        raise ValueError("the base, candidate and fcfs+lru ratios do not hold the same cases")
    for key in base:
        for arm, x in (("base", base[key]), ("candidate", cand[key]), ("fcfs+lru", fcfs[key])):
            if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
                raise ValueError(f"{arm}'s ratio at {key!r} is not a finite number > 0: {x!r}")
    mean = sum(_ratio_changes(base, cand)) / len(base)
    met0 = sum(goal_met(base[k], fcfs[k]) for k in base)
    met1 = sum(goal_met(cand[k], fcfs[k]) for k in base)
    bad_mean, bad_goal = mean > mean_log_max, met1 - met0 < -goal_loss_max
    lines = [f"mean change in log(afs_max_slowdown_ratio) over {len(base)} cases {mean:+.4f} "
             f"(at most {mean_log_max:.4f}): {'fails' if bad_mean else 'passes'}",
             f"cases meeting the goal (<= {AFS_GOAL} and below fcfs+lru's) {met0} -> {met1} "
             f"(a net loss of at most {goal_loss_max}): {'fails' if bad_goal else 'passes'}"]
    ok = not (bad_mean or bad_goal)
    lines.append(f"the calibrated AFS veto: {'passes' if ok else 'rejected'}")
    return ok, lines


def afs_check(policy: str, against: str, workers: int) -> int:
    """Run both arms' AFS rows, print them (scheduling_mix's per-tenant lines) and the
    veto's verdict; 1 if the candidate fails it."""
    import scheduling
    import scheduling_mix
    rows = scheduling.run(afs_tasks([against, policy]), workers)
    print("\n".join(scheduling_mix.tenant_table(rows)))
    worse, crossed = afs_veto(rows, policy, against)
    ratio = {(r["family"], r["seed"], r["frac"], r["policy"]): r["afs_max_slowdown_ratio"]
             for r in rows if r["scheduler"] == scheduling.DEFAULT_SCHEDULER}
    print(f"afs_max_slowdown_ratio, {against} -> {policy} as the default policy: " + "; ".join(
        f"{f} seed {s} {fr:.0%} {ratio[(f, s, fr, against)]:.2f} -> "
        f"{ratio[(f, s, fr, policy)]:.2f}" for f, s, fr, p in sorted(ratio) if p == against))
    print(f"AFS veto of {policy} against {against}: "
          + (f"fails: worse at {len(worse)} rows, {crossed} met -> missed: " + "; ".join(worse)
             if worse else "passes (no afs_max_slowdown_ratio worse)"))
    return 1 if worse else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policy", required=True, help="the candidate (a name or a spec)")
    p.add_argument("--against", required=True, help="the incumbent (a name or a spec)")
    p.add_argument("--workers", type=int, default=1)
    only = p.add_mutually_exclusive_group()
    only.add_argument("--afs", action="store_true", help="the AFS veto alone")
    only.add_argument("--non-thrash", action="store_true", help="the non-thrash check alone")
    args = p.parse_args(argv)
    try:
        policy, against = register(args.policy), register(args.against)
    except (ValueError, TypeError) as e:
        p.error(str(e))
    if policy == against:
        p.error("--policy and --against are the same policy: nothing to check")
    rc = 0
    if not args.afs:
        import scheduling_fit  # after the registration: it checks names against POLICIES
        rc = scheduling_fit.main(["--policy-check", against, "--policy", policy,
                                  "--workers", str(args.workers)])
    if not args.non_thrash:
        rc = max(rc, afs_check(policy, against, args.workers))
    return rc


if __name__ == "__main__":
    sys.exit(main())
