"""Does a policy lose at its decisions or through the run they lead to? (fit seeds only)

`--regret --smooth` (bench/policies_regret.py) found that where graph loses to ttl in
expectation it evicts more live blocks of every class, not one misranked class. Two causes
fit that, and they call for different fixes:

- **ranking**: at the same pool state graph picks victims that are needed sooner than the
  ones ttl would pick (a forecast it gets wrong): fix the forecast;
- **cascade**: its choices are no worse one by one, but the run they lead to is harder:
  more contexts live at once, more demotions, longer steps, so more decisions to make.

This mode measures both on one simulation per leader. The leader (say graph) runs the
cache as it does alone; at every victim search the other policy (the *shadow*, ttl), fed
the same hooks and the same block tracking (an `adaptive` whose leader never changes:
`realized` with an endless epoch), names the victims it would have taken from the same
pool state, without evicting them. Where the two sets differ, each block that only one
names is classed (`demoted`, `queued`, `paused` live sessions; `plain` or `dead` ownerless
blocks, as bench/policies.py `--regret` classes them) and priced by when it is next read,
on two clocks: `step`, the simulated start of its session's next step in the leader's run
(an ownerless block: the trace's next release of it; inf if nothing reads it again), and
`release`, the trace's release time (the tool's return; admission not counted). Belady's
rule says the better victim is the one read later, so per differing search the leader's
own victims are *worse* when their median next read is sooner than the shadow's; `sooner`
is the share of (leader-only, shadow-only) victim pairs in which the leader's is read
sooner. The step clock favours the leader (its victims' sessions turn cold and wait longer
for admission); run both leaders and compare the two rows, not one row with 0.5.
The fairer per-decision test is what keeping paid: of the shadow-only live blocks the
leader kept, how many were read (their session's next step started) before the leader
evicted them anyway (`read while kept`), beside how many of the leader-only live victims
were read again (each a rebuild). Comparing that share between the two leaders' rows says
whose deviations keep blocks that are used.
The run's side is measured on the same simulation: victim searches, live blocks evicted,
demotions (`session_deferred`), and the sessions holding cache (any non-free block) at a
search, mean over searches (live contexts held at once). Equal run-level figures and a
per-decision share that favours the loser point at its decisions; a share that favours it
beside a worse run points at what its choices do later (the cascade).

`--admission` separates ranking from admission: the workflow scheduler predicts working
sets, tool times and step counts from the policy's `graph` (lru has none), so two policies
differ in both. Each ranking of the pair runs under each one's admission graph.

What it cannot see: the shadow's choices are read off the leader's pool, never played
out. The leader's recomputed tokens are printed beside its solo run's (`solo`): equal, or
the shadow's searches disturbed it.

    python bench/policies_decisions.py --trace swe+bfcl --seed 402 --fraction 0.6
    python bench/policies_decisions.py --trace swe --seed 402 --fraction 0.3 --smooth
    python bench/policies_decisions.py --trace assistant --seed 101 --fraction 0.3 \
        --pair graph,lru --smooth --admission
"""

from __future__ import annotations

import argparse
import math
import sys
from bisect import bisect_left, bisect_right
from collections import defaultdict

import policies as P  # bench/ is on the path when run as a script
from policies_case import add_case_args
from policies_smooth import pool_sizes

from kvsaga.policy import AdaptivePolicy, make_policy
from kvsaga.pool import FREE
from kvsaga.sim.oracle import TraceOracle
from kvsaga.sim.simulator import SimConfig, Simulator

ENDLESS = 1e12  # epoch_pools: the first expert leads the whole run


def _median(xs: list[float]) -> float:
    """The median (the mean of the middle two for an even count); NaN with no values."""
    xs = sorted(xs)
    n = len(xs)
    if not n:
        return math.nan
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def _sooner_pairs(mine: list[float], theirs: list[float]) -> tuple[float, int]:
    """(pairs where mine is read sooner, + half of the ties; all pairs)."""
    theirs = sorted(theirs)
    n = 0.0
    for x in mine:
        lo, hi = bisect_left(theirs, x), bisect_right(theirs, x)
        n += (len(theirs) - hi) + 0.5 * (hi - lo)
    return n, len(mine) * len(theirs)


