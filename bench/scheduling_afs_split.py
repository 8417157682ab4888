"""Where a two-tenant run's afs_max_slowdown_ratio comes from, per tenant: one mix case of
bench/scheduling_mix.py (`--report`'s workflow+graph row), run as the veto runs it, with each
tenant's session admissions split by kind, its demotions, its recomputed prompt tokens and
its TCT shared and alone on half the GPU (the slowdown's denominator, under the same
scheduler), and the same figures of each tenant's alone run.

    python bench/scheduling_afs_split.py noisy:8:0.25 mix:2:0.5 \
        [--defaults '{"growth_charge": "remaining"}'] [--time] [--by-tenant]

`--time` adds, per tenant of the shared run, where its mean TCT goes beyond its sessions'
solo time (bench/scheduling_bound_gap.py's split, every step observed): waits to be admitted
(first, again after a demotion, queued while admitted), and the run beyond solo, of it its
own recomputation, its decodes stalled by other steps' prefill, and its decodes beside other
sessions' decodes ("batch": each decode step's time beyond the same step with its decode
alone). Why (session 41): the noisy-neighbour misses of fresh AFS seeds 181, 182 were each
"within the floors" (unloaded TCT over TCT alone), yet the light tenant's shared TCT stayed
far above its unloaded one; this says which part of it an admission order can reach.

`--by-tenant` splits, per tenant of the same observed run, its decodes' "prefill stall" by
the tenant whose prefill tokens each batch step carried (pro rata the tokens), and gives its
demotions by cause (on contexts / on prediction, bench/scheduling_bound_gap.py's) and its
recompute seconds by class. Why (session 43, noisy 189 at 25%): whether the light tenant's
stall is the heavy tenant's prefill, which an order between tenants could move, or its own.

Why (issue 10, `--fit` rounds 13-15): the veto rejects a candidate whose ratio rises, and
a ratio is max / min of slowdowns whose denominators (the tenants' runs alone) move with
the candidate too; this says which of the four TCTs moved, which tenant gained admissions,
how many admissions Agent Fair Share's deficit order decided (`FairShare.charge` debits
only those), and whether the tenant shares bound the same blocks the gate charges
(`_tenant_blocks` against `_committed`, checked at every change). The simulations are
bench/scheduling.py's, unchanged: the recording only wraps `WorkflowScheduler._admitted`,
`WorkflowScheduler._demote_session`, `WorkflowScheduler._set_blocks` and
`StepExecutor._slots`, and restores them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import Any

from ascii_args import ascii_float, ascii_int
from scheduling import PRESET, capacity
from scheduling_bound_gap import KINDS, observe
from scheduling_mix import MIX_FRACS, MIXES, mix_trace, set_workflow_defaults

from kvsaga.scheduler.workflow import WorkflowScheduler
from kvsaga.sim.compare import tenant_share
from kvsaga.sim.executor import StepExecutor
from kvsaga.sim.metrics import tenant_key
from kvsaga.sim.simulator import SimConfig, Simulator

COUNTS = ("admitted", "readmitted", "fair_order", "demoted", "recomputed")


@contextlib.contextmanager
def recording() -> Iterator[dict[str, collections.Counter]]:
    """Per-tenant counters of the simulations run inside: session admissions ("admitted"),
    of them demoted sessions admitted again ("readmitted") and those in Agent Fair Share's
    deficit order with two or more tenants backlogged ("fair_order": the only ones
    `FairShare.charge` charges), demotions, recomputed prompt tokens; and "mismatch", how
    many times the tenants' charged blocks did not sum to the gate's commitment."""
    c: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    admitted, demote = WorkflowScheduler._admitted, WorkflowScheduler._demote_session
    set_blocks, slots = WorkflowScheduler._set_blocks, StepExecutor._slots

    def _admitted(self, req: Any, now: float, *, instead_of: Any = None) -> None:
        if req.session_id not in self.sessions:
            t = tenant_key(req.tenant)
            c[t]["admitted"] += 1
            c[t]["readmitted"] += req.session_id in self._deferred
            d = self._fair.deficits
            c[t]["fair_order"] += len(d) > 1 and d.get(req.tenant, -1.0) >= max(d.values())
        admitted(self, req, now, instead_of=instead_of)

    def _demote_session(self, sid: str, now: float) -> None:
        c[tenant_key(self.sessions[sid].tenant)]["demoted"] += 1
        demote(self, sid, now)

    def _set_blocks(self, info: Any) -> None:
        set_blocks(self, info)
        c["all"]["mismatch"] += sum(self._tenant_blocks.values()) != self._committed

    def _slots(self, req: Any, num_tokens: int) -> None:
        before = self._counts["recomputed"]
        slots(self, req, num_tokens)
        c[tenant_key(req.session.tenant)]["recomputed"] += self._counts["recomputed"] - before

    patches = {(WorkflowScheduler, "_admitted"): _admitted,
               (WorkflowScheduler, "_demote_session"): _demote_session,
               (WorkflowScheduler, "_set_blocks"): _set_blocks,
               (StepExecutor, "_slots"): _slots}
    saved = {k: getattr(*k) for k in patches}
    try:
        for (cls, name), fn in patches.items():
            setattr(cls, name, fn)
        yield c
    finally:
        for (cls, name), fn in saved.items():
            setattr(cls, name, fn)


def parse_case(text: str) -> tuple[str, int, float]:
    """'NAME:SEED:FRAC' (a mix of bench/scheduling_mix.py at one of its capacities).

    Raises:
        ValueError: naming what is wrong.
    """
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"case {text!r}: expected NAME:SEED:FRAC, e.g. noisy:8:0.25")
    name, seed, frac = parts
    if name not in MIXES:
        raise ValueError(f"case {text!r}: no mix {name!r} (one of {', '.join(MIXES)})")
    try:
        s, f = ascii_int(seed), ascii_float(frac)
    except ValueError:
        raise ValueError(f"case {text!r}: SEED must be an integer and FRAC a number") from None
    if f not in MIX_FRACS[name]:
        raise ValueError(f"case {text!r}: {name} runs at {MIX_FRACS[name]} only")
    return name, s, f


def split(name: str, seed: int, frac: float) -> dict[str, dict[str, float]]:
    """Per tenant: the shared run's and the alone run's TCT and `COUNTS`, the slowdown; under
    "all", the shared run's "mismatch" and its totals of recomputed tokens, session
    admissions and demotions."""
    sessions = mix_trace(name, seed)
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(sessions, frac, len(MIXES[name])),
                    policy="graph", scheduler="workflow")
    with recording() as c:
        sim = Simulator(sessions, cfg)
        res = sim.run()
    # "all": the run's own totals, which the per-tenant counts split (a check on the split).
    out: dict[str, dict[str, float]] = {"all": {
        "mismatch": c["all"]["mismatch"], "recomputed": res.recomputed_tokens,
        "admitted": sim.scheduler.num_session_admissions,
        "demoted": sim.scheduler.num_demotions}}
    for t, entry in res.tenants.items():
        out[t] = {"tct": entry["tct_mean_s"], **{k: c[t][k] for k in COUNTS}}
    share = tenant_share(cfg, len(res.tenants))
    for t in res.tenants:
        with recording() as a:
            alone = Simulator([s for s in sessions if tenant_key(s.tenant) == t], share).run()
        out[t].update(tct_alone=alone.tct_mean_s,
                      slowdown=out[t]["tct"] / alone.tct_mean_s,
                      **{f"alone_{k}": a[t][k] for k in COUNTS})
    return out


def lines(case: str, per: dict[str, dict[str, float]]) -> list[str]:
    slow = [v["slowdown"] for t, v in per.items() if t != "all"]
    out = [f"{case}: afs_max_slowdown_ratio {max(slow) / min(slow):.3f}; tenant blocks "
           f"unequal to the commitment {per['all']['mismatch']} times"]
    for t, v in per.items():
        if t == "all":
            continue
        out.append(f"  {t}: TCT {v['tct']:.2f} s shared / {v['tct_alone']:.2f} s alone, "
                   f"slowdown {v['slowdown']:.3f}; shared: admitted {v['admitted']} (again "
                   f"{v['readmitted']}, fair order {v['fair_order']}), demoted {v['demoted']}, "
                   f"recomputed {v['recomputed'] / 1e3:.1f}k; alone: admitted "
                   f"{v['alone_admitted']}, demoted {v['alone_demoted']}, recomputed "
                   f"{v['alone_recomputed'] / 1e3:.1f}k")
    return out


TIME_PARTS = ("solo", "wait first", "wait again", "wait admitted", "run")
RUN_PARTS = ("recompute", "prefill stall", "batch", "prefill beside", "other")


def observed(name: str, seed: int, frac: float) -> dict[str, Any]:
    """The shared run as `split` runs it, every step observed
    (bench/scheduling_bound_gap.py's `observe`, `reference=True`), with "tenant": each
    session's tenant key. `--time` and `--by-tenant` read the same one run."""
    sessions = mix_trace(name, seed)
    out = observe(name, 1.0, frac, seed, "graph", "workflow", None, sessions=sessions,
                  num_gpu_blocks=capacity(sessions, frac, len(MIXES[name])), reference=True)
    out["tenant"] = {s.id: tenant_key(s.tenant) for s in sessions}
    return out


def time_split(name: str, seed: int, frac: float,
               run: dict[str, Any] | None = None) -> dict[str, dict[str, float]]:
    """`--time`: per tenant of the shared run (`observed`'s, or `run` if given), the
    means a session of `TIME_PARTS` and of the run's parts (`RUN_PARTS`): "recompute" (its
    recomputed tokens' prefill time), "prefill stall" (its decodes stalled by other steps'
    prefill), "batch" (its decodes beside other decodes), "prefill beside" (its prefill
    chunks' steps beyond each chunk alone) and "other" (the run's rest: steps it sat out
    while running, per-chunk overheads); "tct" their sum; "prefill chunks" (batch steps
    that carried its prefill) and "sessions"."""
    out = run if run is not None else observed(name, seed, frac)
    tenant = out["tenant"]
    sums: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for sid, p in out["sessions"].items():
        parts = {k: p[k] for k in ("tct", *TIME_PARTS)}
        parts["recompute"] = sum(p[f"rec_s {k}"] for k in KINDS)
        parts["prefill stall"] = p["stall first-time"] + p["stall recomputed"]
        parts["batch"] = p["stall batch"]
        parts["prefill beside"] = p["prefill beside"]
        parts["other"] = p["run"] - sum(parts[k] for k in RUN_PARTS[:-1])
        parts["prefill chunks"] = p["prefill chunks"]
        sums[tenant[sid]].update(parts)
        sums[tenant[sid]]["sessions"] += 1
    return {t: {k: (v if k == "sessions" else v / c["sessions"]) for k, v in c.items()}
            for t, c in sorted(sums.items())}


def time_lines(case: str, per: dict[str, dict[str, float]]) -> list[str]:
    out = [f"{case}: where each tenant's mean TCT goes (s a session)"]
    for t, v in per.items():
        out.append(f"  {t} ({v['sessions']:.0f} sessions): TCT {v['tct']:.2f} = solo "
                   f"{v['solo']:.2f} + waits {v['wait first']:.2f} first / "
                   f"{v['wait again']:.2f} again / {v['wait admitted']:.2f} admitted + run "
                   f"beyond solo {v['run']:.2f} (recompute {v['recompute']:.2f}, prefill "
                   f"stall {v['prefill stall']:.2f}, batch {v['batch']:.2f}, prefill beside "
                   f"{v['prefill beside']:.2f}, other {v['other']:.2f}); "
                   f"{v['prefill chunks']:.0f} prefill chunks a session")
    return out


def tenant_split(name: str, seed: int, frac: float,
                 run: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """`--by-tenant`: per tenant of the shared run (`observed`'s, or `run` if given), means
    a session of its decodes' "prefill stall" (as `time_split`'s) and of its split "by" the
    tenant whose prefill tokens each batch step carried (pro rata the tokens: "by" sums to
    "prefill stall"), of its decode steps beside prefill, of its recompute seconds by class
    (bench/scheduling_bound_gap.py's `KINDS`), of its stall by recomputed and first-time
    prefill; its demotions by cause ("demotions": on contexts / on prediction, totals);
    and "sessions". Why (session 43): whether a light tenant's stall is the heavy tenant's
    prefill or its own."""
    out = run if run is not None else observed(name, seed, frac)
    tenant = out["tenant"]
    per: dict[str, dict[str, Any]] = {}
    for sid, p in out["sessions"].items():
        v = per.setdefault(tenant[sid], {
            "sessions": 0, "by": collections.Counter(), "demotions": collections.Counter(),
            **{k: 0.0 for k in ("prefill stall", "steps beside prefill", "stall recomputed",
                                "stall first-time", *(f"rec_s {k}" for k in KINDS))}})
        v["sessions"] += 1
        v["by"].update(p["stall by tenant"])
        v["prefill stall"] += p["stall recomputed"] + p["stall first-time"]
        for k in ("steps beside prefill", "stall recomputed", "stall first-time",
                  *(f"rec_s {k}" for k in KINDS)):
            v[k] += p[k]
    for d in out["demotions"]:
        per[tenant[d["sid"]]]["demotions"][d["why"]] += 1
    for v in per.values():
        n = v["sessions"]
        v["by"] = {t: s / n for t, s in sorted(v["by"].items())}
        for k, x in v.items():
            if isinstance(x, float):
                v[k] = x / n
    return dict(sorted(per.items()))


def tenant_lines(case: str, per: dict[str, dict[str, Any]]) -> list[str]:
    out = [f"{case}: each tenant's decodes stalled by prefill, by the tenant whose prefill "
           f"tokens the step carried (pro rata the tokens), its demotions by cause and its "
           f"recomputation (s a session)"]
    for t, v in per.items():
        by = ", ".join(f"by {u} {s:.2f}" for u, s in v["by"].items())
        out.append(f"  {t} ({v['sessions']} sessions): prefill stall "
                   f"{v['prefill stall']:.2f} ({by}); decode steps beside prefill "
                   f"{v['steps beside prefill']:.0f} a session")
    for t, v in per.items():
        d = v["demotions"]
        out.append(f"  {t}: demoted {d.total()} (on contexts {d['on contexts']}, on "
                   f"prediction {d['on prediction']}); recompute s a session by class: "
                   + ", ".join(f"{k} {v['rec_s ' + k]:.2f}" for k in KINDS)
                   + f"; prefill stall recomputed / first-time: "
                   f"{v['stall recomputed']:.2f} / {v['stall first-time']:.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="per-tenant split of mix cases' AFS ratios")
    ap.add_argument("cases", nargs="+", metavar="NAME:SEED:FRAC",
                    help="mix cases of bench/scheduling_mix.py: mix name, seed, capacity "
                    "fraction (e.g. noisy:8:0.25)")
    ap.add_argument("--defaults", type=json.loads, default=None,
                    help="the workflow scheduler's defaults for the run (JSON), as the veto")
    ap.add_argument("--time", action="store_true",
                    help="also split each tenant's mean TCT of the shared run into solo "
                    "time, waits and the run's parts (module docstring)")
    ap.add_argument("--by-tenant", action="store_true",
                    help="also split each tenant's decode seconds stalled by prefill (the "
                    "shared run's) by the tenant whose prefill tokens the batch step "
                    "carried, pro rata the tokens, and print its demotions by cause "
                    "(on contexts / on prediction) and its recompute seconds by class")
    args = ap.parse_args(argv)
    try:
        cases = [parse_case(x) for x in args.cases]
        if args.defaults is not None:
            set_workflow_defaults(args.defaults)
    except (ValueError, TypeError) as e:
        ap.error(str(e))
    for text, (name, seed, frac) in zip(args.cases, cases, strict=True):
        print("\n".join(lines(text, split(name, seed, frac))), flush=True)
        run = observed(name, seed, frac) if args.time or args.by_tenant else None
        if args.time:
            print("\n".join(time_lines(text, time_split(name, seed, frac, run))), flush=True)
        if args.by_tenant:
            print("\n".join(tenant_lines(text, tenant_split(name, seed, frac, run))),
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
