"""Where a victim search's cost goes (issue 11): each policy's last-level cache misses per
allocated block at one paused-session count, the eviction bench's same-instant allocations
counted by callgrind's cache simulation as `--cache-misses` counts them (each allocation after
a flush of the simulated caches; load-free), three ways:

- as is;
- the search outside: the policy's victim search (`choose_victims`: its Python and the
  index's call) made just before the flush, and the counted allocation handed its answer,
  so what is left is the allocation without a search (the manager's glue, the uncaching of
  the victims, the pool's and prefix index's work: lru's part and the grouped policies'
  `blocks_uncached`);
- the keying outside: only the search's Python keying of the sessions marked since the last
  search (search.py `_keys` and the policy's `_timed_base`) made before the flush (adaptive:
  its leading expert's, the leader as the last search left it).

So "as is" less "search outside" is what the search costs, and "as is" less "keying outside"
its Python keying; with the inclusive misses of the index's one call (`refresh_marked`, its
callees included: the pushes read, the drops, the timers, the runs and their victims' list),
the rest of the search is its Python glue and search state. lru's column is its allocation
(its eviction is the C++ core's own, with no search to move).

    python bench/allocator.py --eviction-scaling --search-split 1000 --policies lru,ttl,saga,graph

Minutes: one child process under callgrind per way.
"""

from __future__ import annotations

import gc
import json
import operator
import subprocess
import sys
import tempfile
from pathlib import Path

from eviction_callgrind import (
    _ANNOTATED,
    CACHE_SIM,
    _callgrind_calls,
    _dump_figure,
    require_valgrind,
    sim_cold_caches,
)
from eviction_scaling import bench_eviction_scaling, build, ratio, untimed_step

WAYS = ("as is", "search outside", "keying outside")
# The index's one call of a usual search, as callgrind_annotate names it (`refresh_marked`
# since the twenty-first session, `refresh_marked_runs` when the core evicts the runs since
# the twenty-seventh; `refresh_victims` in builds before them).
INDEX_CALLS = ("SessionHeap::refresh_marked(", "SessionHeap::refresh_marked_runs(",
               "SessionHeap::refresh_victims(")


def _searcher(m):
    """The policy whose index the allocation's search reads (the policy, or adaptive's
    leading expert), None for one without an index."""
    leader = getattr(m.policy, "leader", None)
    p = m.policy if leader is None else leader.policy
    return p if hasattr(p, "_keys") else None


def split_child(paused: int, specs: list[str], repeat: int, way: str) -> None:
    """Run under callgrind by `search_split`: `count_child`'s counted calls (the flush, then
    the allocation, each an `operator.call`), with the search or the keying made before
    the flush for `way`."""
    from kvsaga.policy.search import VictimSearch

    real_keys = VictimSearch._keys
    made: dict[int, tuple[list, dict]] = {}

    def keys(self, sids, now, base_of=None):  # the keying made outside, when there is one
        got = made.pop(id(self), None)
        if base_of is None or got is None:
            return real_keys(self, sids, now, base_of)
        base_of.update(got[1])
        return got[0]

    VictimSearch._keys = keys
    try:
        _split_runs(paused, specs, repeat, way, real_keys, made)
    finally:
        VictimSearch._keys = real_keys


def _split_runs(paused: int, specs: list[str], repeat: int, way: str, real_keys,
                made: dict) -> None:
    """`split_child`'s runs, one policy spec after another."""
    for spec in specs:
        def counted(m, sid, n, now, spec=spec):
            policy = m.policy
            need = n // m.block_size - m.pool.num_free
            if way == "search outside" and spec != "lru" and need > 0:
                victims = policy.choose_victims(need, now)
                policy.choose_victims = lambda k, t: victims  # the answer, one call
            elif way == "keying outside" and (p := _searcher(m)) is not None:
                # ttl's and graph's fast path (ttl_fast.py, graph_fast.py) keys inline
                # without `_keys`: the split is of the general path's keying, so off.
                p._fast = False
                live = p._dirty & p.groups.keys()
                bases: dict = {}
                made[id(p)] = (real_keys(p, live, now, bases) if live else [], bases)
            operator.call(sim_cold_caches)
            operator.call(m.allocate_slots, sid, n, now=now)
            policy.__dict__.pop("choose_victims", None)
            made.clear()
            return 1.0

        gc.disable()
        try:
            for _ in bench_eviction_scaling(paused, build(spec), repeat, timer=counted,
                                              step_timer=untimed_step):
                pass
        finally:
            gc.enable()
        gc.collect()


