"""Why `workflow` demotes, and why memory stays empty (a diagnosis, any seed; it changes
nothing it measures: the scheduler's and the recorder's calls are only observed).

    python bench/scheduling_overflow.py swe 1 0.25 101,102,103,104,105,106
    python bench/scheduling_overflow.py swe 1 0.5 101,102,103,104,105,106 --memory
    python bench/scheduling_overflow.py bfcl 1 0.25 101,102,103,104,105,106 --waits
    python bench/scheduling_overflow.py bfcl 1 0.25 101,102,103,104,105,106 --growth
    python bench/scheduling_overflow.py bfcl 2 0.5 101,102,103 --params '{"growth_quantile": 0.9}'
    python bench/scheduling_overflow.py bfcl 1 0.25 101,102,103,104,105,106 --returns

Demotions (default mode). Every change of the admitted working sets (`_committed`) is
tagged with the event that made it: a session admitted (new, or a demoted one again), a
paused session's next step queued (its predicted growth charged again: `paused_growth`
False), or a step finished (the charge set to the context it reached, paused). Each
demotion is attributed to the event that last took the working sets over the tiers, and
per finish the context reached is compared with the working set predicted for it (growth
beyond the prediction). Per session: its demotions and its recomputed prefill tokens.

Memory (`--memory`): time shares of the makespan by the live sessions' contexts (arrived,
not ended) against the GPU, and whether a session was waiting for admission meanwhile: a
GPU left empty while nobody waits is the trace's demand, not the scheduler holding back.

Waits (`--waits`): where each session's TCT goes: its unloaded TCT (`unloaded_tct`), its
waits for its first admission and for admissions again after demotions, and the rest
(queueing of admitted sessions' steps, recomputation, slower batches); per seed for all
sessions and for the slowest 5% (the p95's tail), against fcfs+lru's TCT of the same ones.

Returns (`--returns`): as each demoted session's next step arrives (to be admitted again),
the share of its prompt still cached on the GPU, and who else waits for admission then:
nobody (where `readmit_charge` "binding" charges it its whole context), a new session, or
only other demoted sessions' steps; and whether, with nobody else waiting, the tiers were
short: its whole own context not fitting beside the admitted contexts (where
"binding_short" charges it its whole context), or its uncached blocks beyond the GPU
pool's free blocks (loading it would evict).

Growth (`--growth`): per finished step of an admitted session, the growth the gate predicted
for it (uncalibrated: the workflow's, or its tool's, mean growth from one finish to the
next, `_growth_tokens`) against the growth realized from the context each charge was based
on: the last finish's (while the step was queued) and the step's prompt (while admitted,
the tool's observation already in it); quantiles of realized / predicted, by step index.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from typing import Any

from ascii_args import ascii_int, float_arg
from scheduling import PRESET, capacity, trace

from kvsaga.config import KVSpec
from kvsaga.manager import KVCacheManager
from kvsaga.policy import DEFAULT_POLICY
from kvsaga.scheduler import DEFAULT_SCHEDULER, make_scheduler
from kvsaga.sim.metrics import unloaded_tct
from kvsaga.sim.simulator import SimConfig, Simulator


def _sim(family: str, load: float, frac: float, seed: int, policy: str,
         params: dict | None) -> Simulator:
    sessions = trace(family, seed, load)
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=capacity(sessions, frac), policy=policy,
                    scheduler=DEFAULT_SCHEDULER, scheduler_params=params)
    return Simulator(sessions, cfg)


def demotions(family: str, load: float, frac: float, seed: int, policy: str,
              params: dict | None = None) -> dict[str, Any]:
    """One observed simulation (module docstring, default mode)."""
    sim = _sim(family, load, frac, seed, policy, params)
    sched = sim.scheduler
    limit = sched.overcommit * sched.capacity
    state: dict[str, Any] = {"event": "start", "over_by": "none"}
    why: Counter = Counter()  # demotions by the event that took the sets over the tiers
    how: Counter = Counter()  # demotions by the rule that demoted
    fin: Counter = Counter()
    per_session: dict[str, Counter] = defaultdict(Counter)
    set_blocks, admitted, enqueue, finish = (sched._set_blocks, sched._admitted,
                                             sched._enqueue, sched.finish)
    demote, shrink, deadline = sched._demote_session, sched._shrink, sched._demote

    def tagged(event, fn):
        def call(*a, **k):
            before, state["event"] = state["event"], event(*a) if callable(event) else event
            try:
                return fn(*a, **k)
            finally:
                state["event"] = before
        return call

    def on_set_blocks(info) -> None:
        was = sched._committed
        set_blocks(info)
        if was <= limit < sched._committed:
            state["over_by"] = state["event"]

    def on_finish(req, now, *, ended=False):
        info = sched.sessions.get(req.session_id)
        if info is not None and not ended:
            state["pred"] = info.blocks  # its working set predicted while the step ran
        state["event"] = "finish"
        try:
            finish(req, now, ended=ended)
        finally:
            state["event"] = "start"
        info = sched.sessions.get(req.session_id)
        if info is not None and not ended and "pred" in state:
            ctx = -(-(info.context - info.shared) // sim.manager.block_size)
            fin["finishes"] += 1
            if ctx > state["pred"]:
                fin["context beyond its predicted working set"] += 1
                fin["blocks beyond"] += ctx - state["pred"]
        state.pop("pred", None)

    def on_demote(sid, now):
        how[state.get("rule", "other")] += 1
        why[state["over_by"]] += 1
        per_session[sid]["demotions"] += 1
        demote(sid, now)

    def rule(name, fn):
        def call(*a, **k):
            state["rule"] = name
            try:
                return fn(*a, **k)
            finally:
                state["rule"] = "other"
        return call

    sched._set_blocks = on_set_blocks
    sched._admitted = tagged(lambda req, now, **k: "admitted (demoted again)"
                             if req.session_id in sched._deferred else "admitted (new)",
                             admitted)
    sched._enqueue = tagged("next step queued (growth charged again)", enqueue)
    sched.finish = on_finish
    sched._demote_session = on_demote
    sched._shrink = rule("shrink", shrink)
    sched._demote = rule("pause deadline", deadline)

    slots = sim._slots

    def on_slots(req, n):
        before = sim.recomputed_so_far
        slots(req, n)
        per_session[req.session_id]["recomputed"] += sim.recomputed_so_far - before
    sim._slots = on_slots
    row = sim.run().to_dict()
    return {"row": row, "why": why, "how": how, "finish": fin, "sessions": per_session,
            "lengths": {s.id: s.total_tokens for s in sim.sessions}}


def memory(family: str, load: float, frac: float, seed: int, policy: str,
           params: dict | None = None) -> dict[str, Any]:
    """One observed simulation (module docstring, `--memory`): seconds of the makespan by
    (live contexts' share of the GPU, a session waiting for admission or not)."""
    sim = _sim(family, load, frac, seed, policy, params)
    rec, sched = sim.recorder, sim.scheduler
    gpu = sim.manager.num_gpu_blocks
    out: Counter = Counter()
    last = [rec._last]

    def note(now: float) -> None:
        dt = now - last[0]
        if dt > 0:
            live = min(rec.live_blocks, gpu) / gpu
            band = "live < 0.5" if live < 0.5 else "live 0.5-0.85" if live < 0.85 else \
                "live >= 0.85"
            waiting = bool(getattr(sched, "_pending", None))
            out[band, waiting] += dt
            out["occupied", band] += (rec.pool.num_active + rec.pool.num_cached) / gpu * dt
            last[0] = now

    adv, through = rec.advance, rec.advance_through

    def on_advance(now):
        note(now)
        adv(now)

    def on_through(times, counts):
        if times:
            note(times[-1])
        through(times, counts)
    rec.advance, rec.advance_through = on_advance, on_through
    row = sim.run().to_dict()
    return {"row": row, "time": out}


def waits(family: str, load: float, frac: float, seed: int, policy: str,
          params: dict | None = None) -> dict[str, Any]:
    """One observed simulation (module docstring, `--waits`) and fcfs+lru's of the same
    trace: per session its TCT under both, its unloaded TCT, its admission waits (first
    and again after demotions) and its demotions."""
    sim = _sim(family, load, frac, seed, policy, params)
    sched = sim.scheduler
    first: Counter = Counter()
    again: Counter = Counter()
    demoted: Counter = Counter()
    admitted, demote = sched._admitted, sched._demote_session

    def on_admitted(req, now, **k):
        sid = req.session_id
        if sid not in sched.sessions:  # a session admission: its wait ends now
            (again if sid in sched._deferred else first)[sid] += now - req.arrival
        return admitted(req, now, **k)

    def on_demote(sid, now):
        demoted[sid] += 1
        return demote(sid, now)
    sched._admitted, sched._demote_session = on_admitted, on_demote
    row = sim.run().to_dict()
    sessions = sim.sessions
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=sim.config.num_gpu_blocks, policy="lru",
                    scheduler="fcfs")
    base = Simulator(sessions, cfg)
    base.run()
    per = {s.id: {"tct": sim._finished_at[s.id] - s.arrival_s,
                  "fcfs": base._finished_at[s.id] - s.arrival_s,
                  "unloaded": unloaded_tct(s, cfg.cost, cfg.max_num_batched_tokens),
                  "first": first[s.id], "again": again[s.id], "demotions": demoted[s.id]}
           for s in sessions}
    return {"row": row, "sessions": per}


