"""Each pressured case judged at a neighbourhood of pool sizes, not at one (`--smooth`).

Why: one block more or less of pool moves a single case's recomputation by up to ~2x
(bench/policies_chaos.py `--jitter`, seen seeds 911, 912: over nine pool sizes within 1.2%
of a case's, each policy spans ~2x). A miss lengthens a step, which moves every later
admission, so the stream of steps, and with it what any ranking loses, changes abruptly
with capacity. "<= 1.0x of the best of lru, saga and ttl at one pool size" then compares
single draws, and the least of three draws sits low in each case's band: a policy that is
at par in expectation exceeds it somewhere by luck. The smoothed figure of a (case,
policy) is its mean recomputed tokens over `SMOOTH_OFFSETS`, five pool sizes within +-2% of
the case's (chosen in the sixteenth session, 2026-12-02, before any run under it, and not
changed after): the ratio is that mean over the least of lru's, saga's and ttl's means on
the same sizes, a policy's expected loss around this capacity against the best baseline's.

The sizes are round(B * (1 + d)) for d in -2%, -1%, 0, +1%, +2% of the case's pool B (its
capacity share of the peak working set, floored at the longest session + 1 block). Where
the smallest would fall below that floor (a session could never run), the five sizes are
shifted up together until the smallest is the floor, so every case has five distinct sizes
spanning 4%. A size equal to the case's own pool reuses the single-size run's row.

Only the pressured cases (lru hit rate in `HIT_RANGE` at the case's own pool, one per
distinct pool size, as the single-size verdict counts them) get the extra sizes, and only
for the policies the verdict needs: lru, saga and ttl (the reference) and the policies being
judged (the evaluation: `DEFAULT_POLICY` and `graph`; `--tune`: the candidates given). Offline
references are not smoothed. Both verdicts are printed: per pool size, as issue 11 states
the goal, and smoothed.
"""

from __future__ import annotations

import time
from statistics import mean

import policies as P  # bench/ is on the path when run as a script
from policies_verdict import ranking, wins

from kvsaga.policy import DEFAULT_POLICY
from kvsaga.workers import worker_pool

SMOOTH_OFFSETS = (-0.02, -0.01, 0.0, 0.01, 0.02)


def pool_sizes(blocks: int, longest: int) -> list[int]:
    """The five pool sizes of a case whose own pool is `blocks` (module docstring)."""
    sizes = [round(blocks * (1 + d)) for d in SMOOTH_OFFSETS]
    shift = max(0, longest + 1 - sizes[0])
    return [s + shift for s in sizes]


def smooth_policies(policies: list[str], tune: bool) -> list[str]:
    """What the smoothed pass runs: the baselines and the policies judged, in `policies`'
    order where they are in it."""
    judged = [p for p in policies if p not in P.OFFLINE] if tune else [DEFAULT_POLICY, "graph"]
    return list(dict.fromkeys([*P.BASELINES, *judged]))


def tasks(rows: list[dict], policies: list[str]) -> list[tuple]:
    """(trace, seed, capacity, policy, pool size) for every size of every pressured case
    that the single-size rows do not hold already."""
    by = P._index(rows)
    out = []
    for case in P.in_range(rows):
        nominal = by[(*case, "lru")]
        for size in pool_sizes(nominal["num_gpu_blocks"], nominal["longest"]):
            if size != nominal["num_gpu_blocks"]:
                out += [(*case, p, size) for p in policies]
    return out


def run_smooth(rows: list[dict], policies: list[str], workers: int
               ) -> tuple[list[dict], float]:
    """The extra sizes' rows, and the seconds they took."""
    t = time.perf_counter()
    todo = tasks(rows, policies)
    with worker_pool(workers) as pool:
        extra = list(pool.map(P._run, todo))
    return extra, time.perf_counter() - t


def smoothed(rows: list[dict], extra: list[dict]) -> list[dict]:
    """Per (case, policy) that ran at every size of its case: the single-size row with its
    recomputed tokens replaced by their mean over the sizes (and `sizes` added)."""
    got: dict[tuple, dict[int, float]] = {}
    for r in [*rows, *extra]:
        key = (r["trace"], r["seed"], r["frac"], r["policy"])
        got.setdefault(key, {})[r["num_gpu_blocks"]] = r["recomputed_tokens"]
    out = []
    for key, row in P._index(rows).items():
        if "longest" not in row:
            continue
        sizes = pool_sizes(row["num_gpu_blocks"], row["longest"])
        have = got[key]
        if all(s in have for s in sizes):
            out.append({**row, "recomputed_tokens": mean(have[s] for s in sizes),
                        "sizes": sizes})
    return out


def markdown(srows: list[dict], policies: list[str], wall_s: float, judged: list[str]
             ) -> list[str]:
    """The smoothed tables and verdicts (evaluation and tuning alike)."""
    run = [p for p in policies if any(r["policy"] == p for r in srows)]
    if not srows:
        return ["", "Smoothed over pool sizes: no pressured case, nothing smoothed."]
    out = ["", f"### Smoothed over pool sizes (`--smooth`: {wall_s / 60:.1f} min more)", "",
           "Each pressured case's recomputed tokens as the mean over five pool sizes within "
           "+-2% of its own (`SMOOTH_OFFSETS`, bench/policies_smooth.py: one block of pool "
           "swings a single case ~2x, so the mean measures the ranking rather than the "
           "draw), for " + ", ".join(f"`{p}`" for p in run) + "; in brackets the ratio to "
           "the least of lru's, saga's and ttl's means. `blocks` is the case's own pool:", ""]
    out += P.tables(srows, run)
    out += ["", "Smoothed, pressured cases:", ""]
    out += wins(srows, run)
    out += ["", *ranking(srows, run)]
    for label, subset in P.SEED_SETS:
        mine = [r for r in srows if r["seed"] in subset]
        if mine and len(mine) < len(srows):
            out += ranking(mine, run, label)
    for p in dict.fromkeys(judged):  # once each: the default is often `graph` itself
        if p not in run:
            continue
        out += ["", f"Smoothed goal for `{p}`:", ""]
        out += P.goals(srows, p)
        for label, subset in P.SEED_SETS:
            mine = [r for r in srows if r["seed"] in subset]
            if mine and len(mine) < len(srows):
                out += [f"- {label}:"] + ["  " + line for line in P.goals(mine, p)]
    return out


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/policies.py"))
