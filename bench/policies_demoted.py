"""How well does graph forecast when a demoted session comes back? (fit seeds only)

`python bench/policies_decisions.py` found that on the swe family graph loses at its
decisions on *demoted* sessions' blocks: the ones it keeps in place of ttl's picks are
rarely read before it evicts them anyway. This says why, on one simulation of the policy
(graph or a graph spec) per case: every demoted session that holds cached blocks is noted
at the first victim search after its demotion with graph's forecast of the time until its
blocks are read (`_graph_time`, unhedged), how long it had been demoted and its context's
size (blocks), and when its next step starts the realized time is recorded. Printed per
case: how many were noted, Spearman's rank correlation of the realized time with the
forecast, with the time demoted so far and with the context's size (a ranking of demoted
sessions is only as good as the first), the median forecast and realized times and their
median |log ratio|, and the demotions' own lengths (demotion to step start) by the context's
size at the demotion (thirds of the demotions). Since the scheduler tells the policy a waiting
demoted step's place in its queue (`EvictionPolicy.session_admission_rank`), also: of the
demoted sessions holding cached blocks when their waiting step is first told a rank, how many,
and, from that moment to their step's start, the rank correlation of the realized time with
that rank and with graph's forecast then (of the option's pricing, if the spec has it on),
and per rank told, how many and their median realized time. And the gate's room at that
first tell (`room`): the blocks by which the admitted working sets plus this step's charge
exceed the tiers (its own deficit; negative: room to spare), the same with the charges of
the steps ahead of it in its tenant's queue added (the queue's), and with those of every
waiting step at or ahead of its place in any tenant's queue (all queues'), the pool's (its
whole prompt's blocks and the running steps' reserve beyond the free-or-evictable GPU
blocks), and the deficit the scheduler tells the policy (`session_admission_room`: the
larger of the gate's and the pool's), each's Spearman against the realized time, and the
median of that time over these rows ("median realized from room read").

    python bench/policies_demoted.py --trace swe --seed 202 --fraction 0.6
    python bench/policies_demoted.py --trace swe --seed 202 --fraction 0.6 \
        --policy 'graph[demoted_size=1]'
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys

import policies as P
from policies_case import TRACE_HELP, add_case_args, check_case

from kvsaga.policy import POLICIES
from kvsaga.policy.graph import GraphPolicy
from kvsaga.sim.config import SimConfig
from kvsaga.sim.simulator import Simulator


def ranks(xs: list[float]) -> list[float]:
    """Ranks from 1, ties given their mean rank."""
    order = sorted(range(len(xs)), key=xs.__getitem__)
    out = [0.0] * len(xs)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return out


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation; nan when either side does not vary or n < 3."""
    if len(xs) < 3:
        return math.nan
    a, b = ranks(xs), ranks(ys)
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b, strict=True))
    saa = sum((x - ma) ** 2 for x in a)
    sbb = sum((y - mb) ** 2 for y in b)
    return sab / math.sqrt(saa * sbb) if saa > 0 and sbb > 0 else math.nan


def room(sched, sid: str, now: float) -> tuple[float, ...] | None:
    """Demoted `sid`'s waiting step's room deficits at `now`, in blocks, as the workflow
    scheduler's working-set gate charges (`WorkingSetGate._session_fits` at the default
    "uncached" re-admission charge: the uncached part of the prompt, the working set over
    the horizon, the reserves): own, own + the steps ahead in its tenant's queue, own + every
    waiting step at or ahead of its place in any queue; less overcommit x the tiers; and the
    pool's (`BlockRoom._fits`: its whole prompt's blocks and the running steps' reserve, less
    the free-or-evictable GPU blocks); and what the scheduler tells the policy
    (`AdmissionOrder.room_deficit`: the larger of the gate's and the pool's, the gate's
    skipped with nobody admitted). None: not waiting in a tenant's queue."""
    limit = sched.overcommit * sched.capacity
    bs = sched.manager.block_size

    def need(req) -> int:
        own = req.num_tokens - sched.lookup(req).gpu_hit_blocks * bs
        ws = sched._working_set(req.workflow, own, 0)
        var = sched._growth_var(req.workflow, None, True) if sched.growth_reserve else 0.0
        return ws + sched._reserves(req, var)
    place = None
    for q in sched._pending.values():
        for i, r in enumerate(q):
            if r.session_id == sid:
                place, mine, queue = i, need(r), sum(need(x) for x in list(q)[:i + 1])
    if place is None:
        return None
    every = sum(need(r) for q in sched._pending.values() for r in list(q)[:place + 1])
    c = sched._committed
    req = next(r for q in sched._pending.values() for r in q if r.session_id == sid)
    running = sched._running_reserve() if sched.running else 0
    full = sched.lookup(req).blocks_to_admit(sched._reserve_target(req, req.num_tokens))
    pool = full + running - sched.manager.pool.num_available
    return (c + mine - limit, c + queue - limit, c + every - limit, pool,
            sched.room_deficit(req, running))


