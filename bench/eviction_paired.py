"""Eviction cost with thousands of paused sessions, read in pairs (issue 11): every arm (a
policy spec at a paused-session count, plus a second `lru` arm, the A/A control) is timed in
the same rounds, and each figure is a ratio of two calls made in the same round, so a load
swing of the shared host that lasts longer than a round moves both sides of it.

Run through bench/allocator.py, which owns the cache set-up and the flags:

    python bench/allocator.py --eviction-scaling --paused 1000,4000,16000 --paired 128 \\
        --rounds-per-build 32 --policies lru,ttl,graph,saga,adaptive

How a run goes:
  - a build: for every paused-session count and every arm, a cache of that many sessions of
    32 blocks paused on tool calls, half of all contexts resident (bench/eviction_scaling.py
    `build_paused`, the tables' state); the arms of one count are built alike, so each holds
    the same state; then one untimed allocation per arm (the first after a build re-keys
    every session, as relearning does: the tables leave it out by taking their best);
  - a round: for each of the two readings (allocations at one instant; 1 ms apart, so that
    the time-driven re-keys are paid), every arm of every count allocates one new 128-block
    session under eviction, in an order shuffled afresh for each reading of each round (a
    seeded generator: no arm is always first after the previous arm's sweep), each
    allocation after the 64 MiB read that leaves the caches cold and with the garbage
    collector paused (`timed_allocation`, the tables' timer), in CPU ns per allocated block;
  - every `--rounds-per-build` rounds the caches are built again (each round's allocations
    add sessions and evict others: the state drifts from the one the tables describe).

What it prints, per reading and count: lru's median ns per block, and for every other arm
the median over rounds of (the arm's ns / lru's ns in the same round), with the interquartile
range and how many rounds exceed 2x; and from the lowest count (1,000 where given) to the
highest, each arm's growth relative to lru's: the median over rounds of (arm/lru at the high
count) / (arm/lru at the low count), all four from the same round. The A/A arm (`lru (A/A)`,
built and timed exactly as lru is) reads what the same code gives against itself: its
median and quartiles are the noise floor of every other cell.

The goals, judged from this reading:
  - at most 2x lru at 4,000 paused sessions: every arm's median ratio <= 2.0;
  - flat from the low count to the high: an arm's median relative growth is no more than
    1 + the width of the A/A arm's interquartile range of the same statistic, i.e. any growth
    over lru's is within the spread that lru shows against itself.
"""

from __future__ import annotations

import gc
import random
from collections.abc import Callable

from eviction_scaling import BS, build, build_paused, ratio, timed_allocation

from kvsaga import KVCacheManager

AA = "lru (A/A)"
READINGS = (("instant", "allocations at one instant"),
            ("apart", "allocations 1 ms apart (keys re-computed at their time-grid points "
                      "included)"))

Timer = Callable[[KVCacheManager, str, int, float], float]


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    """(lower quartile, median, upper quartile) of `xs`, by linear interpolation between
    the order statistics (numpy's default: position q x (n - 1) in the sorted values)."""
    if not xs:
        raise ValueError("quartiles of no values")
    s = sorted(xs)

    def at(q: float) -> float:
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return at(0.25), at(0.5), at(0.75)


class _Arm:
    """One arm's cache at one count: the manager, its clock and its next session number."""

    def __init__(self, paused: int, spec: str, per: int) -> None:
        self.m, self.now = build_paused(paused, build("lru" if spec == AA else spec), per)
        self.base = paused * per * BS  # the paused sessions' tokens end here
        self.k = 0

    def allocate(self, advance: float, new_blocks: int, timer: Timer | None) -> float | None:
        """One new session of `new_blocks` allocated under eviction `advance` s after the
        last, then paused on a tool call: its seconds by `timer` (None: not timed)."""
        self.now += advance
        n = new_blocks * BS
        sid = f"new{self.k}"
        tokens = [self.base + self.k * n + j for j in range(n)]
        self.k += 1
        self.m.begin_step(sid, tokens, now=self.now)
        if timer is None:
            self.m.allocate_slots(sid, n, now=self.now)
            el = None
        else:
            el = timer(self.m, sid, n, self.now)
        self.m.finish_step(sid, now=self.now, tool="search")
        return el


