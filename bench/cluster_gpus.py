"""Where a cluster run's busy time went, GPU by GPU: the evidence behind load_imbalance;
and where its sessions' time went: the evidence behind a mean TCT.

    python bench/cluster_gpus.py --family swe --gpus 16 --sessions-per-gpu 8 --seed 1
    python bench/cluster_gpus.py --family swe --gpus 16 --seed 1 --knob max_commitment=0
    python bench/cluster_gpus.py --family assistant --gpus 8 --sessions-per-gpu 64 --load 8

One simulation (the trace of bench/cluster.py: same families, load and scale) with kvsaga
routing (`--knob NAME=VALUE` overrides a `RoutingConfig` field; `--router`, `--scheduler`
and `--policy` run another arm), printing first the mean TCT split into tool pauses,
waiting (a step released on its GPU until it first starts: admission, or a full batch),
service (first start to last token) and the rest (migration delays); the GPUs' busy share of
the makespan (low: they idle while steps wait, so memory, not compute, holds them); and
the context a resumed step could reuse against what it found cached. Then per GPU, busiest
first: busy time and its share of the mean, the busy time it had when the last session
arrived (what is left is the drain), batch steps, tokens recomputed, sessions placed there
first, steps stolen in and out, and the share of routing decisions at which its sessions'
contexts overflowed its pool (`ReplicaStats.commitment` > 1: the thrash no queue count shows).
"""

from __future__ import annotations

import argparse
import collections

from ascii_args import float_arg, int_arg
from cluster import trace

from kvsaga.config import parse_bytes
from kvsaga.routing import RoutingConfig
from kvsaga.sim.cluster import ClusterSimulator
from kvsaga.sim.config import SimConfig


class WatchedGPU(ClusterSimulator.gpu_class):
    """A cluster GPU that records, per step, when it was released here, first started and
    finished, and, at its first start, its prompt, the tokens found cached and the tokens
    it could have found (the context before the step's new input; a first step: its
    shared prefix)."""

    def begin(self, req, now: float):
        key = (req.session.id, req.k)
        first = key not in self.cluster.steps
        start = super().begin(req, now)
        if first:
            s, k = req.session, req.k
            reusable = (s.shared_prefix.tokens if k == 0
                        else s.prompt_length(k) - s.steps[k].input_tokens)
            self.cluster.steps[key] = [req.arrival, now, now, req.attempt_len,
                                       start.num_cached_tokens, reusable]
        return start

    def _maybe_finish(self, req) -> int:
        done = req.num_sampled >= req.num_out
        ended = super()._maybe_finish(req)
        if done:
            self.cluster.steps[(req.session.id, req.k)][2] = self.now
        return ended