def graph_class(spec: str) -> tuple[type[GraphPolicy], dict]:
    """The policy class `spec` (graph or a graph spec) names and its parameters; ValueError
    for any other policy (this module's and policies_demoted_paused.py's probes)."""
    name, params = P.parse_spec(spec)
    base = POLICIES[name]
    if not issubclass(base, GraphPolicy):
        raise ValueError(f"{spec!r} is not a graph policy: only graph forecasts demotions")
    return base, params


def probed_simulator(trace_name: str, seed: int, frac: float, make_policy):
    """A fit case's simulation (graph's configuration) with the policy `make_policy(cost)`
    builds, a probe: (GPU blocks, the policy, the simulator, not yet run)."""
    trace = P.build_trace(trace_name, seed)
    peak, longest = P._peak(trace_name, seed)
    blocks = P._blocks(peak, longest, frac)
    config = SimConfig(preset=P.PRESET, num_gpu_blocks=blocks, policy="graph")
    pol = make_policy(config.cost)
    return blocks, pol, Simulator(trace, config, policy=pol)


def case_parser(description: str, trace_help: str,
                trace_default: str | None = None) -> argparse.ArgumentParser:
    """The command line of this module and policies_demoted_paused.py: --trace (its help and
    default), --seed, --fraction and --policy (graph or a graph spec)."""
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_args(p, trace_default, 202, trace_help)
    p.add_argument("--policy", default="graph", help="graph or a graph spec")
    return p


def probe(spec: str, cost) -> GraphPolicy:
    """`spec` (a graph spec) built with the noting hooks around its own."""
    base, params = graph_class(spec)

    class Noting(base):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.noted: dict[str, tuple[float, float, float, int]] = {}
            self.seen: list[tuple[float, float, float, int]] = []  # forecast, lasted, real, size
            self.at_demotion: dict[str, tuple[float, int]] = {}
            self.lengths: list[tuple[int, float]] = []  # size at demotion, length
            self.first_rank: dict[str, tuple[int, float, float]] = {}  # rank, forecast, when
            self.ranked: list[tuple[float, float, float]] = []  # rank, forecast, real
            self.sched = None  # the simulator's scheduler, set once it is built (`room`)
            self.first_room: dict[str, tuple[float, ...]] = {}
            self.room_rows: list[tuple[float, ...]] = []  # 5 deficits, realized

        def session_admission_rank(self, session, rank, now: float) -> None:
            super().session_admission_rank(session, rank, now)
            sid = session.session_id
            if rank is None:
                self.first_rank.pop(sid, None)
                self.first_room.pop(sid, None)
            elif sid not in self.first_rank and sid in self._deferred and self.groups.get(sid):
                self.first_rank[sid] = (rank, self._graph_time(sid, now, True, False)[1], now)
                d = room(self.sched, sid, now) if self.sched is not None else None
                if d is not None:
                    self.first_room[sid] = d

        def session_deferred(self, session, deferred: bool, now: float) -> None:
            if deferred and session.session_id not in self.at_demotion:
                self.at_demotion[session.session_id] = (now, len(session.block_ids))
            super().session_deferred(session, deferred, now)

        def choose_victims(self, num_blocks: int, now: float) -> list[int]:
            for sid, since in self._deferred.items():
                if sid not in self.noted and self.groups.get(sid):
                    t = self._graph_time(sid, now, True, False)[1]
                    if math.isfinite(t):  # released until its tool returns: no forecast
                        self.noted[sid] = (t, now - since, now,
                                           self._ctx_blocks.get(sid, 0))
            return super().choose_victims(num_blocks, now)

        def step_started(self, session, now: float) -> None:
            sid = session.session_id
            n = self.noted.pop(sid, None)
            if n is not None:
                self.seen.append((n[0], n[1], now - n[2], n[3]))
            r = self.first_rank.pop(sid, None)
            if r is not None:
                self.ranked.append((float(r[0]), r[1], now - r[2]))
                d = self.first_room.pop(sid, None)
                if d is not None:
                    self.room_rows.append((*d, now - r[2]))
            d = self.at_demotion.pop(sid, None)
            if d is not None:
                self.lengths.append((d[1], now - d[0]))
            super().step_started(session, now)

    return Noting(cost=cost, **params)