def _index_call(dump: Path) -> int:
    """The inclusive last-level misses of the index's call in a dump (0: none made)."""
    return _inclusive(_annotated(dump), INDEX_CALLS)


def _annotated(dump: Path) -> str:
    """callgrind_annotate's inclusive listing of a dump's last-level misses."""
    return subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100",
                           "--show=ILmr,DLmr,DLmw", str(dump)],
                          capture_output=True, text=True, check=True).stdout


def _inclusive(text: str, calls: tuple[str, ...]) -> int:
    """The inclusive misses of each of `calls` (named as callgrind_annotate names them: its
    first line that contains the name), summed (0 for one not made)."""
    got = dict.fromkeys(calls, 0)
    for line in text.splitlines():
        m = _ANNOTATED.match(line)
        for call in calls:
            if m is not None and call in m[4] and not got[call]:
                got[call] = sum(0 if v == "." else int(v.replace(",", "")) for v in m.groups()[:3])
    return sum(got.values())


# The manager core's eviction of a policy's named victims (its check, then the eviction,
# inside which the pool calls the policy's `blocks_uncached`; or, since the twenty-sixth
# session, ttl's and graph's runs evicted with no list and no such call: `evict_runs`), and
# lru's (`evict_head`).
CORE_CALLS = ("ManagerCore::victims_valid(", "ManagerCore::evict_blocks(",
              "ManagerCore::evict_runs(")
UNCACHED_CALL, LRU_CALL = ("Pool::notify(",), ("ManagerCore::evict_head(",)


def call_split(paused: int, policies: tuple[str, ...], repeat: int = 3,
               new_blocks: int = 128) -> list[str]:
    """Each policy's last-level misses per allocated block over lru's at `paused` paused
    sessions (`--cache-misses`' count, the fewest of its `repeat` allocations at one
    instant) split by the call that makes them, inclusive: the index's one call, the core's
    eviction of the named victims less lru's `evict_head` (of it, the pool's call of the
    policy's `blocks_uncached`), and the rest: the Python of the search and of the manager's
    eviction path (the policy's `choose_victims`, its keying, the glue). Markdown lines."""
    if "lru" not in policies:
        raise ValueError(f"--call-split: the excess is over lru: add it, got {policies!r}")
    require_valgrind("--call-split")
    per, rows = 2 * repeat + 1, {}
    with tempfile.TemporaryDirectory() as tmp:
        dumps, _ = _callgrind_calls(Path(tmp) / "c", paused, policies, repeat, True)
        for i, p in enumerate(policies):
            best = min(dumps[i * per:i * per + repeat],
                       key=lambda f: _dump_figure(f.read_text(), True))
            text = _annotated(best)
            rows[p] = [_dump_figure(best.read_text(), True), _inclusive(text, INDEX_CALLS),
                       _inclusive(text, CORE_CALLS), _inclusive(text, UNCACHED_CALL),
                       _inclusive(text, LRU_CALL)]
    lru_total, lru_evict = rows["lru"][0], rows["lru"][4]
    lines = [f"Last-level cache misses per allocated block over lru's at {paused:,} paused "
             "sessions, allocations at one instant (the fewest of the repeats; callgrind's "
             "cache simulation, each allocation after a flush; load-free), by the call that "
             "makes them (callgrind_annotate, inclusive):", "",
             "| policy | total | over lru | the index call | the core's eviction over lru's | "
             "of it: blocks_uncached | the rest (the Python of the search and its glue) |",
             "|---|" + "---:|" * 6]
    for p in (q for q in policies if q != "lru"):
        total, index, core, uncached, _ = rows[p]
        over, core = total - lru_total, core - lru_evict
        cells = [total, over, index, core, uncached, over - index - core]
        lines.append(f"| {p} | " + " | ".join(f"{x / new_blocks:,.1f}" for x in cells) + " |")
    return lines + ["", f"lru: {lru_total / new_blocks:,.1f} a block, of it evict_head "
                    f"{lru_evict / new_blocks:,.1f}.", ""]


