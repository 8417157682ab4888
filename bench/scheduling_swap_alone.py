"""What `readmit_charge` "room_returns" (kvsaga/scheduler/room_swap.py, `--fit` round 31) does
in the run the calibrated AFS veto divides by: one tenant of a two-tenant mix alone on half
the GPU (`kvsaga.sim.compare.tenant_share`, the same scheduler, policy and parameters as
`add_tenant_slowdowns` runs it), against a base run (`--base`). A diagnosis; it
changes nothing and judges nothing.

    python bench/scheduling_swap_alone.py [--mix noisy] [--tenant a] [--frac 0.5]
        [--seeds 102,...,109] [--params '{"readmit_charge": "room_returns"}'] [--swaps]
        [--point FAMILY,LOAD,CAPACITY] [--base '{"readmit_charge": "uncached"}']

`--base` sets the base run's parameters (today's defaults without it; since round 34 the
default makes swaps itself, so the base of the rounds before is `{"readmit_charge":
"uncached"}`).

`--point` reads a single-tenant grid point of bench/scheduling.py (the whole GPU) instead,
for comparison with the fit seeds (pass `--seeds 101,...,106` there).

Per seed, the tenant's mean TCT alone under the default and the candidate (the veto's
`tct_alone_s`), the demotions, the swaps made (a demoted session's step the gate refused,
admitted by `RoomSwap._readmits_swap`) and their predicted victims (`_swap_shrink`), and
what became of those victims. Per victim the rule read two forecasts: when the victim is
back (`_return_at`: its pause's start plus `_expected_pause`) and when the shortage the swap
covers clears (`_shortage_clears_at`: `over` blocks of admitted contexts predicted gone,
`LeaveForecast._leave_wait_s`); a victim back at or after the clearing was charged its
recomputation alone, i.e. no wait. Here, from the run itself: whether the victim was
demoted after the swap and before its next step (by the shrink or a deadline), when its
next step actually arrived (its actual return), when `over` blocks of the sessions admitted
at the swap (the victims and the swapped-in session left out) actually left the tiers (the
actual clearing: ends and demotions, as the forecast counts them), and the victim's wait
from its return to its admission again and the tokens it recomputed then. Last, where the
mean TCT moved: the per-session TCT change (candidate less default) summed over the
sessions swapped in, the victims demoted, and the rest.

`--swaps` also prints every swap's victims (one line each). Deterministic (the simulator's
clock), not a timing.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

from ascii_args import ascii_float, ascii_int, float_arg
from scheduling import PRESET, capacity, trace
from scheduling_mix import MIX_FRACS, MIXES, mix_trace

from kvsaga.policy.cost import PrefillCost
from kvsaga.sim.compare import tenant_share
from kvsaga.sim.metrics import tenant_key
from kvsaga.sim.simulator import SimConfig, Simulator

CANDIDATE = {"readmit_charge": "room_returns"}


def alone_config(mix: str, seed: int, frac: float, params: dict | None):
    """The tenant-alone config of `add_tenant_slowdowns` for the mix's workflow+graph row."""
    sessions = mix_trace(mix, seed)
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(sessions, frac, len(MIXES[mix])),
                    policy="graph", scheduler="workflow", scheduler_params=params)
    return sessions, tenant_share(cfg, len(MIXES[mix]))


def run_plain(own, cfg) -> tuple[dict, dict[str, float], int]:
    sim = Simulator(own, cfg)
    row = sim.run().to_dict()
    tct = {s.id: sim._finished_at[s.id] - s.arrival_s for s in own}
    return row, tct, sim.scheduler.num_demotions