def decisions(name: str, seed: int, blocks: int, leader: str, shadow: str) -> dict:
    """One simulation of `leader` with `shadow` naming its own victims beside it."""
    if seed not in P.TUNE_SEEDS:
        raise ValueError(f"seed {seed} is not a fit seed {P.TUNE_SEEDS}: a diagnosis reads "
                         "fit data only")
    trace = P.build_trace(name, seed)
    config = SimConfig(preset=P.PRESET, num_gpu_blocks=blocks, policy="adaptive")
    pol = make_policy("adaptive", cost=config.cost, experts=(leader, shadow),
                      shadow_cache=False, realized=True, epoch_pools=ENDLESS)
    oracle = TraceOracle(trace, config.cost.kv_spec.block_size)
    pol.oracle = oracle  # the simulator feeds it
    sim = Simulator(trace, config, policy=pol)
    inner = pol.choose_victims
    other = pol.experts[1].policy
    starts: dict[str, list[float]] = defaultdict(list)
    searches: list[tuple[float, list[tuple], list[tuple]]] = []  # now, only-leader, only-shadow
    demoted: set[str] = set()
    # the shadow-only live blocks the leader kept: [when, owner, first eviction after, class]
    kept: list[list] = []
    watch: dict[int, list[int]] = defaultdict(list)
    out = {"searches": 0, "differ": 0, "live_victims": 0, "demotions": 0, "held": 0}

    def describe(b: int, now: float) -> tuple:
        v = pol.view
        owner = v.block_owner[b]
        nu = oracle.next_use(owner, v.block_hash[b], v.block_position[b], now)
        live = owner is not None and owner in v.sessions
        cls = (("demoted" if owner in demoted else
                "queued" if oracle.is_waiting(owner) else "paused") if live else
               "dead" if math.isinf(nu) else "plain")
        if SPLIT_DEMOTED and cls == "demoted":  # `--split-demoted`: is its tool back?
            cls = "demoted, tool back" if oracle.is_waiting(owner) else "demoted, tool out"
        # a live session's block: its step start is resolved after the run
        return (owner if live else None, nu, cls)

    def hooked(n: int, now: float) -> list[int]:
        theirs = other.choose_victims(n, now) if n > 0 else []  # the same pool state
        mine = inner(n, now)
        v = pol.view
        state, owner = v.pool.state, v.block_owner
        out["searches"] += 1
        out["held"] += len({owner[b] for b in range(len(state))
                            if state[b] != FREE and owner[b] in v.sessions})
        out["live_victims"] += sum(owner[b] in v.sessions for b in mine)
        for b in mine:  # a kept block's first eviction since it was kept
            for i in watch.pop(b, ()):
                kept[i][2] = now
        a, b_ = set(mine), set(theirs[:len(mine)])
        if a != b_:
            out["differ"] += 1
            theirs_only = [describe(b, now) for b in b_ - a]
            searches.append((now, [describe(b, now) for b in a - b_], theirs_only))
            for b, d in zip(b_ - a, theirs_only, strict=True):
                if d[0] is not None:
                    watch[b].append(len(kept))
                    kept.append([now, d[0], math.inf, d[2]])
        return mine

    deferred_hook, started_hook = pol.session_deferred, pol.step_started

    def session_deferred(session, deferred: bool, now: float) -> None:
        out["demotions"] += bool(deferred)
        (demoted.add if deferred else demoted.discard)(session.session_id)
        deferred_hook(session, deferred, now)

    def step_started(session, now: float) -> None:
        starts[session.session_id].append(now)
        started_hook(session, now)

    pol.choose_victims = hooked
    pol.session_deferred = session_deferred
    pol.step_started = step_started
    out["recomputed"] = sim.run().recomputed_tokens

    def next_read(now: float, d: tuple, by_release: bool) -> float:
        sid, nu, _ = d
        if sid is None or by_release:
            return nu - now
        st = starts.get(sid, [])
        i = bisect_right(st, now)
        return st[i] - now if i < len(st) else math.inf

    gap: list[float] = []
    for clock in ("step", "release"):
        worse = better = 0
        sooner, pairs = 0.0, 0
        for now, mine, theirs in searches:
            m = [next_read(now, d, clock == "release") for d in mine]
            t = [next_read(now, d, clock == "release") for d in theirs]
            s, k = _sooner_pairs(m, t)
            sooner, pairs = sooner + s, pairs + k
            mm, mt = _median(m), _median(t)
            worse += mm < mt
            better += mm > mt
            if clock == "step" and math.isfinite(mm) and math.isfinite(mt):
                gap.append(mm - mt)
        out.update({f"worse_{clock}": worse, f"better_{clock}": better,
                    f"sooner_{clock}": sooner, f"pairs_{clock}": pairs})
    out["only"] = sum(len(m) for _, m, _ in searches)
    # What keeping paid: a kept block read (its session's next step started) before the
    # leader evicted it is a hit the shadow's choice would have lost; one evicted first
    # was kept in vain. Against it: the leader-only live victims read again.
    out["kept"], out["earned"] = len(kept), 0
    for t, sid, ev, cls in kept:
        used = next_read(t, (sid, 0.0, ""), False) < ev - t
        out["earned"] += used
        out[f"earned:{cls}"] = out.get(f"earned:{cls}", 0) + used
    out["lost"] = sum(math.isfinite(next_read(now, d, False)) for now, m, _ in searches
                      for d in m if d[0] is not None)
    for i, side in ((1, "mine"), (2, "theirs")):
        for s in searches:
            for d in s[i]:
                out[f"{side}:{d[2]}"] = out.get(f"{side}:{d[2]}", 0) + 1
    out["gap"] = gap
    return out


