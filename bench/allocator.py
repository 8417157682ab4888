"""Cost of the bookkeeping core per block, on this machine.

    python bench/allocator.py [--json PATH] [--blocks N] [--repeat R]

Measures (best of R runs, nanoseconds per block unless stated):
  allocate        BlockPool.allocate from a pool with free blocks
  allocate+evict  allocation when every block must first be evicted: LRU victims chosen,
                  unindexed and freed, then popped (the scope of vLLM's figure)
  allocate_slots+evict  the same through KVCacheManager.allocate_slots, which also builds
                  16 slot ids per block and registers each new full block
  cache block     register a full block whose hash is known in the prefix index (as vLLM's
                  figure: its hashes are computed when a request arrives)
  hash block      the SHA-256 chain hash of one block (vLLM's default hash: 1.2 us)
  lookup hit      begin_step of a prompt whose blocks are all cached (index hit + reclaim),
                  hashes already known (a resumed session)
  free            BlockPool.release_many of unhashed blocks to the free queue
  decode step     append_tokens + allocate_slots(1) for 256 running sessions (us per step)
Reference figures for vLLM's pure-Python BlockPool on a machine of this kind are in
bench/RESULTS.md beside ours.

    python bench/allocator.py --eviction-scaling [--paused 250,1000,4000,16000] [--write]

Eviction scaling (its own table): P sessions of 32 blocks each paused on tool calls, in a
pool of 16 P blocks (half of all contexts resident); then new sessions of 128 blocks
allocate under eviction, and the table gives ns per allocated block for every online policy
(`allocate_slots`, victims chosen, evicted and reused), best of `--repeat` sessions, with
the garbage collector paused during each timed call (as `timeit` does). The
ratio to lru's figure in the same run is the figure to read.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import re
import time
from pathlib import Path

from kvsaga import KVCacheManager, KVSpec
from kvsaga.policy import POLICIES
from kvsaga.pool import BlockPool
from kvsaga.prefix import BlockHasher, PrefixIndex, root_hash

BS = 16
SPEC = KVSpec(num_layers=32, num_kv_heads=8, head_dim=128, dtype="bfloat16", block_size=BS)


def best_of(repeat: int, fn) -> float:
    """Minimum over `repeat` runs of fn(), which returns elapsed seconds."""
    return min(fn() for _ in range(repeat))


def bench_allocate(n: int) -> float:
    pool = BlockPool(n)
    t = time.perf_counter()
    for _ in range(n // 64):
        pool.allocate(64)
    return (time.perf_counter() - t) / (n // 64 * 64)


def bench_free(n: int) -> float:
    pool = BlockPool(n)
    ids = pool.allocate(n)
    t = time.perf_counter()
    pool.release_many(ids)
    return (time.perf_counter() - t) / n


def bench_allocate_evict(n: int, pool_level: bool) -> float:
    m = KVCacheManager(SPEC, n, clock=lambda: 0.0)
    # Fill the pool with cached (evictable) full blocks of finished sessions.
    per = 64
    for i in range(n // per):
        toks = [i * 100_000 + j for j in range(per * BS)]
        m.begin_step(f"warm{i}", toks)
        m.allocate_slots(f"warm{i}", per * BS)
        m.finish_step(f"warm{i}")
    assert m.pool.num_free == n - (n // per) * per
    # Every new allocation now evicts. One session, prompt the size of the pool.
    total = (n // per) * per
    prompt = [1_000_000_000 + j for j in range(total * BS - BS)]
    m.begin_step("new", prompt + [1])
    need = m.num_blocks_needed("new", len(prompt))
    t = time.perf_counter()
    if pool_level:  # what vLLM's figure covers: choose LRU victims, evict, pop free blocks
        m._evict(need - m.pool.num_free, 0.0)
        m.pool.allocate(need)
    else:  # the whole engine call: + slot ids and registering the new full blocks
        m.allocate_slots("new", len(prompt))
    el = time.perf_counter() - t
    return el / need


def bench_hash(n: int) -> float:
    h = BlockHasher(BS)
    toks = list(range(n * BS))
    out: list[bytes] = []
    t = time.perf_counter()
    h.extend(out, root_hash(None), toks)
    return (time.perf_counter() - t) / n


def bench_cache_block(n: int) -> float:
    idx = PrefixIndex()
    pool = BlockPool(n)
    ids = pool.allocate(n)
    hashes: list[bytes] = []
    BlockHasher(BS).extend(hashes, root_hash(None), list(range(n * BS)))
    block_hash = pool.block_hash
    t = time.perf_counter()
    for b, hh in zip(ids, hashes, strict=True):
        if idx.insert(hh, b):
            block_hash[b] = hh
    return (time.perf_counter() - t) / n


def bench_lookup_hit(n: int) -> float:
    m = KVCacheManager(SPEC, n + 8, clock=lambda: 0.0)
    toks = list(range(n * BS)) + [1]
    m.begin_step("s", toks)
    m.allocate_slots("s", len(toks))
    m.finish_step("s")
    t = time.perf_counter()
    st = m.begin_step("s", toks)  # the session's hashes are known: lookup + reclaim only
    el = time.perf_counter() - t
    assert st.num_cached_tokens == n * BS
    return el / n


def bench_decode_step(sessions: int = 256, steps: int = 64) -> float:
    m = KVCacheManager(SPEC, sessions * 40, clock=lambda: 0.0)
    ids = [f"s{i}" for i in range(sessions)]
    for i, sid in enumerate(ids):
        m.begin_step(sid, [i] * 100)
        m.allocate_slots(sid, 100)
    append, alloc = m.append_tokens, m.allocate_slots
    t = time.perf_counter()
    for step in range(steps):
        for sid in ids:
            append(sid, (step,))
            alloc(sid, 1)
    return (time.perf_counter() - t) / steps


SCALING_SECTION = "## Eviction scaling with paused sessions"
SCALING_POLICIES = tuple(n for n, c in POLICIES.items() if not getattr(c, "needs_oracle", False))
TOOLS = ("search", "edit", "test", "shell", "browse")


def bench_eviction_scaling(paused: int, policy: str, repeat: int, per: int = 32,
                           new_blocks: int = 128) -> tuple[float, float]:
    """ns per allocated block of `allocate_slots` under eviction with `paused` sessions of
    `per` blocks paused on tool calls and half of all contexts resident: (all allocations
    at one instant, allocations 1 ms apart so that time-driven re-keying is included)."""
    m = KVCacheManager(SPEC, paused * per // 2, policy=policy, clock=lambda: 0.0)
    ctx = per * BS
    now = 0.0
    for i in range(paused):  # later sessions evict earlier ones: half stay resident
        sid = f"p{i}"
        m.begin_step(sid, [i * ctx + j for j in range(ctx)], now=now, workflow=f"w{i % 3}")
        m.allocate_slots(sid, ctx, now=now)
        m.finish_step(sid, now=now, tool=TOOLS[i % len(TOOLS)])
        now += 1e-3
    best = {0.0: float("inf"), 1e-3: float("inf")}
    base, n = paused * ctx, new_blocks * BS
    for k in range(2 * repeat):
        dt = 0.0 if k < repeat else 1e-3
        sid = f"new{k}"
        m.begin_step(sid, [base + k * n + j for j in range(n)], now=now)
        gc.collect()
        gc.disable()  # as timeit does: a collection over the whole heap is not the policy's
        try:
            t = time.perf_counter()
            m.allocate_slots(sid, n, now=now)
            best[dt] = min(best[dt], (time.perf_counter() - t) / new_blocks)
        finally:
            gc.enable()
        m.finish_step(sid, now=now, tool="search")
        now += dt
    return best[0.0] * 1e9, best[1e-3] * 1e9


def eviction_scaling(counts: list[int], repeat: int) -> tuple[list[str], dict]:
    """The scaling tables (markdown lines) and their figures."""
    figures = {p: {n: bench_eviction_scaling(n, p, repeat) for n in counts}
               for p in SCALING_POLICIES}
    lines: list[str] = []
    for i, what in enumerate(("every allocation at the same instant",
                              "allocations 1 ms apart (keys re-computed at their time-grid "
                              "points included)")):
        cols = " | ".join(SCALING_POLICIES)
        lines += [f"ns per allocated block, {what}:", "",
                  f"| paused sessions | {cols} | worst / lru |",
                  "|---:|" + "---:|" * (len(SCALING_POLICIES) + 1)]
        for n in counts:
            worst = max(figures[p][n][i] for p in SCALING_POLICIES)
            cells = " | ".join(f"{figures[p][n][i]:,.0f}" for p in SCALING_POLICIES)
            lines.append(f"| {n:,} | {cells} | {worst / figures['lru'][n][i]:.2f}x |")
        lo, hi = counts[min(1, len(counts) - 1)], counts[-1]
        lines += ["", f"Growth from {lo:,} to {hi:,} paused sessions: " + ", ".join(
            f"{p} {figures[p][hi][i] / figures[p][lo][i]:.2f}x" for p in SCALING_POLICIES)
            + ".", ""]
    return lines, figures


def write_section(title: str, body: str, path: Path) -> None:
    """Replace (or append) one `## ` section of RESULTS.md, leaving the others alone."""
    doc = path.read_text(encoding="utf-8") if path.exists() else "# Measured results\n"
    text = f"{title}\n\n{body}\n"
    pattern = re.compile(rf"^{re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(doc):
        doc = pattern.sub(lambda _: text + "\n", doc)
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    path.write_text(doc, encoding="utf-8")


def scaling_main(args: argparse.Namespace) -> None:
    counts = [int(x) for x in args.paused.split(",") if x]
    t = time.perf_counter()
    lines, figures = eviction_scaling(counts, args.repeat)
    wall = time.perf_counter() - t
    cmd = f"python bench/allocator.py --eviction-scaling --paused {args.paused} " \
          f"--repeat {args.repeat}"
    body = "\n".join([
        f"`{cmd}` ({wall:.0f} s, Python {platform.python_version()}, "
        f"{platform.processor() or platform.machine()}; 2 shared cores, so figures move "
        "by tens of percent between runs: read the ratios). `allocate_slots` of a new "
        "128-block session under eviction, best of the repeats; sessions of 32 blocks "
        "paused on tool calls 1 ms apart, half of all contexts resident.",
        "", *lines])
    print(body)
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    if args.write:
        write_section(SCALING_SECTION, body, Path(__file__).resolve().parent / "RESULTS.md")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--blocks", type=int, default=16384)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--eviction-scaling", action="store_true",
                    help="only the eviction-scaling table (every online policy)")
    ap.add_argument("--paused", default="250,1000,4000,16000",
                    help="paused-session counts for --eviction-scaling")
    ap.add_argument("--write", action="store_true",
                    help="with --eviction-scaling: write its section of bench/RESULTS.md")
    args = ap.parse_args()
    if args.eviction_scaling:
        scaling_main(args)
        return
    n, r = args.blocks, args.repeat
    rows = [
        ("allocate", best_of(r, lambda: bench_allocate(n)) * 1e9, "ns/block", 250),
        ("allocate+evict", best_of(r, lambda: bench_allocate_evict(n, True)) * 1e9, "ns/block",
         525),
        ("allocate_slots+evict", best_of(r, lambda: bench_allocate_evict(n, False)) * 1e9,
         "ns/block", None),
        ("cache block", best_of(r, lambda: bench_cache_block(n)) * 1e9, "ns/block", 640),
        ("hash block", best_of(r, lambda: bench_hash(n)) * 1e9, "ns/block", 1200),
        ("lookup hit", best_of(r, lambda: bench_lookup_hit(n)) * 1e9, "ns/block", 330),
        ("free", best_of(r, lambda: bench_free(n)) * 1e9, "ns/block", 95),
        ("decode step x256", best_of(r, bench_decode_step) * 1e6, "us/step", None),
    ]
    print(f"{'operation':<22} {'kvsaga':>10}  {'unit':<9} {'vLLM ref':>9}")
    for name, v, unit, ref in rows:
        print(f"{name:<22} {v:>10.1f}  {unit:<9} {ref if ref is not None else '-':>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": platform.processor() or platform.machine(),
                    "python": platform.python_version(),
                    "blocks": n,
                    "results": [
                        {"op": name, "value": v, "unit": unit, "vllm_reference": ref}
                        for name, v, unit, ref in rows
                    ],
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