class Probe:
    """The candidate's run, with its swaps and their victims' fates recorded."""

    def __init__(self, own, cfg) -> None:
        self.sim = sim = Simulator(own, cfg)
        self.sched = sched = sim.scheduler
        self.asked: dict[int, dict] = {}  # id(req) -> the last swap decision for it
        self.swaps: list[dict] = []  # made (the step admitted at the decision's time)
        self.open: dict[str, list[dict]] = {}  # victim sid -> its records awaiting events
        self.admitted_now: dict[str, float] = {}  # sid -> own blocks, for clearings
        self.pending_clear: list[dict] = []
        swap, admitted, add = sched._readmits_swap, sched._admitted, sched.add
        demote, forget = sched._demote_session, sched._forget
        bs = sched.manager.block_size

        def spy_swap(req, lookup, now):
            got = swap(req, lookup, now)
            if got:
                victims, over = sched._swap_shrink(req, lookup, now)
                clears = sched._shortage_clears_at(over, now)
                overdue = {"active": 0, "paused": 0}
                for sid, i in sched.sessions.items():
                    if sched._leave_at(sid, i, now) <= now:
                        overdue["active" if i.active else "paused"] += sched._own_blocks(i)
                # Round 34's forecasts at the same swap (`RoomSwap._swap_pays_queue`'s
                # pieces, read without deciding): the step's own wait for its room and each
                # victim's wait on its return, behind the steps sorting ahead of it.
                ahead = sched._waiting_keys(req, victims)
                fwait = {v: sched._victim_wait_s(req, v, victims, over, now, ahead)
                         for v in victims}
                gain = sched._swap_gain_s(over, now)
                queue_cost = (2.0 * sched._victims_recompute_s(victims) + sum(fwait.values()))
                self.asked[id(req)] = {
                    "gain": gain, "queue_swaps": gain > queue_cost,
                    "overdue": overdue,
                    "t": now, "sid": req.session_id, "wait_so_far": now - req.arrival,
                    "learned_wait": sched._readmit_waits.mean(None), "over": over,
                    "clears": clears, "price": sched._victims_recompute_s(victims),
                    "victims": [dict(self._victim(v, now), forecast_wait=fwait[v])
                                for v in victims],
                    "left": {sid: sched._own_blocks(i) for sid, i in sched.sessions.items()
                             if sid not in victims},
                }
            return got

        def spy_admitted(req, now, *, instead_of=None):
            rec = self.asked.pop(id(req), None)
            sid = req.session_id
            # A victim's next step admitted: its wait from its return, its recomputation.
            for v in self.open.get(sid, []):
                if v["demoted_at"] is not None and v["readmitted"] is None \
                        and v["back"] is not None:
                    kept = sched._lookups.get(id(req))
                    hit = kept[2].gpu_hit_blocks * bs if kept is not None else 0
                    v["readmitted"] = now
                    v["recomputed"] = max(v["context"] - hit, 0)
            if sid in self.open and all(v["readmitted"] is not None or v["demoted_at"] is None
                                        for v in self.open[sid]):
                self.open.pop(sid)
            admitted(req, now, instead_of=instead_of)
            if rec is not None and rec["t"] == now:
                rec["left"].pop(sid, None)
                rec["freed"], rec["actual_clear"] = 0, math.inf
                self.swaps.append(rec)
                self.pending_clear.append(rec)
                for v in rec["victims"]:
                    self.open.setdefault(v["sid"], []).append(v)

        def spy_add(req, now):
            for v in self.open.get(req.session_id, []):
                if v["back"] is None:
                    v["back"] = now
            add(req, now)

        def spy_demote(sid, now):
            for v in self.open.get(sid, []):
                if v["demoted_at"] is None and v["back"] is None:
                    v["demoted_at"] = now
            demote(sid, now)

        def spy_forget(sid):
            for rec in list(self.pending_clear):
                blocks = rec["left"].pop(sid, None)
                if blocks is None:
                    continue
                rec["freed"] += blocks
                if rec["freed"] >= rec["over"]:
                    rec["actual_clear"] = sim.now
                    self.pending_clear.remove(rec)
            forget(sid)

        sched._readmits_swap = spy_swap
        sched._admitted = spy_admitted
        sched.add = spy_add
        sched._demote_session = spy_demote
        sched._forget = spy_forget

    def _victim(self, v: str, now: float) -> dict:
        sched = self.sched
        s = sched.manager.sessions[v]
        info = sched.sessions[v]
        return {"sid": v, "paused_at": s.paused_at, "forecast_back": sched._return_at(v),
                "context": max(info.context - info.shared, 0), "back": None,
                "demoted_at": None, "readmitted": None, "recomputed": 0}

    def run(self) -> tuple[dict, dict[str, float]]:
        row = self.sim.run().to_dict()
        tct = {s.id: self.sim._finished_at[s.id] - s.arrival_s for s in self.sim.sessions}
        return row, tct


def _med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else math.nan