class _Crossed(AdaptivePolicy):
    """The first expert ranks for the whole run (an endless epoch); the scheduler reads the
    Execution Graph of the expert `admitted_by` names (None: lru's, no graph)."""

    admitted_by = 0

    @property
    def graph(self):
        return getattr(self.experts[self.admitted_by].policy, "graph", None)


def crossed(name: str, seed: int, blocks: int, ranking: str, admission: str) -> int:
    """Recomputed tokens of `ranking`'s victims under the admission that `admission`'s
    graph gives the workflow scheduler (which predicts working sets, tool times and step
    counts from the policy's `graph`; lru has none): ranking and admission apart."""
    if seed not in P.TUNE_SEEDS:
        raise ValueError(f"seed {seed} is not a fit seed {P.TUNE_SEEDS}")
    trace = P.build_trace(name, seed)
    config = SimConfig(preset=P.PRESET, num_gpu_blocks=blocks, policy="adaptive")
    pol = _Crossed(cost=config.cost, experts=(ranking, admission), shadow_cache=False,
                   realized=True, epoch_pools=ENDLESS)
    pol.admitted_by = 1
    return Simulator(trace, config, policy=pol).run().recomputed_tokens


def admission_report(name: str, seed: int, frac: float, pair: list[str],
                     smooth: bool) -> list[str]:
    """`--admission`: each ranking of the pair under each one's admission (mean over the
    pool sizes); the diagonal is each policy as it runs alone."""
    peak, longest = P._peak(name, seed)
    own = P._blocks(peak, longest, frac)
    sizes = pool_sizes(own, longest) if smooth else [own]
    lines = []
    for ranking in pair:
        cells = []
        for admission in pair:
            if admission == ranking:
                x = sum(solo(name, seed, b, ranking) for b in sizes)
            else:
                x = sum(crossed(name, seed, b, ranking, admission) for b in sizes)
            cells.append(f"{x / len(sizes) / 1e6:.4f}")
        lines.append(f"| {name} | {seed} | {frac:.0%} | {sizes[0]}-{sizes[-1]} | {ranking} | "
                     + " | ".join(cells) + " |")
    return lines


def solo(name: str, seed: int, blocks: int, policy: str) -> int:
    trace = P.build_trace(name, seed)
    config = SimConfig(preset=P.PRESET, num_gpu_blocks=blocks, policy=policy)
    return Simulator(trace, config).run().recomputed_tokens


CLASSES = ("demoted", "demoted, tool out", "demoted, tool back", "queued", "paused", "plain",
           "dead")
# `--split-demoted` (session 32): demoted live blocks classed by whether their session's tool
# had returned at the search (the trace's release time passed: `TraceOracle.is_waiting`)
SPLIT_DEMOTED = False


