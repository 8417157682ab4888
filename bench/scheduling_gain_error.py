"""Round 37's question (issue 10, session 32): how wrong is the gain side of today's default
swap? `readmit_charge` "room_returns_queue" (kvsaga/scheduler/room_swap.py) swaps a refused,
demoted step in only where its own forecast wait for the room it lacks (`_swap_gain_s`, the
restarted leave forecast) exceeds its victims' forecast waits plus `PRICED_MARGIN` times their
recomputation. Round 36's probe (bench/scheduling_queue_leave.py) showed the victim side does
not decide; this one measures the gain forecast against the wait the step actually had. A
diagnosis on the default's own run; it changes and judges nothing.

    python bench/scheduling_gain_error.py [--points bfcl,1,0.25;bfcl,1,0.5;bfcl,2,0.5]
        [--seeds 101,...,106] [--alone-seeds 102,...,109] [--params JSON]

At every swap priced (`RoomSwap._swap_pays_queue`) the probe records the step, the time, the
forecast gain and the overshoot; when the step is admitted (`LeaveForecast._step_admitted`)
each of its pricings gets its actual wait: the admission's time less the pricing's. The
ratio is forecast / actual (above 1: the forecast overstates the wait the swap would save).
Left out, and counted: pricings of a step later swapped in (its actual wait is cut short by
the swap itself, so it is not the wait for room: censored), pricings with an inf gain (no
step cycle seen yet: the rule refuses them whatever the error), pricings whose step was
admitted at the pricing's own time (actual 0: the ratio is undefined) and steps never
admitted in the run. Per run and pooled (by point, by workflow, by the overshoot's share of
the tiers at the pricing): pricings kept, steps, the ratio's median, p10 and p90 and the
share of pricings overstated (ratio > 1), and the same median over each step's first
pricing alone; per run also the swaps made and the factor the scheduler learned from the
same errors by the end (`RoomForecast._gain_factor`, pooled: what "room_returns_queue_corrected"
multiplies the gain by; every value learns it). `--params`: the scheduler parameters of the
run probed (default: today's default). `--points` are grid points of bench/scheduling.py on
`--seeds` (the whole GPU); `--alone-seeds` the noisy mix's heavy tenant ("a") alone on half
the GPU at 50%, the run the AFS veto divides by (as bench/scheduling_swap_alone.py builds
it). Session 33: at every pricing also session 33's step-release forecast
(`RoomForecast._release_wait_s`, the gain of "room_returns_queue_steps"), read on the same
state and against the same actual wait; pooled (by point and by overshoot) in a second
table, the pricings kept the same. Deterministic (the simulator's clock).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys

from scheduling_swap_alone import add_probe_runs, probe_runs

import kvsaga.scheduler.leave_forecast as leave_forecast
import kvsaga.scheduler.room_swap as room_swap
from kvsaga.sim.simulator import Simulator

DEFAULT = {"readmit_charge": "room_returns_queue"}
# The overshoot's share of the tiers at a pricing (reporting buckets, not a tuned constant).
PRESSURE = ((0.0, 0.05), (0.05, 0.2), (0.2, math.inf))


def probe(own: list, cfg) -> dict:
    """Run `own` under `cfg` with the swap pricing and the admissions spied on; return the
    run's mean TCT, its counts and the kept pricings as dicts (`ratio`, `first`, `workflow`,
    `share`, `gain`, `actual`)."""
    priced: list[dict] = []
    made = 0
    by_req: dict[int, list[dict]] = {}
    reqs: dict[int, object] = {}  # keeps each priced request alive (its id stays unique)
    swapped: set[int] = set()
    pays = room_swap.RoomSwap._swap_pays_queue
    admitted = leave_forecast.LeaveForecast._step_admitted

    def pays_spy(self, req, lookup, victims, over, now):
        got = pays(self, req, lookup, victims, over, now)
        rec = {"now": now, "gain": self._swap_gain_s(over, now), "workflow": req.workflow,
               "steps_gain": self._release_wait_s(over, now),
               "share": max(over, 0.0) / (self.overcommit * self.capacity), "actual": None}
        priced.append(rec)
        reqs[id(req)] = req
        by_req.setdefault(id(req), []).append(rec)
        if got:
            nonlocal made
            made += 1
            swapped.add(id(req))
        return got

    def admitted_spy(self, req, now):
        for rec in by_req.get(id(req), ()):
            if rec["actual"] is None:
                rec["actual"] = now - rec["now"]
        admitted(self, req, now)

    room_swap.RoomSwap._swap_pays_queue = pays_spy
    leave_forecast.LeaveForecast._step_admitted = admitted_spy
    try:
        sim = Simulator(own, cfg)
        row = sim.run().to_dict()
        factor = sim.scheduler._gain_factor(None)
    finally:
        room_swap.RoomSwap._swap_pays_queue = pays
        leave_forecast.LeaveForecast._step_admitted = admitted
    kept: list[dict] = []
    out = {"tct_mean_s": row["tct_mean_s"], "priced": len(priced), "swapped": 0, "inf": 0,
           "zero": 0, "never": 0, "steps": 0, "made": made, "factor": factor}
    for rid, recs in by_req.items():
        if rid in swapped:
            out["swapped"] += len(recs)
            continue
        first = True
        for rec in recs:
            if rec["actual"] is None:
                out["never"] += 1
            elif not math.isfinite(rec["gain"]):
                out["inf"] += 1
            elif rec["actual"] <= 0.0:
                out["zero"] += 1
            else:
                kept.append({**rec, "ratio": rec["gain"] / rec["actual"], "first": first,
                             "ratio_steps": rec["steps_gain"] / rec["actual"]})
                out["steps"] += first
                first = False
    out["kept"] = kept
    return out


def _q(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(int(q * len(xs)), len(xs) - 1)]


def summary(kept: list[dict], key: str = "ratio") -> str:
    """'pricings | steps | median | p10 | p90 | overstated | first pricings' median' of the
    ratios under `key` ("ratio_steps": the step-release forecast's)."""
    if not kept:
        return "0 | 0 | - | - | - | - | -"
    r = [k[key] for k in kept]
    first = [k[key] for k in kept if k["first"]]
    over = sum(x > 1.0 for x in r) / len(r)
    return (f"{len(r)} | {len(first)} | {statistics.median(r):.2f} | {_q(r, 0.1):.2f} | "
            f"{_q(r, 0.9):.2f} | {over:.0%} | "
            f"{statistics.median(first) if first else math.nan:.2f}")


# The second pooled table: session 33's forecast (`RoomForecast._release_wait_s`, the gain of
# "room_returns_queue_steps") at the same pricings, against the same actual waits.
STEPS_TITLE = "step-release forecast (room_returns_queue_steps's gain), pooled"
HEAD = ("pricings kept | steps | ratio median | p10 | p90 | overstated (ratio > 1) | "
        "first pricing's median")


def line(label: str, p: dict) -> str:
    return (f"| {label} | {p['priced']} | {p['made']} | {p['swapped']} / {p['inf']} / "
            f"{p['zero']} / {p['never']} | {summary(p['kept'])} | {p['factor']:.2f} | "
            f"{p['tct_mean_s']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_runs(ap)
    ap.add_argument("--params", default=json.dumps(DEFAULT),
                    help="scheduler parameters of the run probed (JSON)")
    a = ap.parse_args(argv)
    params = json.loads(a.params)
    print(f"| run | swaps priced | made | left out: swapped in / gain inf / actual 0 / never "
          f"admitted | {HEAD} | learned factor at the end | mean TCT s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    runs: list[tuple[str, list[dict]]] = []
    for group, label, own, cfg in probe_runs(a, params):
        p = probe(own, cfg)
        runs.append((group, p["kept"]))
        print(line(label, p), flush=True)
    print()
    print(f"| pooled over seeds | {HEAD} |")
    print("|---|---|---|---|---|---|---|---|")
    groups: dict[str, list[dict]] = {}
    for g, kept in runs:
        groups.setdefault(g, []).extend(kept)
    for g, kept in groups.items():
        print(f"| {g} | {summary(kept)} |")
    for g, kept in groups.items():
        flows: dict[str, list[dict]] = {}
        for k in kept:
            flows.setdefault(k["workflow"], []).append(k)
        for w in sorted(flows):
            print(f"| {g}, workflow {w} | {summary(flows[w])} |")
    for key, title in (("ratio", ""), ("ratio_steps", STEPS_TITLE)):
        if title:
            print()
            print(f"| {title} | {HEAD} |")
            print("|---|---|---|---|---|---|---|---|")
            for g, kept in groups.items():
                print(f"| {g} | {summary(kept, key)} |")
        for g, kept in groups.items():
            for lo, hi in PRESSURE:
                sel = [k for k in kept if lo <= k["share"] < hi]
                print(f"| {g}, overshoot {lo:.0%}-{hi:.0%} of the tiers | "
                      f"{summary(sel, key)} |".replace("-inf%", "+"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