def point_config(point: tuple[str, float, float], seed: int, params: dict | None):
    """`--point`: a single-tenant grid point of bench/scheduling.py (its whole GPU)."""
    family, load, frac = point
    sessions = trace(family, seed, load)
    return sessions, SimConfig(preset=PRESET, num_gpu_blocks=capacity(sessions, frac),
                               policy="graph", scheduler="workflow", scheduler_params=params)


def grid_points(text: str) -> list[tuple[str, float, float]]:
    """`--points`' argparse type: FAMILY,LOAD,CAPACITY separated by ';' ('' for none). A
    malformed point is an error naming the flag, the point and the form (not Python's
    unpacking error from inside a run)."""
    points = []
    for p in filter(None, text.split(";")):
        try:
            family, load, frac = p.split(",")
            points.append((family, ascii_float(load), ascii_float(frac)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{p!r}: want FAMILY,LOAD,CAPACITY (e.g. bfcl,1,0.5)") from None
    return points


def add_probe_runs(ap: argparse.ArgumentParser) -> None:
    """The runs a swap probe reads (bench/scheduling_queue_leave.py,
    bench/scheduling_gain_error.py): bfcl's fit points on the fit seeds and the noisy mix's
    heavy tenant alone on half the GPU on the AFS fit seeds, by default."""
    ap.add_argument("--points", type=grid_points, default="bfcl,1,0.25;bfcl,1,0.5;bfcl,2,0.5",
                    help="FAMILY,LOAD,CAPACITY separated by ';' ('' for none)")
    ap.add_argument("--seeds", default="101,102,103,104,105,106",
                    help="comma-separated fit seeds of the --points")
    ap.add_argument("--alone-seeds", default="102,103,104,105,106,107,108,109",
                    help="'' for none")


def probe_runs(a: argparse.Namespace, params: dict | None):
    """`add_probe_runs`' runs: (group, label, the sessions run, their SimConfig) for each
    point and seed, then each alone seed (tenant a's sessions of the noisy mix)."""
    from kvsaga.sim.metrics import tenant_key

    for seed in [ascii_int(s) for s in filter(None, a.seeds.split(","))]:
        for point in a.points:
            own, cfg = point_config(point, seed, params)
            group = f"{point[0]} {point[1]:g}x {point[2]:.0%}"
            yield group, f"{group} seed {seed}", own, cfg
    for seed in [ascii_int(s) for s in filter(None, a.alone_seeds.split(","))]:
        sessions, cfg = alone_config("noisy", seed, 0.5, params)
        own = [s for s in sessions if tenant_key(s.tenant) == "a"]
        yield "noisy tenant a alone 50%", f"noisy tenant a alone 50% seed {seed}", own, cfg


def seed_lines(mix: str, tenant: str, frac: float, seed: int, params: dict,
               show_swaps: bool, point: tuple | None = None, base: dict | None = None
               ) -> tuple[str, str, str, list[str], str]:
    if point is not None:
        own, base_cfg = point_config(point, seed, base)
        _, cand_cfg = point_config(point, seed, params)
    else:
        sessions, base_cfg = alone_config(mix, seed, frac, base)
        own = [s for s in sessions if tenant_key(s.tenant) == tenant]
        _, cand_cfg = alone_config(mix, seed, frac, params)
    base_row, base_tct, base_dem = run_plain(own, base_cfg)
    probe = Probe(own, cand_cfg)
    row, tct = probe.run()
    sched = probe.sched
    cost = getattr(sched.manager.policy, "cost", None)
    if not hasattr(cost, "recompute_s"):
        cost = PrefillCost()
    victims = [v for r in probe.swaps for v in r["victims"]]
    by_swap = {id(v): r for r in probe.swaps for v in r["victims"]}
    demoted = [v for v in victims if v["demoted_at"] is not None]
    back = [v for v in demoted if v["back"] is not None]
    readm = [v for v in back if v["readmitted"] is not None]
    early_actual = sum(1 for v in back if v["back"] < by_swap[id(v)]["actual_clear"])
    early_forecast = sum(1 for v in back if v["back"] < v["forecast_back"])
    waits = [v["readmitted"] - v["back"] for v in readm]
    recomp = sum(v["recomputed"] for v in readm)
    recomp_s = sum(cost.recompute_s(v["recomputed"], max(v["context"] - v["recomputed"], 0))
                   for v in readm)
    head = (f"| {seed} | {base_row['tct_mean_s']:.1f} -> {row['tct_mean_s']:.1f} | "
            f"{base_dem} -> {sched.num_demotions} | {len(probe.swaps)} | {len(victims)} / "
            f"{len(demoted)} | {base_row['recomputed_tokens']} -> {row['recomputed_tokens']} |")
    at_now = [r for r in probe.swaps if r["clears"] <= r["t"]]
    cover = [(r["overdue"]["active"] + r["overdue"]["paused"]) / r["over"] for r in at_now
             if r["over"] > 0]
    active = sum(r["overdue"]["active"] for r in at_now)
    overdue = active + sum(r["overdue"]["paused"] for r in at_now)
    first = sum(1 for v in victims if v["demoted_at"] is None and v["back"] is not None)
    fore = (f"| {seed} | {len(probe.swaps)} | {len(at_now)} | {_med(cover):.1f} | "
            f"{active / overdue if overdue else math.nan:.2f} | "
            f"{_med([v['forecast_back'] - by_swap[id(v)]['t'] for v in victims]):.2f} | "
            f"{first} / {len(victims)} | {len(back)} | "
            f"{_med([v['back'] - by_swap[id(v)]['t'] for v in back]):.2f} | "
            f"{early_forecast} | "
            f"{_med([r['actual_clear'] - r['t'] for r in probe.swaps]):.2f} | "
            f"{early_actual} | "
            f"{_med([r['learned_wait'] for r in probe.swaps]):.2f} / "
            f"{_med([r['price'] for r in probe.swaps]):.3f} |")
    fw = [(v["forecast_wait"], v["readmitted"] - v["back"]) for v in readm]
    under = sum(1 for f, a in fw if f < a)
    queue = (f"| {seed} | {len(probe.swaps)} | "
             f"{sum(1 for r in probe.swaps if r['queue_swaps'])} | "
             f"{_med([r['gain'] for r in probe.swaps]):.2f} | "
             f"{_med([r['learned_wait'] for r in probe.swaps]):.2f} | "
             f"{_med([v['forecast_wait'] for v in victims]):.2f} | {len(fw)} | "
             f"{_med([f for f, _ in fw]):.2f} / {_med([a for _, a in fw]):.2f} | "
             f"{under} |")
    in_sids = {r["sid"] for r in probe.swaps}
    vic_sids = {v["sid"] for v in demoted} - in_sids
    d = {s: tct[s] - base_tct[s] for s in tct}
    n = len(d)
    cost_line = (f"| {seed} | {len(readm)} | {sum(waits):.1f} ({_med(waits):.2f}) | "
                 f"{recomp} ({recomp_s:.1f} s) | "
                 f"{sum(d[s] for s in in_sids) / n:+.2f} ({len(in_sids)}) | "
                 f"{sum(d[s] for s in vic_sids) / n:+.2f} ({len(vic_sids)}) | "
                 f"{sum(d[s] for s in d if s not in in_sids | vic_sids) / n:+.2f} | "
                 f"{sum(d.values()) / n:+.2f} |")
    detail = []
    if show_swaps:
        for r in probe.swaps:
            for v in r["victims"]:
                detail.append(
                    f"seed {seed} swap t={r['t']:.2f} {r['sid']} (waited {r['wait_so_far']:.2f}"
                    f" s, learned {r['learned_wait']:.2f} s) over {r['over']:.0f} blocks, "
                    f"clears forecast +{r['clears'] - r['t']:.2f} actual "
                    f"+{r['actual_clear'] - r['t']:.2f}: victim {v['sid']} forecast back "
                    f"+{v['forecast_back'] - r['t']:.2f}, "
                    + ("not demoted" if v["demoted_at"] is None else
                       f"demoted +{v['demoted_at'] - r['t']:.2f}, back "
                       + ("never" if v["back"] is None else f"+{v['back'] - r['t']:.2f}")
                       + ("" if v["readmitted"] is None else
                          f", readmitted +{v['readmitted'] - r['t']:.2f} (waited "
                          f"{v['readmitted'] - v['back']:.2f} s, recomputed "
                          f"{v['recomputed']} tokens)")))
    return head, fore, cost_line, detail, queue


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mix", default="noisy", choices=sorted(MIXES),
                    help="the two-tenant mix of bench/scheduling_mix.py")
    ap.add_argument("--tenant", default="a", help="the mix's tenant run alone (a or b)")
    ap.add_argument("--frac", type=float_arg, default=0.5,
                    help="capacity fraction: one the mix runs at")
    ap.add_argument("--seeds", default="102,103,104,105,106,107,108,109",
                    help="comma-separated AFS fit seeds")
    ap.add_argument("--params", default=json.dumps(CANDIDATE),
                    help="the candidate's workflow parameters, a JSON object")
    ap.add_argument("--swaps", action="store_true", help="print every swap's victims")
    ap.add_argument("--base", default=None,
                    help="the base run's workflow parameters, a JSON object (default: "
                         "today's defaults), e.g. '{\"readmit_charge\": \"uncached\"}', "
                         "the default before round 34, whose runs make no swap")
    ap.add_argument("--point", default=None, metavar="FAMILY,LOAD,CAPACITY",
                    help="a single-tenant grid point of bench/scheduling.py instead of the "
                         "mix's tenant alone (e.g. bfcl,1,0.25)")
    a = ap.parse_args(argv)
    point = None
    if a.point is not None:
        try:
            fam, load, cap = a.point.split(",")
            point = (fam, ascii_float(load), ascii_float(cap))
        except ValueError:
            ap.error(f"--point must be FAMILY,LOAD,CAPACITY, got {a.point!r}")
    if a.frac not in MIX_FRACS[a.mix]:
        ap.error(f"--frac: the {a.mix} mix runs at {MIX_FRACS[a.mix]}")
    if a.tenant not in {t for t, *_ in MIXES[a.mix]}:
        ap.error(f"--tenant: the {a.mix} mix has tenants {[t for t, *_ in MIXES[a.mix]]}")
    params = json.loads(a.params)
    if not isinstance(params, dict):
        ap.error("--params must be a JSON object")
    base = None if a.base is None else json.loads(a.base)
    if base is not None and not isinstance(base, dict):
        ap.error("--base must be a JSON object")
    seeds = [ascii_int(s) for s in a.seeds.split(",")]
    where = (f"{point[0]} {point[1]:g}x {point[2]:.0%}" if point else
             f"{a.mix} tenant {a.tenant} alone on half the GPU at {a.frac:.0%}")
    print(f"{where}: {'default' if base is None else base} vs {params}")
    heads, fores, costs, details, queues = [], [], [], [], []
    for seed in seeds:
        h, f, c, d, q = seed_lines(a.mix, a.tenant, a.frac, seed, params, a.swaps, point,
                                   base)
        queues.append(q)
        heads.append(h)
        fores.append(f)
        costs.append(c)
        details.extend(d)
        print(f"seed {seed} done", file=sys.stderr, flush=True)
    print("| seed | mean TCT s (the veto's alone TCT) | demotions | swaps made | victims "
          "predicted / demoted | recomputed tokens |")
    print("|---|---|---|---|---|---|")
    print("\n".join(heads))
    print("The forecasts at the swaps (medians; seconds after the swap):")
    print("| seed | swaps | clearing forecast = the swap's time | overdue blocks / overshoot "
          "there | share of them active | victim's return forecast | victims back before "
          "any demotion / predicted | demoted victims back | their actual return | back "
          "before its forecast | actual clearing | demoted victims back before it | learned "
          "wait saved / victims' price s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(fores))
    print("What the victims paid, and where the mean TCT moved (candidate less default, "
          "summed over the group / sessions of the tenant):")
    print("| seed | victims admitted again | their waits from return s, sum (median) | "
          "tokens recomputed (at the policy's prices) | d mean TCT: swapped in (sessions) | "
          "victims (sessions) | the rest | all |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(costs))
    print("Round 34's forecasts at the same swaps (medians; seconds): the step's own wait "
          "for its room (`_swap_gain_s`), each victim's wait on its return behind the steps "
          "sorting ahead of it (`_victim_wait_s`), and that wait as the run paid it:")
    print("| seed | swaps | of them \"room_returns_queue\" would make | forecast gain | "
          "learned wait (round 31's gain) | victims' forecast wait | demoted victims "
          "admitted again | their forecast wait / actual wait | forecast below actual |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(queues))
    if details:
        print("\n".join(details))
    return 0


if __name__ == "__main__":
    sys.exit(main())