def classes(tot: dict) -> str:
    """Leader-only / shadow-only victims by class, the classes either named."""
    return ", ".join(f"{c} {int(tot.get('mine:' + c, 0))}/{int(tot.get('theirs:' + c, 0))}"
                     f" ({int(tot.get('earned:' + c, 0))} read while kept)"
                     for c in CLASSES if tot.get("mine:" + c) or tot.get("theirs:" + c))


def report(name: str, seed: int, frac: float, pair: list[str], smooth: bool) -> list[str]:
    peak, longest = P._peak(name, seed)
    own = P._blocks(peak, longest, frac)
    sizes = pool_sizes(own, longest) if smooth else [own]
    lines = []
    for leader, shadow in (pair, pair[::-1]):
        tot: dict = defaultdict(float)
        gap: list[float] = []
        solo_tokens = 0
        for blocks in sizes:
            r = decisions(name, seed, blocks, leader, shadow)
            gap += r.pop("gap")
            for k, x in r.items():
                tot[k] += x
            solo_tokens += solo(name, seed, blocks, leader)
        k = len(sizes)
        share = {c: tot[f"sooner_{c}"] / tot[f"pairs_{c}"] if tot[f"pairs_{c}"] else math.nan
                 for c in ("step", "release")}
        lines.append(
            f"| {name} | {seed} | {frac:.0%} | {sizes[0]}-{sizes[-1]} | {leader} | {shadow} | "
            f"{tot['recomputed'] / k / 1e6:.4f} | {solo_tokens / k / 1e6:.4f} | "
            f"{int(tot['searches'])} | {int(tot['differ'])} ({int(tot['only'])} blocks) | "
            f"{int(tot['worse_step'])} / {int(tot['better_step'])} | {share['step']:.2f} | "
            f"{int(tot['worse_release'])} / {int(tot['better_release'])} | "
            f"{share['release']:.2f} | {_median(gap):+.1f} | "
            f"{int(tot['live_victims'])} | {int(tot['demotions'])} | "
            f"{tot['held'] / max(tot['searches'], 1):.1f} | {int(tot['lost'])} | "
            f"{int(tot['kept'])} / {int(tot['earned'])} | {classes(tot)} |")
    return lines


HEADER = ("| trace | seed | capacity | pool sizes | leader | shadow | recomputed (M, mean) | "
          "solo (M, mean) | searches | differing (leader-only blocks) | leader worse / better "
          "(step) | sooner (step) | leader worse / better (release) | sooner (release) | "
          "median gap (step, s) | live victims | demotions | sessions holding cache | "
          "leader-only live victims read again | shadow-only live blocks kept / read while "
          "kept | "
          "leader-only / shadow-only by class |\n"
          "|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
          "---:|---:|---:|---|")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_case_args(p, "swe+bfcl", 402)
    p.add_argument("--pair", default="graph,ttl",
                   help="leader,shadow (each also leads; names or specs, graph[demoted_size=1])")
    p.add_argument("--smooth", action="store_true", help="sum over the five pool sizes")
    p.add_argument("--admission", action="store_true",
                   help="each ranking under each policy's admission graph instead")
    p.add_argument("--split-demoted", action="store_true",
                   help="class demoted victims by whether their tool had returned")
    args = p.parse_args(argv)
    global SPLIT_DEMOTED
    SPLIT_DEMOTED = args.split_demoted
    if args.seed not in P.TUNE_SEEDS:
        p.error(f"seed {args.seed} is not a fit seed {P.TUNE_SEEDS}")
    pair = P.split_specs(args.pair)
    if len(pair) != 2 or pair[0] == pair[1]:
        p.error(f"--pair must name two different policies, got {args.pair!r}")
    from policies_check import register  # a spec (`graph[demoted_size=1]`) as a name
    try:
        pair = [register(x) for x in pair]
    except (ValueError, TypeError) as e:  # an unknown name; a bad or unknown constant
        p.error(f"--pair: {e}")
    if args.admission:
        print("| trace | seed | capacity | pool sizes | ranking | "
              + " | ".join(f"admitted with {x}'s graph (M, mean)" for x in pair) + " |\n"
              "|---|---:|---:|---|---|" + "---:|" * len(pair))
        for line in admission_report(args.trace, args.seed, args.fraction, pair, args.smooth):
            print(line, flush=True)
        return 0
    print(HEADER)
    for line in report(args.trace, args.seed, args.fraction, pair, args.smooth):
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
