"""Eviction cost with thousands of paused sessions (issue 11): `allocate_slots` of a new
session under eviction, in ns per allocated block, for every online policy at each
paused-session count, side by side (the policies' timed allocations take turns, so each
ratio compares calls made under the same load), and the goals judged from the tables.

Run through bench/allocator.py, which owns the cache set-up it shares:

    python bench/allocator.py --eviction-scaling --paused 250,1000,4000,16000 --repeat 5 \
        --write-results
    python bench/allocator.py --eviction-scaling --paused 1000,4000,16000 --repeat 5 \
        --instructions 1000,4000,16000   # also instructions per block, under callgrind
    python bench/allocator.py --eviction-scaling --paused 4000 --profile ttl
    python bench/allocator.py --eviction-scaling --paused 4000 \
        --policies "lru,ttl,adaptive,adaptive[shadow_share=1]"   # settings side by side
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import operator
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from allocator import BS, SPEC, clock, write_section

from kvsaga import KVCacheManager
from kvsaga.policy import POLICIES, EvictionPolicy, make_policy

SCALING_SECTION = "## Eviction scaling with paused sessions"
SCALING_POLICIES = tuple(n for n, c in POLICIES.items() if not getattr(c, "needs_oracle", False))
TOOLS = ("search", "edit", "test", "shell", "browse")


def build(spec: str) -> str | EvictionPolicy:
    """A policy name, or a spec with constants (`adaptive[shadow_share=1]`, as
    bench/policies.py reads them) built into a policy."""
    if "[" not in spec:
        return spec
    from policies import parse_spec  # bench/ is on the path when run as a script

    name, params = parse_spec(spec)
    return make_policy(name, **params) if params else name


def build_paused(paused: int, policy: str | EvictionPolicy, per: int = 32
                 ) -> tuple[KVCacheManager, float]:
    """A cache of `paused` sessions of `per` blocks paused on tool calls 1 ms apart, in a
    pool that holds half of their contexts (later sessions evicted earlier ones): the state
    every eviction-scaling reading allocates in (here and bench/eviction_paired.py). The
    manager and the time after the last pause."""
    m = KVCacheManager(SPEC, paused * per // 2, policy=policy, clock=lambda: 0.0)
    ctx = per * BS
    now = 0.0
    for i in range(paused):  # later sessions evict earlier ones: half stay resident
        sid = f"p{i}"
        m.begin_step(sid, [i * ctx + j for j in range(ctx)], now=now, workflow=f"w{i % 3}")
        m.allocate_slots(sid, ctx, now=now)
        m.finish_step(sid, now=now, tool=TOOLS[i % len(TOOLS)])
        now += 1e-3
    return m, now


def bench_eviction_scaling(paused: int, policy: str | EvictionPolicy, repeat: int, per: int = 32,
                           new_blocks: int = 128, timer=None, step_timer=None
                           ) -> Iterator[tuple[float, float, float, float]]:
    """ns per allocated block of `allocate_slots` under eviction with `paused` sessions of
    `per` blocks paused on tool calls and half of all contexts resident: (all allocations
    at one instant, allocations 1 ms apart so that time-driven re-keying is included,
    amortized: the first figure plus the full re-key that relearning triggers, spread over
    its period, and the whole step 1 ms apart: `begin_step`, `allocate_slots` and
    `finish_step` timed together, so that a policy's work outside the allocation is seen
    too: adaptive's shadow caches replay each step in begin_step and finish_step).

    A generator: it builds the cache, then yields None after each timed allocation (so
    that `eviction_scaling` can interleave the policies' allocations under one load) and
    the figures last."""
    m, now = build_paused(paused, policy, per)
    ctx = per * BS
    yield None
    # The policies that keep an index: the policy itself, or adaptive's experts.
    indexed = [getattr(p, "policy", p) for p in getattr(m.policy, "experts", [m.policy])]
    indexed = [p for p in indexed if hasattr(p, "rekey_all")]
    best = [float("inf"), float("inf")]  # at one instant, 1 ms apart
    base, n = paused * ctx, new_blocks * BS
    step = float("inf")
    for k in range(3 * repeat + 1):
        apart = k >= repeat
        now += 1e-3 if apart else 0.0  # each of these 1 ms after the last: timers fire
        sid = f"new{k}"
        tokens = [base + k * n + j for j in range(n)]
        if 2 * repeat <= k < 3 * repeat:  # the whole step, 1 ms apart
            step = min(step, (step_timer or timed_step)(m, sid, tokens, now) / new_blocks)
            yield None
            continue
        m.begin_step(sid, tokens, now=now)
        if k == 3 * repeat:  # the last allocation re-keys every session, as relearning does
            for p in indexed:
                p.rekey_all()
        el = (timer or timed_allocation)(m, sid, n, now) / new_blocks
        if k < 2 * repeat:
            best[apart] = min(best[apart], el)
        m.finish_step(sid, now=now, tool="search")
        yield None
    amortized = best[0]
    if indexed:
        # Relearning re-keys every session once per relearn_share x sessions learning
        # events; each allocation here follows one (the step it serves began).
        amortized += max(el - best[1], 0.0) / relearn_period(m)
    yield best[0] * 1e9, best[1] * 1e9, amortized * 1e9, step * 1e9


# Read through before each timed call, so that every call starts with caches as cold at any
# session count: twice the 32 MiB last-level cache of the machine the figures come from.
SWEEP = bytes(range(256)) * (256 << 10)  # 64 MiB


def cold_caches() -> None:
    """Evict the CPU caches by reading SWEEP. (A garbage collection, used before, also
    evicts them, but by an amount that grows with the heap, so with the paused sessions:
    part of every policy's growth, lru's included, was the measurement's.)"""
    zlib.crc32(SWEEP)


def timed_allocation(m: KVCacheManager, sid: str, n: int, now: float) -> float:
    """CPU seconds of one allocate_slots, cold caches, with the garbage collector paused (as
    `timeit` does: a collection over the whole heap is not the policy's)."""
    gc.disable()
    try:
        cold_caches()
        t = clock()
        m.allocate_slots(sid, n, now=now)
        return clock() - t
    finally:
        gc.enable()


def timed_step(m: KVCacheManager, sid: str, tokens: list[int], now: float) -> float:
    """CPU seconds of a new session's whole step (begin_step, allocate_slots of its
    tokens, finish_step on a tool call), cold caches, the garbage collector paused."""
    gc.disable()
    try:
        cold_caches()
        t = clock()
        m.begin_step(sid, tokens, now=now)
        m.allocate_slots(sid, len(tokens), now=now)
        m.finish_step(sid, now=now, tool="search")
        return clock() - t
    finally:
        gc.enable()


def untimed_step(m: KVCacheManager, sid: str, tokens: list[int], now: float) -> float:
    """`timed_step`'s calls, not timed (callgrind counts allocations alone)."""
    m.begin_step(sid, tokens, now=now)
    m.allocate_slots(sid, len(tokens), now=now)
    m.finish_step(sid, now=now, tool="search")
    return 1.0


def profile_eviction(paused: int, policy: str, repeat: int, top: int = 25) -> str:
    """cProfile of one policy's timed same-instant allocations (the first table's), the
    cheaper half of them (the others include a full re-key): the functions with the most
    own time, in microseconds per allocation. The profiler's cost per call inflates the
    many small ones: read the order, not the sum."""
    import cProfile
    import pstats

    runs: list[tuple[float, cProfile.Profile]] = []

    def profiled(m: KVCacheManager, sid: str, n: int, now: float) -> float:
        if len(runs) >= repeat:  # only the allocations at one instant
            return timed_allocation(m, sid, n, now)
        prof = cProfile.Profile()
        gc.disable()
        try:
            cold_caches()
            t = clock()
            prof.enable()
            m.allocate_slots(sid, n, now=now)
            prof.disable()
            el = clock() - t
        finally:
            gc.enable()
        runs.append((el, prof))
        return el

    for _ in bench_eviction_scaling(paused, policy, repeat, timer=profiled):
        pass
    kept = sorted(runs, key=lambda r: r[0])[:max(repeat // 2, 1)]
    agg = pstats.Stats(kept[0][1])
    for _, prof in kept[1:]:
        agg.add(prof)
    k = len(kept)
    rows = sorted(((tt, ct, nc, where) for where, (_, nc, tt, ct, _) in agg.stats.items()),
                  reverse=True)[:top]
    lines = [f"{policy} at {paused:,} paused sessions, the cheaper {k} of {repeat} "
             f"allocations of 128 blocks ({sum(r[0] for r in kept) / k * 1e6:,.0f} us each, "
             "profiled): own / cumulative us per allocation, calls per allocation, function",
             ""]
    for tt, ct, nc, (path, line, fn) in rows:
        lines.append(f"{tt / k * 1e6:8.1f} {ct / k * 1e6:8.1f} {nc / k:7.1f}  "
                     f"{Path(path).name}:{line} {fn}")
    return "\n".join(lines)


def eviction_scaling(counts: list[int], repeat: int,
                     policies: tuple[str, ...] = SCALING_POLICIES) -> tuple[list[str], dict]:
    """The scaling tables (markdown lines) and their figures, one column per policy spec
    (`lru` among them: the ratios are to it)."""
    if "lru" not in policies:
        raise ValueError(f"the ratios are to lru: add it to the policies, got {policies!r}")
    figures: dict[str, dict[int, tuple[float, ...]]] = {p: {} for p in policies}
    for n in counts:
        # Every policy's cache is built first; then their timed allocations take turns,
        # so that each ratio compares calls made under the same load of the machine.
        runs = {p: bench_eviction_scaling(n, build(p), repeat) for p in policies}
        for run in runs.values():
            next(run)
        while runs:
            for p, run in list(runs.items()):
                out = next(run)
                if out is not None:
                    figures[p][n] = out
                    del runs[p]
    lines: list[str] = []
    for i, what in enumerate((
            "every allocation at the same instant",
            "allocations 1 ms apart (keys re-computed at their time-grid points included)",
            "amortized: the first table plus the full re-key that relearning does once per "
            "relearn_share x sessions learning events (one per allocation here), measured "
            "on the run's last allocation and spread over that period",
            "the whole step 1 ms apart (begin_step, allocate_slots and finish_step of the "
            "new session, timed together: a policy's work outside the allocation, as "
            "adaptive's shadow caches' replay of each step, included; lru's step pays the "
            "manager's own bookkeeping too)")):
        lines += [f"ns per allocated block, {what}:", "",
                  *_table(figures, counts, policies, i, "{:,.0f}")]
        lo, hi = (1000 if 1000 in counts else counts[0]), counts[-1]
        if hi != lo:
            lines += [f"Growth from {lo:,} to {hi:,} paused sessions: " + ", ".join(
                f"{p} {ratio(figures[p][hi][i] / figures[p][lo][i], 1.5)}" for p in policies)
                + ".", ""]
        lines += scaling_goals(figures, counts, i) + [""]
    return lines, figures


def scaling_goals(figures: dict, counts: list[int], i: int) -> list[str]:
    """Issue 11's goals: every policy <= 2x lru at 4,000 paused sessions, and flat from
    1,000 to 16,000 (here: growing no more than 1.5x, against a 16x growth in sessions)."""
    out = []
    if 4000 in counts:
        ratio = {p: figures[p][4000][i] / figures["lru"][4000][i] for p in figures}
        out.append("- every policy <= 2x lru at 4,000 paused sessions: "
                   + _judged(ratio, 2.0, "worst"))
    if 1000 in counts and 16000 in counts:
        growth = {p: figures[p][16000][i] / figures[p][1000][i] for p in figures}
        out.append("- flat from 1,000 to 16,000 (growth <= 1.5x): "
                   + _judged(growth, 1.5, "worst growth"))
    return out


def _judged(values: dict[str, float], bound: float, worst: str) -> str:
    """'**met**' or '**missed**', the worst value, and the policies over the bound."""
    top = max(values.values())
    over = [f"{p} {ratio(v, bound)}" for p, v in values.items() if v > bound]
    text = f"**{'met' if top <= bound else 'missed'}** ({worst} {ratio(top, bound)}"
    return text + (f"; over it: {', '.join(over)})." if over else ").")


def ratio(value: float, limit: float = 2.0) -> str:
    """`value` as a ratio: two decimals, or as many more as tell it from the goal's `limit`
    where two round it to that (three where it is the limit), so a cell shows the verdict."""
    d = 2
    while value != limit and d < 12 and f"{value:.{d}f}" == f"{limit:.{d}f}":
        d += 1
    return f"{value:.{3 if value == limit else d}f}x"


# log(16,000) / log(1,000): what a heap step's O(log n) alone could add from 1,000 to
# 16,000 sessions (a scan would add 16x).
LOG_GROWTH = math.log(16000) / math.log(1000)


def relearn_period(m: KVCacheManager) -> float:
    """Allocations between two relearning re-keys of every session in `m`'s policy (one
    learning event per allocation here; inf when it keeps no index: never)."""
    indexed = [getattr(p, "policy", p) for p in getattr(m.policy, "experts", [m.policy])]
    indexed = [p for p in indexed if hasattr(p, "rekey_all")]
    return max(indexed[0].relearn_share * len(indexed[0].groups), 1.0) if indexed else math.inf


def count_child(paused: int, specs: list[str], repeat: int, sweep: bool = False) -> None:
    """Run under callgrind by `instruction_counts`: each policy's cache is built in turn and
    all its 2 x `repeat` + 1 timed allocations (same instant, 1 ms apart, the full re-key)
    are made through `operator.call`, the one C function callgrind is told to count inside
    (--toggle-collect) and to dump after (one profile per call, numbered in call order), so
    only they are counted. With `sweep` (the cache-miss reading), each follows its own
    `operator.call` of `sim_cold_caches` (dumped too, and dropped by the reader): callgrind
    simulates the caches only while it counts, so the flush must be counted to happen.
    Prints each policy's relearning period (allocations), one JSON list, for the
    amortized figure."""
    periods = []
    for spec in specs:
        seen: list[KVCacheManager] = []

        def counted(m: KVCacheManager, sid: str, n: int, now: float, seen=seen) -> float:
            seen[:] = [m]
            if sweep:
                operator.call(sim_cold_caches)
            operator.call(m.allocate_slots, sid, n, now=now)
            return 1.0

        gc.disable()  # a collection inside a counted call is not the policy's work
        for _ in bench_eviction_scaling(paused, build(spec), repeat, timer=counted,
                                          step_timer=untimed_step):
            pass
        periods.append(relearn_period(seen[0]))
        gc.enable()
        gc.collect()
    print(json.dumps(periods))


def sim_cold_caches() -> None:
    """`cold_caches` for the simulated caches: one read of every 64-byte line of SWEEP
    (the simulator's caches are LRU with 64-byte lines; a byte a line flushes them as the
    whole read does, at 1/64 of the instructions under valgrind)."""
    bytes(SWEEP[::64])


# The caches callgrind simulates for `--cache-misses`: this machine's L1 (32 KiB, 8-way,
# per core) and its L3 as the last level (32 MiB, 16-way), given explicitly because
# valgrind 3.19 reads this host's L3 as 256 MiB, 1-way.
CACHE_SIM = ("--cache-sim=yes", "--I1=32768,8,64", "--D1=32768,8,64", "--LL=33554432,16,64")


def require_valgrind(flag: str) -> None:
    """Stop with a message naming the flag given when valgrind is missing: `scaling_main`
    asks before any timing, so the missing tool is not found minutes into a run."""
    if shutil.which("valgrind") is None:
        raise SystemExit(f"{flag} counts with valgrind's callgrind: install valgrind")


def parse_counts(flag: str, value: str) -> list[int]:
    """The paused-session counts of a COUNTS flag (e.g. '1000,4000,16000'), or SystemExit
    naming the flag and the value: `scaling_main` parses every COUNTS list before timing,
    so a typo such as '4k' is not found minutes later as a bare ValueError."""
    try:
        counts = [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise SystemExit(f"{flag} takes comma-separated integers (paused-session counts, "
                         f"each at least 1), got {value!r}")
    return counts


def instruction_counts(counts: list[int], policies: tuple[str, ...], repeat: int = 3,
                       new_blocks: int = 128, cache_misses: bool = False
                       ) -> tuple[list[str], dict]:
    """Instructions per allocated block, counted by callgrind (valgrind), one child process
    per count, in the three readings of the time tables: the fewest of `repeat` allocations
    at one instant (the first after the cache is built re-keys every session, as a
    relearning does), the fewest of `repeat` 1 ms apart, and the first plus the last
    allocation's full re-key spread over the relearning period. A figure that the load of
    the machine does not move, and that grows only with the work done (not with cache
    misses). With `cache_misses`, instead: last-level cache misses per allocated block
    (instruction fetches, data reads and writes), each allocation after a flush of the
    simulated caches (`CACHE_SIM`), as each timed call follows the 64 MiB read: a count of
    the memory lines a cold call touches, which the time tables pay and the instruction
    counts do not see. The tables' markdown lines and {policy: {count: (same, apart,
    amortized)}}."""
    require_valgrind("--cache-misses" if cache_misses else "--instructions")
    figures: dict[str, dict[int, tuple[float, float, float]]] = {p: {} for p in policies}
    per = 2 * repeat + 1
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            dumps, periods = _callgrind_calls(Path(tmp) / str(n), n, policies, repeat,
                                              cache_misses)
            calls = [_dump_figure(f.read_text(), cache_misses) for f in dumps]
            for i, p in enumerate(policies):
                c = [x / new_blocks for x in calls[i * per:(i + 1) * per]]
                same, apart = min(c[:repeat]), min(c[repeat:2 * repeat])
                figures[p][n] = (same, apart, same + max(c[-1] - apart, 0.0) / periods[i])
    what = ("Last-level cache misses (instruction fetches, data reads and writes) per "
            "allocated block, each allocation after a flush of the simulated caches"
            if cache_misses else "Instructions per allocated block")
    fmt = "{:,.1f}" if cache_misses else "{:,.0f}"
    lines = []
    for i, when in enumerate(("allocations at one instant", "allocations 1 ms apart",
                              "amortized (the full re-key of relearning spread over its "
                              "period)")):
        lines += [f"{what}, {when} (callgrind; a count, so the machine's load does not "
                  "move it):", "", *_table(figures, counts, policies, i, fmt)]
        if 1000 in counts and 16000 in counts and not cache_misses:
            growth = {p: figures[p][16000][i] / figures[p][1000][i] for p in policies}
            lines += ["Growth from 1,000 to 16,000 paused sessions: " + ", ".join(
                f"{p} {g:.3f}x" for p, g in growth.items()) + ".", "",
                f"- flat from 1,000 to 16,000 in work done (growth <= {LOG_GROWTH:.2f}x, "
                "log 16,000 / log 1,000): " + _judged(growth, LOG_GROWTH, "worst growth")]
        if 4000 in counts:
            ratio = {p: figures[p][4000][i] / figures["lru"][4000][i] for p in policies}
            lines.append(f"- in {'cache misses' if cache_misses else 'instructions'}, every "
                         "policy <= 2x lru at 4,000 paused sessions: "
                         + _judged(ratio, 2.0, "worst"))
        lines.append("")
    return lines, figures


def _callgrind_calls(out: Path, paused: int, policies: tuple[str, ...], repeat: int,
                     cache_misses: bool) -> tuple[list[Path], list[float]]:
    """Run `count_child` under callgrind into the new folder `out`: the dumps of the
    counted allocations (2 x `repeat` + 1 per policy, in order; the flushes' dumps left
    out) and each policy's relearning period."""
    here = Path(__file__).resolve().parent
    per = 2 * repeat + 1
    calls_per = 2 if cache_misses else 1  # (with a flush counted before each allocation)
    child = (f"import sys; sys.path.insert(0, {str(here)!r}); "
             f"from eviction_scaling import count_child; "
             f"count_child({paused}, {list(policies)!r}, {repeat}, {cache_misses})")
    out.mkdir()
    r = subprocess.run(
        ["valgrind", "--tool=callgrind", *(CACHE_SIM if cache_misses else ()),
         "--collect-atstart=no", "--toggle-collect=_operator_call",
         "--dump-after=_operator_call",
         f"--callgrind-out-file={out}/cg.out", sys.executable, "-c", child],
        capture_output=True, text=True, check=False)
    # One dump per counted call, cg.out.1, cg.out.2, ...: its "totals:" line.
    dumps = sorted(out.glob("cg.out.*"), key=lambda f: int(f.suffix[1:]))
    dumps = [f for f in dumps if _dump_figure(f.read_text(), cache_misses) is not None]
    dumps = dumps[calls_per - 1::calls_per]
    if r.returncode or len(dumps) != per * len(policies) or not min(
            _dump_figure(f.read_text(), cache_misses) for f in dumps):
        raise SystemExit(f"callgrind counted {len(dumps)} calls at {paused} paused "
                         f"sessions, not {per} per policy (this Python needs its "
                         f"_operator_call symbol): {r.stderr[-2000:]}")
    return dumps, json.loads(r.stdout.strip().splitlines()[-1])


# A function's line of callgrind_annotate: three counts, each maybe with its share, then
# the function and its object file.
_COUNT = r"([\d,]+|\.)\s*(?:\([^)]*\))?\s+"
_ANNOTATED = re.compile(r"\s*" + _COUNT * 3 + r"(\S.*)$")
# Where a miss is charged in `miss_split`: the object file of the function it occurs in.
PARTS = (("interpreter", r"libpython|/Python-\d"), ("index (C++)", "_evict"),
         ("manager core (C++)", "_kvcore"), ("libc, libm", "libc.so|libm.so"))


def miss_split(paused: int, policies: tuple[str, ...], repeat: int = 3,
               new_blocks: int = 128) -> list[str]:
    """Where each policy's last-level cache misses per allocated block go (`--cache-misses`'
    count, the fewest of its `repeat` allocations at one instant), split by the object file
    of the function that misses (callgrind_annotate): the Python interpreter (the Python code
    run and the objects it reads), the index (kvsaga._evict), the manager's C++ core, libc
    and libm, the rest (lru among `policies`: the totals are to it). Markdown lines."""
    if "lru" not in policies:
        raise ValueError(f"--miss-split: the totals are to lru: add it, got {policies!r}")
    require_valgrind("--miss-split")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        dumps, _ = _callgrind_calls(Path(tmp) / "c", paused, policies, repeat, True)
        per = 2 * repeat + 1
        for i, p in enumerate(policies):
            best = min(dumps[i * per:i * per + repeat],
                       key=lambda f: _dump_figure(f.read_text(), True))
            text = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100",
                                   "--show=ILmr,DLmr,DLmw", str(best)],
                                  capture_output=True, text=True, check=True).stdout
            rows.append((p, [x / new_blocks for x in _miss_parts(text)]))
    totals = {p: sum(parts) for p, parts in rows}
    head = " | ".join(name for name, _ in PARTS)
    lines = [f"Last-level cache misses per allocated block at {paused:,} paused sessions, "
             "allocations at one instant, by where they occur (callgrind_annotate's "
             "functions by object file; a count, so the machine's load does not move it):",
             "", f"| policy | {head} | other | total | total / lru |",
             "|---|" + "---:|" * (len(PARTS) + 3)]
    for p, parts in rows:
        lines.append(f"| {p} | " + " | ".join(f"{x:,.1f}" for x in parts)
                     + f" | {totals[p]:,.1f} | {ratio(totals[p] / totals['lru'])} |")
    return lines + [""]


def _miss_parts(text: str) -> list[int]:
    """callgrind_annotate's misses by `PARTS` (a function's object file), then the rest; the
    call chain's roots, listed with the totals as their own, left out (counted before)."""
    parts, rows = [0] * (len(PARTS) + 1), [(m, m.groups()[:3]) for m in map(
        _ANNOTATED.match, text.splitlines()) if m is not None]
    totals = next(c for m, c in rows if "PROGRAM TOTALS" in m[4])
    for m, c in (r for r in rows if r[1] != totals):  # (PROGRAM TOTALS itself too)
        n = sum(0 if v == "." else int(v.replace(",", "")) for v in c)
        j = next((j for j, (_, pat) in enumerate(PARTS) if re.search(pat, m[4])), len(PARTS))
        parts[j] += n
    return parts


def _dump_figure(text: str, cache_misses: bool) -> int | None:
    """A callgrind dump's instructions, or with `cache_misses` its last-level misses
    (ILmr + DLmr + DLmw), from its "events:" and "totals:" lines (None: no totals)."""
    m = re.search(r"^totals: ([\d ]+)", text, re.M)
    if m is None:
        return None
    values = [int(x) for x in m.group(1).split()]
    if not cache_misses:
        return values[0]
    names = re.search(r"^events: (.+)$", text, re.M).group(1).split()
    got = dict(zip(names, values + [0] * (len(names) - len(values)), strict=True))
    return got["ILmr"] + got["DLmr"] + got["DLmw"]


def _table(figures: dict, counts: list[int], policies: tuple[str, ...], i: int,
           fmt: str) -> list[str]:
    """A markdown table of reading `i` of `figures`, one row per count, and its worst
    ratio to lru."""
    cols = " | ".join(policies)
    lines = [f"| paused sessions | {cols} | worst / lru |",
             "|---:|" + "---:|" * (len(policies) + 1)]
    for n in counts:
        worst = max(figures[p][n][i] for p in policies)
        cells = " | ".join(fmt.format(figures[p][n][i]) for p in policies)
        lines.append(f"| {n:,} | {cells} | {ratio(worst / figures['lru'][n][i])} |")
    return lines + [""]


def scaling_main(args: argparse.Namespace) -> None:
    from policies import split_specs

    # Every flag is checked before the timed run, which takes minutes.
    counts = parse_counts("--paused", args.paused)
    instr = parse_counts("--instructions", args.instructions) if args.instructions else []
    miss = parse_counts("--cache-misses", args.cache_misses) if args.cache_misses else []
    for flag, given in (("--instructions", instr), ("--cache-misses", miss)):
        if given:
            require_valgrind(flag)
    policies = tuple(split_specs(args.policies)) if args.policies else SCALING_POLICIES
    if args.policies and (args.write or args.write_results):
        raise SystemExit("--policies compares settings: its tables are printed, not "
                         "written (RESULTS.md's section is every policy at its defaults)")
    t = time.perf_counter()
    lines, figures = eviction_scaling(counts, args.repeat, policies)
    wall = time.perf_counter() - t
    cmd = (f"python bench/allocator.py --eviction-scaling --paused {args.paused} --repeat "
           f"{args.repeat}" + (f' --policies "{args.policies}"' if args.policies else "")
           + (f" --sweep-mib {args.sweep_mib}" if getattr(args, "sweep_mib", None) else ""))
    counted: dict = {}
    misses: dict = {}
    if args.instructions:
        cmd += f" --instructions {args.instructions}"
        t = time.perf_counter()
        more, counted = instruction_counts(instr, policies)
        lines += more
        wall_ir = time.perf_counter() - t
    if args.cache_misses:
        cmd += f" --cache-misses {args.cache_misses}"
        t = time.perf_counter()
        more, misses = instruction_counts(miss, policies, cache_misses=True)
        lines += more
        wall_ir = (wall_ir if args.instructions else 0.0) + time.perf_counter() - t
    body = "\n".join([
        f"`{cmd}` ({wall:.0f} s timed"
        + (f", {wall_ir:.0f} s under callgrind" if args.instructions or args.cache_misses
           else "")
        + f", Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}; 2 shared cores, so times move "
        "by tens of percent between runs: read the ratios). `allocate_slots` of a new 128-block "
        "session under eviction, best of the repeats, in CPU time, each timed call after a "
        f"{len(SWEEP) >> 20} MiB read that leaves the caches as cold at every session count (a "
        "garbage collection did that before, by an amount that grew with the heap); sessions of 32"
        " blocks paused on tool calls 1 ms apart, half of all contexts resident. The policies' "
        "timed allocations take turns, so each ratio compares calls made under the same load. Flat"
        " means no algorithmic growth: instructions per allocated block (`--instructions`, a "
        "count) that grow no more than an O(log n) heap step could. Time per block grows also with"
        " cache and TLB misses as the tables outgrow the caches: lru, whose instructions per block"
        " do not grow, shows how much. Allocations 1 ms apart: about 45 of 4,000 paused sessions "
        "cross a point of the elapsed-time grid each millisecond here (a number that grows as log "
        "n, their pauses being 1 ms apart), each a re-key, all charged to one allocation of 128 "
        "blocks; an engine that allocates fewer blocks per millisecond pays more per block for the"
        " same crossings, one that allocates more pays less. The index re-keys a crossing session "
        "itself from its class's key (kvsaga/policy/search.py, class keys) while the policy's "
        "statistics hold still; after they change (anything learned, a normalizer step, adaptive's"
        " leader change) a class's keys are computed again in Python as its sessions reach grid "
        "points (ttl and graph: once per class and grid point; saga: once per class). A full "
        "re-key (relearning, a normalizer or rent step) and many sessions due at once (an expert "
        "of adaptive that led no search for an epoch) key one session of each class in Python and "
        "the index re-keys the rest of the class from it (kvsaga/policy/search.py "
        "`_rekey_by_class`); the amortized reading's relearning forgets the class keys first, as "
        "new statistics do. The bench learns nothing between its allocations (its steps start new "
        "sessions); traffic whose steps resume paused sessions changes ttl's and graph's "
        "statistics at every resume, and pays Python re-keys between. The whole-step reading times"
        " a new session's begin_step, allocate_slots and finish_step together, 1 ms apart: the "
        "allocation readings see only allocate_slots, while adaptive's shadow caches (its default)"
        " evict inside begin_step and finish_step.",
        "", *lines])
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": cmd, "wall_s": wall, "figures": figures, "instructions": counted,
             "cache_misses": misses},
            indent=1), encoding="utf-8")
    if args.write or args.write_results:
        write_section(SCALING_SECTION, body, Path(__file__).resolve().parent / "RESULTS.md")


def python_keyed(paused: int, policy: str, repeat: int = 32) -> dict[str, float]:
    """Load-free counts behind the 1 ms reading (saga's growth, twenty-ninth session): over
    `repeat` allocations 1 ms apart after the cache is built (each after one untimed
    allocation, the state the paired reading times), per allocation: the searches whose index
    call handed due sessions back to Python (`due_passes`: a second round of Python calls,
    search.py `_drop_or_rekey`, `_rekey`, `_take_runs`), the due sessions so handed back
    (`due`), those among them past their TTL (`due_expired`, saga only: its record's limit
    is its TTL), the sessions keyed in Python in all (`keyed`) and the full re-keys
    (`full`). Counted by wrapping the policy's own methods on the instance (the class's
    methods, which a fast path checks, are untouched)."""
    m, now = build_paused(paused, build(policy))
    p = m.policy
    counts = dict.fromkeys(("due_passes", "due", "due_expired", "keyed", "full"), 0)
    keys, drop_or_rekey, rekey_all_now = p._keys, p._drop_or_rekey, p._rekey_all_now
    ttl_s = getattr(p, "ttl_s", None)

    def counted_keys(sids, now, base_of=None):
        sids = list(sids)
        counts["keyed"] += sum(1 for s in sids if s in p.groups)
        return keys(sids, now, base_of)

    def counted_drop_or_rekey(sids, now):
        if not counting[0]:
            return drop_or_rekey(sids, now)
        counts["due_passes"] += bool(sids)
        counts["due"] += len(sids)
        for s in sids:
            v = p.views.get(s)
            if ttl_s is not None and v is not None and not v.needed_now and (
                    now - v.paused_at > ttl_s(v.tool, p._norm[0], v.hint.expected_s)):
                counts["due_expired"] += 1
        return drop_or_rekey(sids, now)

    def counted_rekey_all_now(*a, **k):
        counts["full"] += 1
        return rekey_all_now(*a, **k)

    counting = [False]
    p._keys, p._drop_or_rekey, p._rekey_all_now = (
        counted_keys, counted_drop_or_rekey, counted_rekey_all_now)
    ctx, n = 32 * BS, 128 * BS
    base = paused * ctx
    for k in range(repeat + 1):
        if k == 1:
            counting[0] = True
            counts = dict.fromkeys(counts, 0)
        now += 1e-3
        sid = f"new{k}"
        m.begin_step(sid, [base + k * n + j for j in range(n)], now=now)
        m.allocate_slots(sid, n, now=now)
        m.finish_step(sid, now=now, tool="search")
    return {k: v / repeat for k, v in counts.items()}


def main(argv: list[str] | None = None) -> None:
    """`python bench/eviction_scaling.py --python-keyed 1000,4000,16000 [--policies ...]`:
    `python_keyed`'s counts per allocation, one line per policy and count."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--python-keyed", metavar="COUNTS", required=True)
    ap.add_argument("--policies", default="saga,ttl,graph")
    ap.add_argument("--repeat", type=int, default=32)
    args = ap.parse_args(argv)
    from policies import split_specs

    for spec in split_specs(args.policies):
        for paused in parse_counts("--python-keyed", args.python_keyed):
            c = python_keyed(paused, spec, args.repeat)
            print(f"{spec:>24} {paused:>6,} paused: per allocation 1 ms apart, "
                  + ", ".join(f"{k} {v:.2f}" for k, v in c.items()))


if __name__ == "__main__":  # (bench/ is on the path when run as a script)
    main()
