"""Where `workflow`'s recomputation comes from at one grid point (a diagnosis, any seed; it
changes nothing it measures: the simulator's executor and the policy's victim choice are
only observed).

    python bench/scheduling_recompute.py swe 1 0.25 101,102,103,104,105,106

Per seed: the KV capacity against the trace's peak working set and its longest session
(bench/scheduling.py's `capacity` floors it at the longest session + 1 block); the prefill
tokens recomputed, split by the step that recomputed them (a session's first step, a step
of a session admitted throughout its pause, the step of a demoted session admitted again,
a preemption's retry); the evictions that took an admitted paused session's blocks, and
how many of them happened while the admitted sessions' contexts exceeded the GPU, while
the scheduler's own admitted working sets exceeded the tiers (`_committed`), and while a
demoted session still had blocks cached; and, per demotion, how long the session stayed
paused after it, and the share of its prompt cached when it was admitted again.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from typing import Any

from scheduling import PRESET, capacity, peak_prompt_working_set, trace
from scheduling_overflow import point_parser, point_seeds

from kvsaga.pool import CACHED
from kvsaga.scheduler import DEFAULT_SCHEDULER
from kvsaga.sim.simulator import SimConfig, Simulator


def _observe(sim: Simulator, out: Counter, demotions: list[dict]) -> None:
    """Wrap the simulator's `begin` / `_slots` and the policy's `choose_victims` (on these
    instances only) to fill `out` and `demotions`."""
    sched, m = sim.scheduler, sim.manager
    kind: dict[int, str] = {}
    begin, slots, choose = sim.begin, sim._slots, m.policy.choose_victims
    demote = getattr(sched, "_demote_session", None)
    last: dict[str, dict] = {}

    def on_begin(req: Any, now: float):
        sid = req.session_id
        if req.retried:
            kind[id(req)] = "retry"
        elif not req.resumed:
            kind[id(req)] = "first"
        elif sid in getattr(sched, "sessions", {}):
            kind[id(req)] = "admitted"
        else:
            kind[id(req)] = "demoted"
            d = last.pop(sid, None)
            if d is not None:
                lk = sched.lookup(req)
                d["cached"] = lk.num_hit_block_tokens / max(req.num_tokens, 1)
        return begin(req, now)

    def on_slots(req: Any, n: int) -> None:
        before = sim.recomputed_so_far
        slots(req, n)
        if req.prefilling:
            out["prefill"] += n
            out["recomputed " + kind.get(id(req), "first")] += sim.recomputed_so_far - before

    def on_choose(n: int, now: float):
        victims = choose(n, now)
        admitted = getattr(sched, "sessions", {})
        running = {r.session_id for r in sched.running}
        paused = sum(1 for b in victims
                     if m.block_owner[b] in admitted and m.block_owner[b] not in running)
        out["evictions"] += 1
        if paused:
            out["evictions of admitted paused blocks"] += 1
            held = sum(len(m.sessions[s].block_hashes) for s in admitted if s in m.sessions)
            if held > m.num_gpu_blocks:
                out["... while admitted contexts > GPU"] += 1
            if getattr(sched, "_committed", 0) > getattr(sched, "capacity", 1 << 62):
                out["... while admitted working sets > tiers"] += 1
            demoted = getattr(sched, "_deferred", {})
            state = m.pool.state
            if any(o in demoted and state[b] == CACHED for b, o in enumerate(m.block_owner)):
                out["... while a demoted session had blocks cached"] += 1
        return victims

    def on_demote(sid: str, now: float) -> None:
        d = last[sid] = {"at": now}
        demotions.append(d)
        demote(sid, now)

    def on_add(req: Any, now: float) -> None:
        d = last.get(req.session_id)
        if d is not None and "back" not in d and not req.retried:
            d["back"] = now - d["at"]
        add(req, now)

    sim.begin, sim._slots, m.policy.choose_victims = on_begin, on_slots, on_choose
    if demote is not None:
        sched._demote_session = on_demote
    add = sched.add
    sched.add = on_add


def measure(family: str, load: float, frac: float, seed: int, policy: str) -> dict:
    """One simulation of the default scheduler at the grid point, observed (see the module
    docstring): the counts, the demotions and the result row."""
    sessions = trace(family, seed, load)
    base = SimConfig(preset=PRESET)
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(sessions, frac), policy=policy,
                    scheduler=DEFAULT_SCHEDULER)
    sim = Simulator(sessions, cfg)
    out: Counter = Counter()
    demotions: list[dict] = []
    _observe(sim, out, demotions)
    row = sim.run().to_dict()
    return {"capacity": cfg.num_gpu_blocks, "peak": peak_prompt_working_set(sessions, base),
            "longest": max(base.cost.kv_spec.num_blocks_for(s.total_tokens)
                           for s in sessions),
            "counts": out, "demotions": demotions, "row": row}


def diagnose(family: str, load: float, frac: float, seed: int, policy: str) -> str:
    d = measure(family, load, frac, seed, policy)
    out, demotions, r = Counter(d["counts"]), d["demotions"], d["row"]
    pre = out.pop("prefill")
    rec = sum(v for k, v in out.items() if k.startswith("recomputed"))
    split = ", ".join(f"{k.split()[1]} {v / 1e3:.0f}k" for k, v in sorted(out.items())
                      if k.startswith("recomputed"))
    ev = "; ".join(f"{k} {v}" for k, v in out.items() if not k.startswith("recomputed"))
    back = [x["back"] for x in demotions if "back" in x]
    kept = [x["cached"] for x in demotions if "cached" in x]
    med = (lambda xs: f"{statistics.median(xs):.2f}" if xs else "n/a")
    return (f"seed {seed}: capacity {d['capacity']} blocks (peak working set {d['peak']}, "
            f"longest session {d['longest']}); mean TCT {r['tct_mean_s']:.1f} s; recomputed "
            f"{rec / 1e3:.0f}k of {pre / 1e3:.0f}k prefill tokens ({rec / max(pre, 1):.0%}): "
            f"{split}; {ev}; {len(demotions)} demotions, paused after it (median) "
            f"{med(back)} s, share of the prompt cached at re-admission (median) {med(kept)}")


def main(argv: list[str] | None = None) -> int:
    ap = point_parser(__doc__.split("\n\n")[0])
    a = ap.parse_args(argv)
    for seed in point_seeds(ap, a.seeds):
        print(diagnose(a.family, a.load, a.capacity, seed, a.policy), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
