"""What KV scheduling alone could buy at a grid point of bench/scheduling.py: fcfs+lru at the
point's capacity against the same trace with unbounded KV (the "KV ceiling"), beside today's
`workflow`+graph and the solo bound (bench/scheduling_bound.py), per seed and as geomeans
(a diagnosis, any seed; issue 10, session 34).

    python bench/scheduling_kv_ceiling.py bfcl 1 0.5 101,102,103,104,105,106
    python bench/scheduling_kv_ceiling.py bfcl 1 0.25 101,102 --params '{"shrink_on": "contexts"}'

With unbounded KV (`UNBOUNDED` times the point's capacity) nothing is evicted, nobody waits
for memory and nothing is recomputed, so whatever a scheduler does about memory (admission,
demotion, eviction order) buys nothing more: what is left of a session's TCT beyond its solo
time there is batching (steps sharing batch steps, prefill stalling decodes) and tool time.
So fcfs+lru's mean TCT at the point over the unbounded run's ("KV ceiling") is the most a
scheduler reaches by managing memory well, unless it also batches better than the unbounded
run's scheduler does; the solo bound ("gain bound", every session alone on an idle GPU) caps
every schedule. fcfs and workflow run the unbounded trace to the same mean (checked per row:
"unbounded fcfs = workflow"); the table shows workflow's.

Columns: fcfs+lru mean / p95 TCT at the point; workflow's (its defaults, or `--params`); the
mean and p95 gains; the solo bound and the gain it allows; workflow's unbounded mean TCT;
the KV ceiling; workflow's share of that ceiling reached (ln gain / ln ceiling); workflow's
admission wait a session at the point.
"""

from __future__ import annotations

import json
import math
import sys

from ascii_args import int_arg
from scheduling import PRESET, capacity, trace
from scheduling_bound import mean_tct_bound
from scheduling_fit import geo
from scheduling_overflow import point_params, point_parser, point_seeds

from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.workers import worker_pool

UNBOUNDED = 100  # x the point's capacity: no trace of the grid comes near filling it


def run_arm(family: str, load: float, frac: float, seed: int, scheduler: str, policy: str,
            params: dict | None, mult: int, sessions: int | None = None) -> dict:
    """One run: mean and p95 TCT and the admission wait a session (workflow); for fcfs at
    the point's capacity, the solo bound too."""
    s = trace(family, seed, load, sessions)
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(s, frac) * mult, policy=policy,
                    scheduler=scheduler, scheduler_params=params)
    sim = Simulator(s, cfg)
    r = sim.run().to_dict()
    out = {"mean": r["tct_mean_s"], "p95": r["tct_p95_s"],
           "wait": getattr(sim.scheduler, "admission_wait_s", 0.0) / len(s)}
    if scheduler == "fcfs" and mult == 1:
        out["solo"] = mean_tct_bound(s, cfg.cost, cfg.num_gpu_blocks,
                                     cfg.max_num_batched_tokens)["solo_s"]
    return out


def _arms(params: dict | None, policy: str) -> list[tuple[str, str, dict | None, int]]:
    return [("fcfs", "lru", None, 1), ("workflow", policy, params, 1),
            ("fcfs", "lru", None, UNBOUNDED), ("workflow", policy, params, UNBOUNDED)]


def _one(task: tuple) -> tuple[tuple, dict]:
    (family, load, frac, seed, sessions), arm = task
    return task, run_arm(family, load, frac, seed, *arm, sessions=sessions)


def seed_row(f: dict, w: dict, fu: dict, wu: dict) -> dict:
    """The figures of one seed from its four runs (fcfs+lru and workflow, at the point and
    unbounded)."""
    ceiling = f["mean"] / wu["mean"]
    gain = f["mean"] / w["mean"]
    return {"gain": gain, "p95_gain": f["p95"] / w["p95"], "bound": f["mean"] / f["solo"],
            "ceiling": ceiling, "reached": share_reached(gain, ceiling),
            "same_unbounded": fu["mean"] == wu["mean"]}


def share_reached(gain: float, ceiling: float) -> float:
    """ln gain / ln ceiling: the share of the KV ceiling reached (nan without a ceiling)."""
    return math.log(gain) / math.log(ceiling) if ceiling > 1 else math.nan


def table(family: str, load: float, frac: float, seeds: list[int], params: dict | None,
          workers: int = 2, sessions: int | None = None, policy: str = "graph") -> list[str]:
    """The per-seed rows and the geomean row (module docstring); `policy`: the workflow
    arm's."""
    arms = _arms(params, policy)
    tasks = [((family, load, frac, sd, sessions), a) for sd in seeds for a in arms]
    with worker_pool(workers) as ex:
        got = dict(ex.map(_one, tasks))
    lines = ["| seed | fcfs+lru mean / p95 s | workflow mean / p95 s | gain | p95 gain | solo "
             "s | gain bound | unbounded KV mean s | KV ceiling | share reached | workflow "
             "admission wait s | unbounded fcfs = workflow |", "|" + "---|" * 12]
    rows = []
    for sd in seeds:
        f, w, fu, wu = (got[((family, load, frac, sd, sessions), a)] for a in arms)
        r = seed_row(f, w, fu, wu)
        rows.append(r)
        lines.append(f"| {sd} | {f['mean']:.2f} / {f['p95']:.2f} | {w['mean']:.2f} / "
                     f"{w['p95']:.2f} | {r['gain']:.2f}x | {r['p95_gain']:.2f}x | "
                     f"{f['solo']:.2f} | {r['bound']:.2f}x | {wu['mean']:.2f} | "
                     f"{r['ceiling']:.2f}x | {r['reached']:.2f} | {w['wait']:.2f} | "
                     f"{'yes' if r['same_unbounded'] else 'no'} |")
    g = {k: geo(r[k] for r in rows) for k in ("gain", "p95_gain", "bound", "ceiling")}
    lines.append(f"| geomean | | | {g['gain']:.2f}x | {g['p95_gain']:.2f}x | | "
                 f"{g['bound']:.2f}x | | {g['ceiling']:.2f}x | "
                 f"{share_reached(g['gain'], g['ceiling']):.2f} | | |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = point_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=None,
                    help="workflow scheduler parameters, a JSON object (default: its defaults)")
    ap.add_argument("--workers", type=int_arg, default=2, help="simulator processes")
    a = ap.parse_args(argv)
    seeds = point_seeds(ap, a.seeds)
    params = point_params(ap, a.params)
    print(f"{a.family} {a.load:g}x {a.capacity:.0%}, workflow+{a.policy} "
          f"{json.dumps(params) if params else 'defaults'}")
    print("\n".join(table(a.family, a.load, a.capacity, seeds, params, a.workers,
                           policy=a.policy)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
