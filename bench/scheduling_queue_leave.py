"""Round 36's question (issue 10, session 32): at the swaps today's default prices
(`readmit_charge` "room_returns_queue", kvsaga/scheduler/room_swap.py), does letting the steps
queued ahead of a victim leave ("room_returns_queue_leave", `_victim_wait_leave_s`) change a
forecast, and a decision? A diagnosis on the default's own run; it changes and judges nothing.

    python bench/scheduling_queue_leave.py [--points bfcl,1,0.25;bfcl,1,0.5;bfcl,2,0.5]
        [--seeds 101,...,106] [--alone-seeds 102,...,109]

Per run: every swap priced (`RoomSwap._swap_pays_queue`, called where the shrink would bring
the load within the tiers), how many the default made, how many had another step waiting
(any key; the victims' own and the step being admitted left out), at how many the victims'
summed forecast waits differ between the two forecasts, how many of those sums are inf under
each, and how many decisions differ (each value's rule on the same state: gain > victims'
waits + `PRICED_MARGIN` x recomputation); medians of the waiting steps' expected stays
(`_stay_s`), of the forecast gain (where finite) and of the queue-leave waits where the two
differ (where finite). `--points` are grid points of
bench/scheduling.py on `--seeds` (the whole GPU); `--alone-seeds` the noisy mix's heavy tenant
("a") alone on half the GPU at 50%, the run the AFS veto divides by (as
bench/scheduling_swap_alone.py builds it). Deterministic (the simulator's clock).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

from scheduling_swap_alone import add_probe_runs, probe_runs

import kvsaga.scheduler.room_swap as room_swap
from kvsaga.sim.simulator import Simulator

DEFAULT = {"readmit_charge": "room_returns_queue"}


def _med(xs: list[float]) -> str:
    xs = [x for x in xs if math.isfinite(x)]
    return f"{statistics.median(xs):.2f}" if xs else "nan"


def probe(own: list, cfg) -> dict:
    """Run `own` under `cfg` with the default's swap pricing spied on."""
    rec: list[tuple] = []
    pays = room_swap.RoomSwap._swap_pays_queue

    def spy(self, req, lookup, victims, over, now):
        got = pays(self, req, lookup, victims, over, now)
        gain = self._swap_gain_s(over, now)
        price = room_swap.PRICED_MARGIN * self._victims_recompute_s(victims)
        steps = self._waiting_steps(req, victims)
        keys = [(k, b) for k, b, _ in steps]
        wq = sum(self._victim_wait_s(req, v, victims, over, now, keys) for v in victims)
        wl = sum(self._victim_wait_leave_s(req, v, victims, over, now, steps) for v in victims)
        finite = math.isfinite(gain)
        rec.append((got, finite and gain > price + wq, finite and gain > price + wl, gain,
                    wq, wl, bool(steps), [st for _, _, st in steps]))
        return got

    room_swap.RoomSwap._swap_pays_queue = spy
    try:
        row = Simulator(own, cfg).run().to_dict()
    finally:
        room_swap.RoomSwap._swap_pays_queue = pays
    differ = [r for r in rec if r[4] != r[5]]
    return {"tct_mean_s": row["tct_mean_s"], "priced": len(rec), "made": sum(r[0] for r in rec),
            "queue": sum(r[6] for r in rec), "differ": len(differ),
            "inf_q": sum(math.isinf(r[4]) for r in rec),
            "inf_l": sum(math.isinf(r[5]) for r in rec),
            "flips": sum(r[1] != r[2] for r in rec),
            "stay": _med([s for r in rec for s in r[7]]), "gain": _med([r[3] for r in rec]),
            "wait_l": _med([r[5] for r in differ])}


def line(label: str, p: dict) -> str:
    return (f"| {label} | {p['priced']} | {p['made']} | {p['queue']} | {p['differ']} | "
            f"{p['inf_q']} / {p['inf_l']} | {p['flips']} | {p['stay']} | {p['gain']} | "
            f"{p['wait_l']} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_probe_runs(ap)
    a = ap.parse_args(argv)
    print("| run | swaps priced | made | another step waiting | victims' waits differ | "
          "waits inf: queue / queue-leave | decisions differ | waiting steps' stay s "
          "(median) | gain s (median) | queue-leave wait s where they differ (median) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _, label, own, cfg in probe_runs(a, DEFAULT):
        print(line(label, probe(own, cfg)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
