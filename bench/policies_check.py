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