def returns(family: str, load: float, frac: float, seed: int, policy: str,
            params: dict | None = None) -> dict[str, Any]:
    """One observed simulation (module docstring, `--returns`): per demoted session's step
    arriving, (share of its prompt cached on the GPU, others waiting, new sessions waiting)."""
    sim = _sim(family, load, frac, seed, policy, params)
    sched = sim.scheduler
    seen: list[tuple[float, int, int, bool, bool]] = []
    enqueue = sched._enqueue
    m = sched.manager

    def on_enqueue(req, now, *, retry):
        if not retry and req.resumed and req.session_id in sched._deferred:
            hit = sched.lookup(req).gpu_hit_blocks
            cached = hit * m.block_size
            waiting = sum(len(q) for q in sched._pending.values())
            whole = req.num_tokens - min(cached, sched._shared_tokens(req.session_id))
            uncached = -(-req.num_tokens // m.block_size) - hit
            seen.append((cached / max(req.num_tokens, 1), waiting,
                         waiting - len(sched._deferred_waiting), sched._tiers_short(whole),
                         uncached > m.pool.num_free))
        return enqueue(req, now, retry=retry)
    sched._enqueue = on_enqueue
    return {"row": sim.run().to_dict(), "returns": seen}


def growth(family: str, load: float, frac: float, seed: int, policy: str,
           params: dict | None = None) -> dict[str, Any]:
    """One observed simulation (module docstring, `--growth`): its row, and per finished
    step of an admitted session (step index, predicted growth, realized growth from the last
    finish (None for its first step since admission), realized growth from its prompt),
    tokens."""
    sim = _sim(family, load, frac, seed, policy, params)
    sched = sim.scheduler
    out: list[tuple[int, float, float | None, float]] = []
    finish = sched.finish

    def on_finish(req, now, *, ended=False):
        info = sched.sessions.get(req.session_id)
        if info is not None and not ended:
            pred = sched._growth_tokens(info.workflow, info.steps, info.tool)
            c = req.num_tokens
            last = None if info.last_context is None else c - info.last_context
            out.append((req.k, pred, last, c - info.context))
        return finish(req, now, ended=ended)
    sched.finish = on_finish
    return {"row": sim.run().to_dict(), "steps": out}


def _quantiles(xs: list[float]) -> str:
    xs = sorted(xs)
    if not xs:
        return "none"
    q = [xs[min(len(xs) - 1, int(p * len(xs)))] for p in (0.5, 0.9, 0.99)]
    over = sum(x > 1 for x in xs) / len(xs)
    return (f"median {q[0]:.2f} / p90 {q[1]:.2f} / p99 {q[2]:.2f}, above 1 at {over:.0%} "
            f"of {len(xs)}")


def _growth_lines(steps: list[tuple[int, float, float | None, float]]) -> list[str]:
    bands = ((0, 0), (1, 1), (2, 3), (4, 7), (8, 10**9))
    lines = []
    for name, rows in [("all steps", steps)] + [
            (f"step {lo}" if lo == hi else f"steps {lo}+" if hi > 10**6 else
             f"steps {lo}-{hi}", [r for r in steps if lo <= r[0] <= hi]) for lo, hi in bands]:
        q = [r[2] / r[1] for r in rows if r[2] is not None and r[1] > 0]
        a = [r[3] / r[1] for r in rows if r[1] > 0]
        lines.append(f"  {name}: realized / predicted from the last finish {_quantiles(q)}; "
                     f"from the prompt {_quantiles(a)}")
    return lines


def _waits_line(per: dict[str, dict], ids: list[str]) -> str:
    n = len(ids)

    def mean(k: str) -> float:
        return sum(per[i][k] for i in ids) / n
    rest = mean("tct") - mean("unloaded") - mean("first") - mean("again")
    return (f"TCT {mean('tct'):.1f} s (fcfs+lru {mean('fcfs'):.1f}, unloaded "
            f"{mean('unloaded'):.1f}), admission wait first {mean('first'):.1f} / again "
            f"{mean('again'):.1f}, demotions {mean('demotions'):.1f}, rest {rest:.1f}")


def point_parser(description: str) -> argparse.ArgumentParser:
    """The arguments of a per-point diagnosis (this script, scheduling_recompute.py,
    scheduling_charge_split.py): one grid point of bench/scheduling.py and its seeds."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("family", help="workload family (swe, web, bfcl, assistant)")
    ap.add_argument("load", type=float_arg, help="load, a multiple of the family's base rate")
    ap.add_argument("capacity", type=float_arg, help="share of the peak working set")
    ap.add_argument("seeds", help="comma-separated trace seeds")
    ap.add_argument("--policy", default=DEFAULT_POLICY, help="eviction policy spec")
    return ap


def point_seeds(ap: argparse.ArgumentParser, text: str) -> list[int]:
    """`text`'s seeds, or the parser's usage error naming it."""
    try:
        return [ascii_int(s) for s in text.split(",")]
    except ValueError:
        ap.error(f"seeds must be comma-separated integers, got {text!r}")


def point_params(ap: argparse.ArgumentParser, text: str | None) -> dict | None:
    """`--params`' JSON object, checked by the workflow scheduler itself (unknown key, bad
    value) before any simulation, or the parser's usage error naming what was wrong."""
    if text is None:
        return None
    try:
        params = json.loads(text)
    except ValueError:
        params = None
    if not isinstance(params, dict):
        ap.error(f"--params must be a JSON object, got {text!r}")
    try:
        probe = KVCacheManager(KVSpec(num_layers=1, num_kv_heads=1, head_dim=8), 4)
        make_scheduler(DEFAULT_SCHEDULER, probe, **params)
    except (TypeError, ValueError) as e:
        ap.error(f"--params {text!r}: {e}")
    return params


