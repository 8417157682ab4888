"""The `workflow` scheduler with a host tier, on the fit seeds (issue 10, session 57).

    python bench/scheduling_host.py --workers 2 [--host-room none,all] [--host 0.5,2]

bench/scheduling_fit.py's runs have no host tier, so a rule that acts only when one exists
(`host_room`, kvsaga/scheduler/block_room.py) moves no fit row. This runs the fit's traces
and points (`FIT_FAMILIES` x `FIT_POINTS` x seeds 101-106, the default policy) with a host
tier of `--host` x the GPU blocks, under each `--host-room`, beside the same workflow
defaults without a host tier and fcfs+lru with the tier. Per family, point and host size it
prints each arm's geometric mean over the seeds of mean and p95 TCT, and the summed
recomputed tokens; and it counts the (seed, point) cases where an arm recomputes more or
has a longer mean TCT with the tier than without it (what a user adding host memory does
not expect).

    python bench/scheduling_host.py --workers 2 --fit-rows

runs bench/scheduling.py's own fit rows (`scheduling._run`: the default policy's workflow
row at every fit family, point and seed, no host tier) under each `--host-room` and checks
them field by field equal (but the wall time): the rule moves no fit row.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ascii_args import ascii_float, int_arg  # noqa: E402
from scheduling import FIT_SEEDS, PRESET, capacity, trace  # noqa: E402
from scheduling_fit import FIT_FAMILIES, FIT_POINTS  # noqa: E402

from kvsaga.policy import DEFAULT_POLICY  # noqa: E402
from kvsaga.scheduler.block_room import HOST_ROOMS  # noqa: E402
from kvsaga.sim.simulator import SimConfig, Simulator  # noqa: E402
from kvsaga.sim.workloads import WORKLOADS  # noqa: E402
from kvsaga.workers import worker_pool  # noqa: E402


def _run(task: tuple) -> dict:
    family, seed, load, frac, host, sched, policy, params = task
    sessions = trace(family, seed, load)
    gpu = capacity(sessions, frac)
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=gpu, num_host_blocks=int(host * gpu),
                    policy=policy, scheduler=sched, scheduler_params=params)
    r = Simulator(sessions, cfg).run()
    return dict(tct=r.tct_mean_s, p95=r.tct_p95_s, rec=r.recomputed_tokens)


def _fit_rows(rooms: list[str], families: list[str], workers: int) -> int:
    """Exit status 0 when the fit's rows are equal under every rule in `rooms`, else 1."""
    import scheduling
    keys = [(f, load, frac, seed) for f in families for load, frac in FIT_POINTS
            for seed in FIT_SEEDS]
    tasks = [(f, seed, load, frac, "workflow", DEFAULT_POLICY, {"host_room": room})
             for room in rooms for f, load, frac, seed in keys]
    t0 = time.perf_counter()
    rows = scheduling.run(tasks, workers)
    for r in rows:
        r.pop("wall_s")
        r.pop("params")
    runs = [rows[i * len(keys):(i + 1) * len(keys)] for i in range(len(rooms))]
    # repr: a row holds nan where nothing waited, and nan != nan
    differ = [k for i, k in enumerate(keys)
              if any(repr(run[i]) != repr(runs[0][i]) for run in runs)]
    print(f"{len(tasks)} fit runs in {time.perf_counter() - t0:.0f} s; host_room {rooms}: "
          f"{len(keys) - len(differ)} of {len(keys)} rows field by field equal"
          + (f"; differ: {differ}" if differ else ""))
    return 1 if differ else 0


def _gmean(xs: list[float]) -> float:
    return math.exp(sum(map(math.log, xs)) / len(xs))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host-room", default=",".join(HOST_ROOMS),
                    help="comma-separated host_room rules, of " + ", ".join(HOST_ROOMS)
                    + " (default: %(default)s)")
    ap.add_argument("--host", default="0.5,2",
                    help="host tier sizes, x the GPU blocks, each > 0 (default: %(default)s)")
    ap.add_argument("--families", default=",".join(FIT_FAMILIES),
                    help="comma-separated families (default: %(default)s)")
    ap.add_argument("--workers", type=int_arg, default=1,
                    help="simulator processes (default: %(default)s)")
    ap.add_argument("--fit-rows", action="store_true",
                    help="check that the fit's rows (no host tier) are equal under each rule")
    args = ap.parse_args(argv)
    rooms = args.host_room.split(",")
    bad = [r for r in rooms if r not in HOST_ROOMS]
    if bad:
        ap.error(f"--host-room: unknown rule(s) {bad}; choose from {list(HOST_ROOMS)}")
    families = args.families.split(",")
    bad = [f for f in families if f not in WORKLOADS]
    if bad:
        ap.error(f"--families: unknown family(ies) {bad}; choose from {sorted(WORKLOADS)}")
    if args.fit_rows:
        return _fit_rows(rooms, families, args.workers)
    try:
        hosts = [ascii_float(x) for x in args.host.split(",")]
    except ValueError:
        ap.error(f"--host takes comma-separated numbers, got {args.host!r}")
    if not all(math.isfinite(h) and h > 0 for h in hosts):
        ap.error(f"--host: each size must be a finite number > 0, got {args.host!r}")
    arms = [("no host", 0.0, "workflow", DEFAULT_POLICY, None)]
    arms += [(f"host_room {h}", None, "workflow", DEFAULT_POLICY, {"host_room": h})
             for h in rooms]
    arms += [("fcfs+lru", None, "fcfs", "lru", None)]
    keys, tasks = [], []
    for family in families:
        for load, frac in FIT_POINTS:
            for host in hosts:
                for seed in FIT_SEEDS:
                    for name, fixed, sched, policy, params in arms:
                        keys.append((family, load, frac, host, seed, name))
                        tasks.append((family, seed, load, frac, host if fixed is None else fixed,
                                      sched, policy, params))
    t0 = time.perf_counter()
    with worker_pool(args.workers) as ex:
        rows = dict(zip(keys, ex.map(_run, tasks), strict=True))
    print(f"{len(tasks)} runs in {time.perf_counter() - t0:.0f} s; seeds {FIT_SEEDS}, "
          f"workflow with {DEFAULT_POLICY}")
    names = [a[0] for a in arms]
    worse = {(n, host): [0, 0] for n in names[1:-1] for host in hosts}
    for family in families:
        for load, frac in FIT_POINTS:
            for host in hosts:
                cells = []
                for n in names:
                    rs = [rows[(family, load, frac, host, s, n)] for s in FIT_SEEDS]
                    cells.append(f"{n}: {_gmean([r['tct'] for r in rs]):.1f}/"
                                 f"{_gmean([r['p95'] for r in rs]):.1f} s "
                                 f"{sum(r['rec'] for r in rs):,}")
                for n in names[1:-1]:
                    for s in FIT_SEEDS:
                        a = rows[(family, load, frac, host, s, n)]
                        b = rows[(family, load, frac, host, s, "no host")]
                        worse[n, host][0] += a["rec"] > b["rec"]
                        worse[n, host][1] += a["tct"] > b["tct"]
                print(f"{family} {load:g}x {frac:.0%} host {host:g}x | " + " | ".join(cells))
    cases = len(families) * len(FIT_POINTS) * len(FIT_SEEDS)
    for (n, host), (rec, tct) in worse.items():
        print(f"{n}, host {host:g}x: with the tier, more recomputed than without in {rec} "
              f"of {cases} cases, longer mean TCT in {tct}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