class WatchedCluster(ClusterSimulator):
    """A ClusterSimulator that records, per GPU and per step, what `main` prints."""

    gpu_class = WatchedGPU

    def __init__(self, *args, last_arrival: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.last_arrival = last_arrival
        self.busy_at_last_arrival: dict[str, float] = {}
        self.placed: collections.Counter = collections.Counter()
        self.stolen_in: collections.Counter = collections.Counter()
        self.stolen_out: collections.Counter = collections.Counter()
        self.overflowing: collections.Counter = collections.Counter()
        self.decisions = 0
        self.timeline_s = 0.0  # --timeline: sample every GPU's busy time this often
        self.samples: list[tuple[float, dict[str, float], dict[str, float]]] = []
        # Per GPU, its sessions' resumed steps routed while it was ahead (`_ahead`), by
        # what a balance steal found: "nobody" (no replica behind the mean with nothing
        # waiting and no more busy steps), "room" (some behind, none with room), "fits";
        # "moved (...)": the step moved all the same (a queue or memory steal, or a balance
        # steal when it fits); "forced": a balance steal where none had room
        # (`busy_balance_force`, or `busy_balance_crowding`).
        self.ahead: dict[str, collections.Counter] = collections.defaultdict(
            collections.Counter)
        # (session, step) -> [released here, first start, end, prompt, cached, reusable]
        self.steps: dict[tuple[str, int], list] = {}

    def _route(self, t, session, k) -> None:
        if t >= self.last_arrival and not self.busy_at_last_arrival:
            self.busy_at_last_arrival = {g.name: g._busy for g in self.gpus}
        self.decisions += 1
        for g in self.gpus:
            self.overflowing[g.name] += g.routing_stats().commitment > 1
        if self.timeline_s and (not self.samples or t >= self.samples[-1][0] + self.timeline_s):
            self.samples.append((t, {g.name: g._busy for g in self.gpus},
                                 {g.name: g.routing_stats().commitment for g in self.gpus}))
        home = self.router.homes.get(session.id) if k and self.timeline_s else None
        why = self._ahead_outcome(home, session) if home is not None else None
        super()._route(t, session, k)
        route = self._routes.get(session.id)  # (None: a move refused, the step retried)
        if why is not None and route is not None:
            forced = route.reason == "balance" and why == "room"
            moved = route.moved_from is not None
            self.ahead[home]["forced" if forced else f"moved ({why})" if moved else why] += 1
        if k == 0 and route is not None:
            self.placed[route.replica] += 1

    def _ahead_outcome(self, home: str, session) -> str | None:
        """None when `home` is not ahead (`KvsagaRouter._ahead`); else what a balance steal
        would find: "nobody" behind the mean that is idle and no busier, or "room" (some,
        none with room for the session below `max_commitment`), or "fits"."""
        router = self.router
        if not hasattr(router, "_ahead"):
            return None
        stats = {g.name: g.routing_stats() for g in self.gpus}
        ahead = router._ahead(home, stats)
        if ahead is None:
            return None
        done, mean = ahead
        busy_home = router.busy(home, stats)
        behind = [x for x in router.replicas if x != home and router.waiting(x, stats) == 0
                  and router.busy(x, stats) <= busy_home and done[x] < mean]
        if not behind:
            return "nobody"
        tokens = router._tokens(home, self._request(session), stats)
        return "fits" if any(router._fits(x, tokens, stats) for x in behind) else "room"

    def _request(self, session):
        from kvsaga.routing import RouteRequest
        return RouteRequest(session=session.id)

    def _move(self, session, old, new, migrate: bool) -> float | None:
        delay = super()._move(session, old, new, migrate)
        if delay is not None:  # (None: the import was refused, the session stayed)
            self.stolen_out[old.name] += 1
            self.stolen_in[new.name] += 1
        return delay


def _knob(text: str) -> tuple[str, float]:
    name, eq, value = text.partition("=")
    if not eq or name not in RoutingConfig.__dataclass_fields__:
        raise argparse.ArgumentTypeError(f"--knob wants NAME=VALUE with a RoutingConfig "
                                         f"field, got {text!r}")
    return name, float_arg(value)


def time_split(sim: WatchedCluster, sessions, res, mean_busy: float) -> list[str]:
    """Mean TCT as tool pauses + waiting + service + the rest (per session, summed over its
    steps), the GPUs' busy share of the makespan, and the reusable context found cached."""
    n = len(sessions)
    tool = sum(st.tool_s for s in sessions for st in s.steps[:-1]) / n
    steps = sim.steps.items()
    wait = sum(v[1] - v[0] for _, v in steps) / n
    first_wait = sum(v[1] - v[0] for (_, k), v in steps if k == 0) / n
    service = sum(v[2] - v[1] for _, v in steps) / n
    rest = res.tct_mean_s - tool - wait - service
    later = [v for (_, k), v in steps if k > 0]
    reusable = sum(v[5] for v in later)
    cached = sum(v[4] for v in later)
    early = sum(sim.busy_at_last_arrival.values()) / len(sim.gpus)
    return [
        f"mean TCT {res.tct_mean_s:.1f} s = tool pauses {tool:.1f} + waiting {wait:.1f} "
        f"(first steps {first_wait:.1f}) + service {service:.1f} + rest {rest:.1f}",
        f"GPUs busy {mean_busy:.0f} s each on average: {mean_busy / res.makespan_s:.0%} of "
        f"the makespan, {early / sim.last_arrival:.0%} of the time until the last arrival",
        f"resumed steps: {cached:,} tokens found cached of {reusable:,} reusable "
        f"({cached / max(1, reusable):.0%})",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="swe", help="workload family of the trace")
    p.add_argument("--gpus", type=int_arg, default=16, help="GPUs in the fleet")
    p.add_argument("--sessions-per-gpu", type=int_arg, default=8,
                   help="sessions in the trace per GPU")
    p.add_argument("--scale", type=float_arg, default=0.2,
                   help="multiplies the trace's token counts and tool times")
    p.add_argument("--load", type=float_arg, default=2.0,
                   help="arrivals per GPU, a multiple of the family's default rate")
    p.add_argument("--seed", type=int_arg, default=1, help="trace seed")
    p.add_argument("--kv-memory", default="3G", help="KV capacity of each GPU")
    p.add_argument("--router", default="kvsaga", help="the fleet's router")
    p.add_argument("--scheduler", default="workflow", help="each GPU's scheduler")
    p.add_argument("--policy", default="lru", help="each GPU's eviction policy")
    p.add_argument("--timeline", type=float_arg, default=0.0, metavar="S",
                   help="also sample every GPU's busy time every S s of the run and print "
                        "the busiest GPUs' share of the mean over time, and count what the "
                        "balance steal found at each GPU's decisions while it was ahead")
    p.add_argument("--knob", type=_knob, action="append", default=[],
                   help="RoutingConfig override, e.g. steal_margin=2 (repeatable)")
    args = p.parse_args()
    knobs = {k: int(v) if k == "steal_min_waiting" else v for k, v in args.knob}
    sessions = trace(args.family, args.gpus, args.sessions_per_gpu, args.scale, args.seed,
                     args.load)
    config = SimConfig(kv_memory_bytes=parse_bytes(args.kv_memory), policy=args.policy,
                       scheduler=args.scheduler)
    routing = RoutingConfig(bytes_per_token=config.cost.kv_spec.bytes_per_token,
                            cost=config.cost, **knobs)
    last = max(s.arrival_s for s in sessions)
    sim = WatchedCluster(sessions, config, args.gpus, args.router, routing,
                         last_arrival=last)
    sim.timeline_s = args.timeline
    res = sim.run()
    print(f"{args.family}, {args.gpus} GPUs x {args.sessions_per_gpu} sessions at "
          f"{args.load:g}x, seed {args.seed}, {args.router} + {args.scheduler} + "
          f"{args.policy}, knobs {knobs or 'default'}: mean TCT {res.tct_mean_s:.1f} s, "
          f"load_imbalance {res.load_imbalance:.3f}, {res.num_moved} steps moved; last "
          f"arrival at {last:.0f} s, makespan {res.makespan_s:.0f} s")
    mean = sum(g._busy for g in sim.gpus) / len(sim.gpus)
    print("\n".join(time_split(sim, sessions, res, mean)))
    print(f"{'gpu':>6} {'busy s':>8} {'x mean':>6} {'at last arr':>11} {'steps':>7} "
          f"{'recomputed':>10} {'placed':>6} {'in':>4} {'out':>4} {'overflow':>8}")
    for g in sorted(sim.gpus, key=lambda g: -g._busy):
        n = g.name
        print(f"{n:>6} {g._busy:8.1f} {g._busy / mean:6.2f} "
              f"{sim.busy_at_last_arrival.get(n, g._busy):11.1f} "
              f"{g._counts['batch_steps']:7,} {g._counts['recomputed']:10,} "
              f"{sim.placed[n]:6} {sim.stolen_in[n]:4} {sim.stolen_out[n]:4} "
              f"{sim.overflowing[n] / max(1, sim.decisions):8.0%}  ahead: "
              f"{dict(sim.ahead[n]) if sim.ahead[n] else '-'}")
    if sim.samples:
        print(timeline(sim))


def timeline(sim: WatchedCluster, top: int = 4) -> str:
    """Per sample: the fleet's mean busy time and mean commitment, and the `top` busiest
    GPUs at the end: their busy time over the mean then, and their commitment."""
    names = [g.name for g in sorted(sim.gpus, key=lambda g: -g._busy)[:top]]
    lines = [f"{'t s':>6} {'mean busy':>9} {'mean cmt':>8} {'max/mean':>8} (who) | "
             + " | ".join(f"{n}: x mean, cmt" for n in names)]
    for t, busy, cmt in sim.samples:
        mean = sum(busy.values()) / len(busy)
        if not mean > 0:
            continue
        who = max(busy, key=busy.__getitem__)
        lines.append(f"{t:6.0f} {mean:9.1f} {sum(cmt.values()) / len(cmt):8.2f} "
                     f"{busy[who] / mean:8.3f} ({who}) | "
                     + " | ".join(f"{busy[n] / mean:5.3f} {cmt[n]:4.2f}" for n in names))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