def search_split(paused: int, policies: tuple[str, ...], repeat: int = 3,
                 new_blocks: int = 128) -> list[str]:
    """The table (markdown lines): per policy, misses per allocated block each way, the
    search's and the keying's share, and the index call's (the fewest-miss allocation
    of the `repeat` at one instant, each way)."""
    require_valgrind("--search-split")
    here = Path(__file__).resolve().parent
    got: dict[str, dict[str, float]] = {p: {} for p in policies}
    index_call: dict[str, float] = {}
    per = 2 * repeat + 1
    with tempfile.TemporaryDirectory() as tmp:
        for w, way in enumerate(WAYS):
            out = Path(tmp) / str(w)
            out.mkdir()
            child = (f"import sys; sys.path.insert(0, {str(here)!r}); "
                     f"from eviction_split import split_child; "
                     f"split_child({paused}, {list(policies)!r}, {repeat}, {way!r})")
            r = subprocess.run(
                ["valgrind", "--tool=callgrind", *CACHE_SIM, "--collect-atstart=no",
                 "--toggle-collect=_operator_call", "--dump-after=_operator_call",
                 f"--callgrind-out-file={out}/cg.out", sys.executable, "-c", child],
                capture_output=True, text=True, check=False)
            dumps = sorted(out.glob("cg.out.*"), key=lambda f: int(f.suffix[1:]))
            figs = [(f, _dump_figure(f.read_text(), True)) for f in dumps]
            figs = [x for x in figs if x[1] is not None][1::2]  # (the flushes left out)
            if r.returncode or len(figs) != per * len(policies):
                raise SystemExit(f"--search-split: callgrind counted {len(figs)} calls "
                                 f"({way}), not {per} per policy: {r.stderr[-2000:]}")
            for i, p in enumerate(policies):
                best = min(figs[i * per:i * per + repeat], key=lambda x: x[1])
                got[p][way] = best[1] / new_blocks
                if way == "as is":
                    index_call[p] = _index_call(best[0]) / new_blocks
    lru = got["lru"]["as is"] if "lru" in got else None
    lines = [f"Last-level cache misses per allocated block at {paused:,} paused sessions, "
             "allocations at one instant (callgrind's cache simulation, each allocation "
             "after a flush; the fewest of the repeats, each way; load-free):", "",
             "| policy | as is | / lru | search outside | / lru | the search | of it: the "
             "index call | the keying (Python) | the rest (glue, state) |",
             "|---|" + "---:|" * 8]
    for p in policies:
        g = got[p]
        search = g["as is"] - g["search outside"]
        keying = g["as is"] - g["keying outside"]
        cells = [g["as is"], g["search outside"], search, index_call[p], keying,
                 search - index_call[p] - keying]
        fmt = [f"{x:,.1f}" for x in cells]
        rel = [ratio(g[w] / lru) if lru else "" for w in ("as is", "search outside")]
        lines.append(f"| {p} | {fmt[0]} | {rel[0]} | {fmt[1]} | {rel[1]} | "
                     + " | ".join(fmt[2:]) + " |")
    return lines + ["", json.dumps({"paused": paused, "misses_per_block": got,
                                    "index_call": index_call})]


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/allocator.py"))