def main(argv: list[str] | None = None) -> int:
    ap = point_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--memory", action="store_true", help="the memory mode (docstring)")
    ap.add_argument("--waits", action="store_true", help="the waits mode (docstring)")
    ap.add_argument("--growth", action="store_true", help="the growth mode (docstring)")
    ap.add_argument("--returns", action="store_true", help="the returns mode (docstring)")
    ap.add_argument("--params", default=None, help="workflow scheduler parameters, a JSON "
                    "object (default: its defaults)")
    a = ap.parse_args(argv)
    seeds = point_seeds(ap, a.seeds)
    params = point_params(ap, a.params)
    if a.growth:
        steps = []
        for seed in seeds:
            steps += growth(a.family, a.load, a.capacity, seed, a.policy, params)["steps"]
        print(f"{a.family} {a.load:g}x {a.capacity:.0%}, seeds {a.seeds}: steps by their "
              "index in the session (0: its first step; from the last finish: none)",
              flush=True)
        print("\n".join(_growth_lines(steps)), flush=True)
        return 0
    for seed in seeds:
        if a.waits:
            per = waits(a.family, a.load, a.capacity, seed, a.policy, params)["sessions"]
            ids = sorted(per, key=lambda i: -per[i]["tct"])
            tail = ids[:max(1, len(ids) // 20)]
            print(f"seed {seed}: all {len(ids)} sessions: {_waits_line(per, ids)}; the "
                  f"slowest {len(tail)}: {_waits_line(per, tail)}", flush=True)
            continue
        if a.returns:
            d = returns(a.family, a.load, a.capacity, seed, a.policy, params)
            seen, n = d["returns"], max(len(d["returns"]), 1)
            print(f"seed {seed}: mean TCT {d['row']['tct_mean_s']:.1f} s, {len(seen)} demoted "
                  f"sessions' steps arrived, their prompts cached "
                  f"{sum(c[0] for c in seen) / n:.2f} on average; nobody else waiting at "
                  f"{sum(c[1] == 0 for c in seen) / n:.0%}, a new session at "
                  f"{sum(c[2] > 0 for c in seen) / n:.0%}, only demoted ones at "
                  f"{sum(c[1] > 0 and c[2] == 0 for c in seen) / n:.0%}; nobody else and "
                  f"the whole context beyond the admitted contexts' room at "
                  f"{sum(c[1] == 0 and c[3] for c in seen) / n:.0%}, nobody else and the "
                  f"uncached part beyond the free blocks at "
                  f"{sum(c[1] == 0 and c[4] for c in seen) / n:.0%}", flush=True)
            continue
        if a.memory:
            d = memory(a.family, a.load, a.capacity, seed, a.policy, params)
            t, r = d["time"], d["row"]
            span = r["makespan_s"]
            bands = ("live < 0.5", "live 0.5-0.85", "live >= 0.85")
            cells = "; ".join(
                f"{b} {(t[b, False] + t[b, True]) / span:.0%} of the makespan (someone "
                f"waiting {t[b, True] / span:.0%}, occupied "
                f"{t['occupied', b] / max(t[b, False] + t[b, True], 1e-9):.2f})"
                for b in bands)
            print(f"seed {seed}: mean TCT {r['tct_mean_s']:.1f} s, kv_utilization "
                  f"{r['kv_utilization']:.2f}, live share {r['kv_live_share']:.2f}: {cells}",
                  flush=True)
            continue
        d = demotions(a.family, a.load, a.capacity, seed, a.policy, params)
        r, f, per = d["row"], d["finish"], d["sessions"]
        n = sum(d["how"].values())
        rec = sorted(per.items(), key=lambda kv: -kv[1]["recomputed"])
        total = sum(c["recomputed"] for _, c in rec) or 1
        top = rec[:3]
        lengths = sorted(d["lengths"].values(), reverse=True)
        print(f"seed {seed}: mean TCT {r['tct_mean_s']:.1f} s, {n} demotions, by rule: "
              + ", ".join(f"{k} {v}" for k, v in d["how"].most_common())
              + "; by what took the working sets over the tiers: "
              + ", ".join(f"{k} {v}" for k, v in d["why"].most_common())
              + f"; finishes {f['finishes']}, context beyond its predicted working set at "
              f"{f['context beyond its predicted working set']} ({f['blocks beyond']} blocks "
              f"in all); recomputed {total / 1e3:.0f}k tokens, the top 3 sessions "
              + ", ".join(f"{sid} {c['recomputed'] / total:.0%} ({c['demotions']} demotions, "
                          f"length rank {lengths.index(d['lengths'][sid]) + 1})"
                          for sid, c in top), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
