"""Where a two-tenant run's afs_max_slowdown_ratio comes from, per tenant: one mix case of
bench/scheduling_mix.py (`--report`'s workflow+graph row), run as the veto runs it, with each
tenant's session admissions split by kind, its demotions, its recomputed prompt tokens and
its TCT shared and alone on half the GPU (the slowdown's denominator, under the same
scheduler), and the same figures of each tenant's alone run.

    python bench/scheduling_afs_split.py noisy:8:0.25 mix:2:0.5 \
        [--defaults '{"growth_charge": "remaining"}']

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

import collections
import contextlib
from collections.abc import Iterator
from typing import Any

from scheduling import PRESET, capacity
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
        s, f = int(seed), float(frac)
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


if __name__ == "__main__":
    import argparse
    import json
    ap = argparse.ArgumentParser(description="per-tenant split of mix cases' AFS ratios")
    ap.add_argument("cases", nargs="+", metavar="NAME:SEED:FRAC",
                    help="mix cases of bench/scheduling_mix.py: mix name, seed, capacity "
                    "fraction (e.g. noisy:8:0.25)")
    ap.add_argument("--defaults", type=json.loads, default=None,
                    help="the workflow scheduler's defaults for the run (JSON), as the veto")
    args = ap.parse_args()
    try:
        cases = [parse_case(x) for x in args.cases]
        if args.defaults is not None:
            set_workflow_defaults(args.defaults)
    except (ValueError, TypeError) as e:
        ap.error(str(e))
    for text, (name, seed, frac) in zip(args.cases, cases, strict=True):
        print("\n".join(lines(text, split(name, seed, frac))), flush=True)