def paired_samples(counts: list[int], specs: tuple[str, ...], rounds: int,
                   rounds_per_build: int, seed: int = 0, per: int = 32,
                   new_blocks: int = 128, timer: Timer | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """The raw reading: {reading: {count: {arm: [ns per block, one per round]}}}, the arms
    being `specs` (lru among them) and the A/A lru arm; see the module's docstring."""
    if "lru" not in specs:
        raise ValueError(f"the ratios are to lru: add it to the policies, got {specs!r}")
    if AA in specs:
        raise ValueError(f"{AA!r} is the control arm's name, not a policy spec")
    if rounds < 1 or rounds_per_build < 1:
        raise ValueError(f"rounds and rounds per build must be at least 1, got {rounds}, "
                         f"{rounds_per_build}")
    arms = (*specs, AA)
    timer = timer or timed_allocation
    rng = random.Random(seed)
    out = {r: {n: {a: [] for a in arms} for n in counts} for r, _ in READINGS}
    cells = [(n, a) for n in counts for a in arms]
    state: dict[tuple[int, str], _Arm] = {}
    for r in range(rounds):
        if r % rounds_per_build == 0:
            state.clear()  # the old caches go before the new ones are built
            gc.collect()
            for n, a in cells:
                state[n, a] = _Arm(n, a, per)
            for n, a in cells:  # the first allocation after a build: a full re-key
                state[n, a].allocate(0.0, new_blocks, None)
            if progress:
                progress(f"built {len(cells)} caches for rounds {r + 1}-"
                         f"{min(r + rounds_per_build, rounds)} of {rounds}")
        for reading, _ in READINGS:
            order = cells[:]
            rng.shuffle(order)
            for n, a in order:
                el = state[n, a].allocate(1e-3 if reading == "apart" else 0.0, new_blocks,
                                          timer)
                out[reading][n][a].append(el * 1e9 / new_blocks)
    return out


def summarize(samples: dict) -> dict:
    """The paired figures of `paired_samples`' reading: per reading,
    {"lru_ns": {count: median}, "ratio": {count: {arm: (q1, median, q3, rounds over 2x)}},
     "excess": {count: {arm: median over rounds of the arm's ns - lru's}},
     "growth": {arm: (q1, median, q3)} relative to lru's (lowest count to highest; absent
     with one count), "raw_growth": {arm: (q1, median, q3)} of the arm's own ns}, every
    ratio taken within one round."""
    out = {}
    for reading, by_count in samples.items():
        counts = list(by_count)
        arms = [a for a in by_count[counts[0]] if a != "lru"]
        lru = {n: by_count[n]["lru"] for n in counts}
        rel = {n: {a: [x / y for x, y in zip(by_count[n][a], lru[n], strict=True)]
                   for a in arms} for n in counts}
        fig = {"lru_ns": {n: quartiles(lru[n])[1] for n in counts},
               "excess": {n: {a: quartiles([x - y for x, y in zip(by_count[n][a], lru[n],
                                                                   strict=True)])[1]
                              for a in arms} for n in counts},
               "ratio": {n: {a: (*quartiles(rel[n][a]), sum(x > 2.0 for x in rel[n][a]))
                             for a in arms} for n in counts}}
        lo, hi = _span(counts)
        if hi != lo:
            fig["growth"] = {a: quartiles([x / y for x, y in zip(rel[hi][a], rel[lo][a],
                                                                 strict=True)])
                             for a in arms}
            fig["raw_growth"] = {a: quartiles([x / y for x, y in zip(
                by_count[hi][a], by_count[lo][a], strict=True)]) for a in ["lru", *arms]}
        out[reading] = fig
    return out


def _span(counts: list[int]) -> tuple[int, int]:
    """The counts growth is read between: 1,000 (or the lowest) and the highest."""
    return (1000 if 1000 in counts else min(counts)), max(counts)


def goals(fig: dict, counts: list[int]) -> list[str]:
    """Issue 11's goals judged from one reading's `summarize` figures (markdown lines):
    every arm's median ratio <= 2x lru at 4,000; flat: every arm's median growth relative to
    lru's no more than 1 + the width of the A/A arm's interquartile range of it (the spread
    that lru shows against itself in one round's four calls)."""
    out = []
    if 4000 in fig["ratio"]:
        med = {a: v[1] for a, v in fig["ratio"][4000].items() if a != AA}
        top = max(med, key=med.get)
        over = [f"{a} {ratio(v)}" for a, v in med.items() if v > 2.0]
        out.append(f"- every policy's median <= 2x lru at 4,000 paused sessions: "
                   f"**{'missed' if over else 'met'}** (worst {top} {ratio(med[top])}"
                   + (f"; over it: {', '.join(over)})." if over else ")."))
    if "growth" in fig:
        lo, hi = _span(counts)
        q1, _, q3 = fig["growth"][AA]
        bound = 1.0 + (q3 - q1)
        med = {a: v[1] for a, v in fig["growth"].items() if a != AA}
        top = max(med, key=med.get)
        over = [f"{a} {v:.3f}x" for a, v in med.items() if v > bound]
        out.append(f"- flat from {lo:,} to {hi:,} (median growth relative to lru's <= 1 + the "
                   f"A/A arm's interquartile width of it, {bound:.3f}x): "
                   f"**{'missed' if over else 'met'}** (worst {top} {med[top]:.3f}x"
                   + (f"; over it: {', '.join(over)})." if over else ")."))
    return out


def report(samples: dict, rounds_per_build: int) -> list[str]:
    """Markdown lines: one table per reading (see the module's docstring), the growth, the
    goals judged."""
    figs = summarize(samples)
    lines = []
    for reading, what in READINGS:
        fig = figs[reading]
        counts = list(fig["ratio"])
        arms = list(fig["ratio"][counts[0]])
        rounds = len(samples[reading][counts[0]]["lru"])
        lines += [f"Paired, {what}: lru's median ns per allocated block, and each arm's "
                  f"median over {rounds} rounds of its ns / lru's in the same round "
                  f"[interquartile range] (rounds over 2x); caches rebuilt every "
                  f"{rounds_per_build} rounds:", "",
                  "| paused sessions | lru ns | " + " | ".join(arms) + " |",
                  "|---:|---:|" + "---:|" * len(arms)]
        for n in counts:
            cells = " | ".join(f"{m:.2f}x [{q1:.2f}-{q3:.2f}] ({k})"
                               for q1, m, q3, k in (fig["ratio"][n][a] for a in arms))
            lines.append(f"| {n:,} | {fig['lru_ns'][n]:,.0f} | {cells} |")
        lines += ["", "The same rounds as a difference, median over rounds of the arm's ns - "
                  "lru's in the same round, per block (a slowdown that adds to both sides "
                  "moves the ratio, not this): " + "; ".join(
                      f"{n:,}: " + ", ".join(f"{a} {fig['excess'][n][a]:+,.0f}" for a in arms)
                      for n in counts) + ".", ""]
        if "growth" in fig:
            lo, hi = _span(counts)
            lines += [f"Growth from {lo:,} to {hi:,} paused sessions, median over rounds "
                      "[interquartile range]; relative to lru's ((arm/lru at "
                      f"{hi:,}) / (arm/lru at {lo:,}), one round's four calls): " + ", ".join(
                          f"{a} {m:.3f}x [{q1:.3f}-{q3:.3f}]"
                          for a, (q1, m, q3) in fig["growth"].items()) + "; the arm's own ns: "
                      + ", ".join(f"{a} {m:.3f}x [{q1:.3f}-{q3:.3f}]"
                                  for a, (q1, m, q3) in fig["raw_growth"].items()) + ".", ""]
        lines += goals(fig, counts) + [""]
    return lines


def paired_main(args) -> None:
    """bench/allocator.py --eviction-scaling --paired ROUNDS: every flag checked, then the
    reading printed (and its raw samples written to --json)."""
    import json
    import os
    import platform
    import sys
    import time
    from pathlib import Path

    import eviction_scaling
    from eviction_scaling import SCALING_POLICIES, parse_counts
    from policies import parse_spec, split_specs

    from kvsaga.policy import make_policy

    counts = parse_counts("--paused", args.paused)
    if len(set(counts)) != len(counts):
        raise SystemExit(f"--paused lists a count twice: {args.paused!r}")
    specs = tuple(split_specs(args.policies)) if args.policies else SCALING_POLICIES
    if len(set(specs)) != len(specs):
        raise SystemExit(f"--policies lists a spec twice: {args.policies!r} (the A/A control "
                         "arm is added by --paired itself)")
    if "lru" not in specs:
        raise SystemExit(f"--paired reads every policy against lru: add lru to --policies, "
                         f"got {args.policies!r}")
    for spec in specs:  # an unknown name or constant fails here, not after minutes of builds
        try:
            name, params = parse_spec(spec)
            make_policy(name, **params)
        except (ValueError, TypeError) as e:
            raise SystemExit(f"--policies: bad policy spec {spec!r}: {e}") from None
    per_build = args.rounds_per_build or 32
    seed = args.paired_seed or 0
    cmd = (f"python bench/allocator.py --eviction-scaling --paused {args.paused} --paired "
           f"{args.paired} --rounds-per-build {per_build}"
           + (f" --paired-seed {seed}" if seed else "")
           + (f' --policies "{args.policies}"' if args.policies else "")
           + (f" --sweep-mib {args.sweep_mib}" if args.sweep_mib else ""))
    load0 = os.getloadavg()
    t = time.perf_counter()
    samples = paired_samples(counts, specs, args.paired, per_build, seed,
                             progress=lambda s: print(s, file=sys.stderr, flush=True))
    wall = time.perf_counter() - t
    load1 = os.getloadavg()
    print("\n".join([
        f"`{cmd}` ({wall:.0f} s, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; load average "
        f"{load0[0]:.2f} before, {load1[0]:.2f} after). `allocate_slots` of a new 128-block "
        "session under eviction, CPU ns per allocated block, each timed call after a "
        f"{len(eviction_scaling.SWEEP) >> 20} MiB read that leaves the caches cold; sessions "
        "of 32 blocks paused on tool calls 1 ms apart, half of all contexts resident. Every "
        "arm is timed once a round per reading, in a shuffled order; `lru (A/A)` is lru "
        "again, the noise floor.", "", *report(samples, per_build)]))
    if args.json:
        Path(args.json).write_text(json.dumps({"command": cmd, "wall_s": wall,
                                               "rounds_per_build": per_build,
                                               "load": [load0, load1], "samples": {
                                                   r: {str(n): v for n, v in by.items()}
                                                   for r, by in samples.items()}}, indent=1),
                                   encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    """`python bench/eviction_paired.py RUN.json`: the report of a saved reading (`--json` of
    a --paired run) printed again, by this file's code."""
    import argparse
    import json
    import re
    from pathlib import Path

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("json", type=Path, help="the --json file of a --paired run")
    args = ap.parse_args(argv)
    try:
        saved = json.loads(args.json.read_text(encoding="utf-8"))
        samples = {r: {int(n): v for n, v in by.items()} for r, by in saved["samples"].items()}
    except (OSError, ValueError, KeyError, AttributeError) as e:
        raise SystemExit(f"{args.json}: not the --json of a --paired run ({e})") from None
    per_build = saved.get("rounds_per_build") or int(
        re.search(r"--rounds-per-build (\d+)", saved["command"]).group(1))
    print(f"`{saved['command']}`, reported again from {args.json.name}:", "",
          *report(samples, per_build), sep="\n")


if __name__ == "__main__":  # (bench/ is on the path when run as a script)
    main()
