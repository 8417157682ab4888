"""Eviction cost counted, not timed (issue 11): instructions and last-level cache misses per
allocated block under valgrind's callgrind, for bench/eviction_scaling.py's readings
(`--instructions`, `--cache-misses`, `--miss-split`). A count that the machine's load does not
move, beside the time tables that it does.

Split from bench/eviction_scaling.py (session 33) by concept: that module builds the paused
sessions and times them; this one runs the same allocations in a child process under
callgrind (`count_child`, counted only inside `operator.call`) and reads its dumps
(`_callgrind_calls`, `_dump_figure`, `_miss_parts`). bench/eviction_split.py reads the same
dumps for its own splits.
"""

from __future__ import annotations

import gc
import json
import math
import operator
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import eviction_scaling as scaling
from eviction_scaling import (
    _judged,
    _table,
    bench_eviction_scaling,
    build,
    ratio,
    relearn_period,
    untimed_step,
)

from kvsaga import KVCacheManager

# log(16,000) / log(1,000): what a heap step's O(log n) alone could add from 1,000 to
# 16,000 sessions (a scan would add 16x).
LOG_GROWTH = math.log(16000) / math.log(1000)


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
    bytes(scaling.SWEEP[::64])  # bench/allocator.py --sweep-mib may resize it


# The caches callgrind simulates for `--cache-misses`: this machine's L1 (32 KiB, 8-way,
# per core) and its L3 as the last level (32 MiB, 16-way), given explicitly because
# valgrind 3.19 reads this host's L3 as 256 MiB, 1-way.
CACHE_SIM = ("--cache-sim=yes", "--I1=32768,8,64", "--D1=32768,8,64", "--LL=33554432,16,64")


def require_valgrind(flag: str) -> None:
    """Stop with a message naming the flag given when valgrind is missing: `scaling_main`
    asks before any timing, so the missing tool is not found minutes into a run."""
    if shutil.which("valgrind") is None:
        raise SystemExit(f"{flag} counts with valgrind's callgrind: install valgrind")


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
             f"from eviction_callgrind import count_child; "
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


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(
        __file__, __doc__, "bench/eviction_scaling.py", "bench/allocator.py"))