def row(trace_name: str, seed: int, frac: float, spec: str) -> str:
    blocks, pol, sim = probed_simulator(trace_name, seed, frac, lambda c: probe(spec, c))
    pol.sched = sim.scheduler if hasattr(sim.scheduler, "_pending") else None
    result = sim.run()
    seen = pol.seen
    f, lasted, real, size = ([s[i] for s in seen] for i in range(4))
    rk, rf, rreal = ([s[i] for s in pol.ranked] for i in range(3))
    own, queue, every, pool, told, rreal2 = ([x[i] for x in pol.room_rows] for i in range(6))
    per_rank: dict[int, list[float]] = {}
    for r, x in zip(rk, rreal, strict=True):
        per_rank.setdefault(int(r), []).append(x)
    lo = 1e-3

    def med(v: list[float]) -> str:
        return f"{statistics.median(v):.2f}" if v else "-"
    err = [abs(math.log(max(r, lo) / max(x, lo))) for x, r in zip(f, real, strict=True)]
    by_size = sorted(pol.lengths)
    thirds = [by_size[i * len(by_size) // 3:(i + 1) * len(by_size) // 3] for i in range(3)]
    third = "; ".join(f"{t[0][0]}-{t[-1][0]} blocks: {med([x for _, x in t])} s"
                      for t in thirds if t) or "-"
    return (f"| {trace_name} | {seed} | {frac:.0%} | {blocks} | {spec} | "
            f"{result.recomputed_tokens / 1e6:.3f} | {len(seen)} | {spearman(f, real):+.2f} | "
            f"{spearman(lasted, real):+.2f} | {spearman([float(s) for s in size], real):+.2f} | "
            f"{med(f)} | {med(real)} | {med(err)} | {third} | {len(pol.ranked)} | "
            f"{spearman(rk, rreal):+.2f} | {spearman(rf, rreal):+.2f} | "
            + ("; ".join(f"{r}: {len(v)}, {med(v)} s" for r, v in sorted(per_rank.items()))
               or "-") + f" | {len(pol.room_rows)} | {med(own)} | {spearman(own, rreal2):+.2f} | "
            f"{spearman(queue, rreal2):+.2f} | {spearman(every, rreal2):+.2f} | {med(pool)} | "
            f"{spearman(pool, rreal2):+.2f} | {med(told)} | {spearman(told, rreal2):+.2f} | "
            f"{med(rreal2)} |")


HEADER = ("| trace | seed | capacity | blocks | policy | recomputed (M) | demoted noted | "
          "rank corr. forecast | rank corr. time demoted | rank corr. context | "
          "median forecast (s) | median realized (s) | median abs log err | "
          "demotion length by context (median) | ranked | rank corr. rank | "
          "rank corr. forecast at rank | by rank: sessions, median realized | room read | "
          "median own deficit (blocks) | rank corr. own deficit | rank corr. queue deficit | "
          "rank corr. all queues' deficit | median pool deficit (blocks) | "
          "rank corr. pool deficit | median told deficit (blocks) | "
          "rank corr. told deficit | median realized from room read (s) |\n"
          "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---|"
          "---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def main(argv: list[str] | None = None) -> int:
    p = case_parser(__doc__, TRACE_HELP, "swe")
    args = p.parse_args(argv)
    check_case(p, args.seed, args.fraction)
    print(HEADER)
    try:
        print(row(args.trace, args.seed, args.fraction, args.policy), flush=True)
    except ValueError as e:
        p.error(str(e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
