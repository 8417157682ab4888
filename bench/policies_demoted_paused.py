"""Does the room a demoted session will lack have rank skill while its tool still runs? (fit
seeds only)

bench/RESULTS.md "Eviction policies: the room the scheduler lacks for a demoted session"
found that the room deficit the scheduler tells for a demoted session's *queued* step
ranks when that step starts (Spearman +0.50..+0.76), but only 12-33% of the demoted blocks
graph evicts are those sessions'; the rest belong to demoted sessions still paused on their
tool, which have no queued step and nothing told. This asks whether a forecast of the room
such a session will lack when its tool returns has the skill, on one simulation of graph (or
a graph spec) per case, which the probe leaves unchanged.

Rows: every demoted session paused on its tool (not running, no step in a tenant's queue)
holding cached blocks, noted at the first victim search after its demotion where it is so;
the realized time is from then to its next step's start ("total"), split at its step's
first queue tell (`session_admission_rank`) into the tool's part and the queue's part. Also
a within-search view: at every victim search with two or more such sessions, each pair's
order by a signal against the order in which their steps start (Goodman-Kruskal gamma over
all such pairs, pooled; 0: no skill), since a victim search ranks sessions at one instant,
where every "now" deficit below differs from the others only by the session's own part.

The variants, fixed before any was run (each in blocks unless said; P = the session's
context now plus the scheduler's mean growth of its workflow after its last tool, the
prompt its next step is expected to bring; its lookup is of its context now):

- need: the free-or-evictable GPU blocks its step would take were it queued now
  (`StepLookup.blocks_to_admit` of P plus `reserve_decode_tokens`);
- pool now: need + the running steps' reserve - the free-or-evictable blocks
  (`BlockRoom._fits`' check, as `AdmissionOrder.room_deficit` computes it);
- gate now: the admitted working sets + its working set on P less its GPU hits (with the
  reserves) - overcommit x the tiers (`WorkingSetGate._session_fits`, "uncached");
- told now: the larger of pool now and gate now (gate skipped with nobody admitted or
  under "room"), what `room_deficit` would tell were its step queued now;
- gate at return: gate now less the own blocks of the admitted sessions predicted
  (`LeaveForecast._leave_at`) to leave before graph's forecast of its tool's return;
- told at return: the larger of pool now and gate at return;
- room wait (s): the later of graph's forecast of its tool's return and the scheduler's
  predicted wait for gate now's blocks to leave (`LeaveForecast._leave_wait_s`; 0 if <= 0).

Beside them, on the same rows: graph's forecast (`_graph_time`, unhedged), graph's
forecast of the tool's return alone (`predict_session(admission=False)`), the time demoted
so far and the context's size (blocks).

    python bench/policies_demoted_paused.py                # the six fit cases
    python bench/policies_demoted_paused.py --trace swe --seed 202 --fraction 0.6
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policies_case import check_case  # noqa: E402
from policies_demoted import (  # noqa: E402
    case_parser,
    graph_class,
    probed_simulator,
    spearman,
)

from kvsaga.policy.graph import GraphPolicy  # noqa: E402

# bench/policies_demoted.py's six cases (RESULTS "the room the scheduler lacks ...").
CASES = [("swe", 202, 0.6), ("swe", 201, 0.3), ("swe", 302, 0.3), ("swe", 103, 0.3),
         ("swe", 1, 0.6), ("swe+bfcl", 402, 0.6)]
SIGNALS = ("graph", "tool", "demoted", "context", "need", "pool now", "gate now",
           "told now", "gate at return", "told at return", "room wait")


def signals(pol: GraphPolicy, sched, sid: str, now: float) -> tuple[float, ...]:
    """The variants and the baselines (`SIGNALS`' order) for paused demoted `sid` at `now`."""
    m = sched.manager
    bs = m.block_size
    s = m.sessions[sid]
    v = pol.views[sid]
    wf = v.workflow
    tool_s = pol.predict_session(sid, now, admission=False).expected_s
    graph_s = pol._graph_time(sid, now, True, False)[1]
    ctx = len(s.token_ids)
    growth = sched._growth.mean(wf, v.tool if sched.tool_growth else None)
    prompt = ctx + math.ceil(growth)
    lk = m.lookup(sid, s.token_ids)
    need = lk.gpu_cached_blocks + max(
        0, -(-(prompt + sched.reserve_decode_tokens) // bs) - lk.gpu_hit_blocks)
    running = sched._running_reserve() if sched.running else 0
    pool = need + running - m.pool.num_available
    # The scheduler's own rule, as `paused_room_deficit` asks it (its step counted as
    # queued), so under "room_queue" these figures are the ones the policy is told.
    if not sched.sessions or sched._readmits_on_room(1):
        gate = gate_ret = -math.inf
        wait = tool_s
    else:
        req = SimpleNamespace(session_id=sid, workflow=wf)
        own = prompt - lk.gpu_hit_blocks * bs
        var = sched._growth_var(wf, None, True) if sched.growth_reserve else 0.0
        gate = (sched._committed + sched._working_set(wf, own, 0)
                + sched._reserves(req, var) - sched.overcommit * sched.capacity)
        back = now + tool_s
        gone = sum(sched._own_blocks(i) for x, i in sched.sessions.items()
                   if sched._leave_at(x, i, now) <= back)
        gate_ret = gate - gone
        wait = max(tool_s, sched._leave_wait_s(gate, now)) if gate > 0 else tool_s
    return (graph_s, tool_s, now - pol._deferred[sid], float(-(-ctx // bs)), float(need),
            float(pool), gate, max(pool, gate), gate_ret, max(pool, gate_ret), wait)


def probe(spec: str, cost) -> GraphPolicy:
    """`spec` (a graph spec) built with the noting hooks around its own."""
    base, params = graph_class(spec)

    class Noting(base):
        def __init__(self, **kw) -> None:
            super().__init__(**kw)
            self.sched = None  # the simulator's scheduler, set once it is built
            self.noted: dict[str, tuple[float, tuple[float, ...]]] = {}  # when, signals
            self.queued_at: dict[str, float] = {}  # noted sid -> its step's first queue tell
            self.rows: list[tuple[tuple[float, ...], float, float]] = []  # sig, total, queue
            self.searches: list[list[tuple[str, tuple[float, ...]]]] = []
            self.open: dict[str, list[tuple[int, float]]] = {}  # sid -> (search, when)
            self.done: dict[tuple[int, str], float] = {}  # (search, sid) -> realized

        def _paused_demoted(self) -> list[str]:
            waiting = self.sched._deferred_waiting
            return [sid for sid in self._deferred
                    if sid not in waiting and self.groups.get(sid)
                    and not self.views[sid].running and sid in self.sched.manager.sessions]

        def choose_victims(self, num_blocks: int, now: float) -> list[int]:
            if self.sched is not None:
                sids = self._paused_demoted()
                sig = {sid: signals(self, self.sched, sid, now) for sid in sids}
                for sid in sids:
                    if sid not in self.noted:
                        self.noted[sid] = (now, sig[sid])
                if len(sids) >= 2:
                    k = len(self.searches)
                    self.searches.append([(sid, sig[sid]) for sid in sids])
                    for sid in sids:
                        self.open.setdefault(sid, []).append((k, now))
            return super().choose_victims(num_blocks, now)

        def session_admission_rank(self, session, rank, now: float) -> None:
            sid = session.session_id
            if rank is not None and sid in self.noted and sid not in self.queued_at:
                self.queued_at[sid] = now
            super().session_admission_rank(session, rank, now)

        def step_started(self, session, now: float) -> None:
            sid = session.session_id
            n = self.noted.pop(sid, None)
            if n is not None:
                q = self.queued_at.pop(sid, now)
                self.rows.append((n[1], now - n[0], now - q))
            for k, at in self.open.pop(sid, ()):
                self.done[k, sid] = now - at
            super().step_started(session, now)

        def session_ended(self, session, now: float) -> None:
            sid = session.session_id
            self.noted.pop(sid, None)
            self.queued_at.pop(sid, None)
            self.open.pop(sid, None)
            super().session_ended(session, now)

    return Noting(cost=cost, **params)


def gamma(pol) -> tuple[int, list[float]]:
    """Pairs compared within searches, and per signal (C - D) / (C + D) over them."""
    conc = [0] * len(SIGNALS)
    disc = [0] * len(SIGNALS)
    pairs = 0
    for k, entries in enumerate(pol.searches):
        got = [(pol.done[k, sid], sig) for sid, sig in entries if (k, sid) in pol.done]
        for i in range(len(got)):
            for j in range(i + 1, len(got)):
                dr = got[i][0] - got[j][0]
                if dr == 0:
                    continue
                pairs += 1
                for x in range(len(SIGNALS)):
                    ds = got[i][1][x] - got[j][1][x]
                    if ds != 0 and not math.isnan(ds):
                        if (ds > 0) == (dr > 0):
                            conc[x] += 1
                        else:
                            disc[x] += 1
    return pairs, [(c - d) / (c + d) if c + d else math.nan
                   for c, d in zip(conc, disc, strict=True)]


def case(trace_name: str, seed: int, frac: float, spec: str) -> tuple[str, str, str]:
    blocks, pol, sim = probed_simulator(trace_name, seed, frac, lambda c: probe(spec, c))
    if not hasattr(sim.scheduler, "_deferred_waiting"):
        raise ValueError("the simulator's scheduler does not demote: nothing to probe")
    pol.sched = sim.scheduler
    result = sim.run()
    rows = pol.rows
    total = [r[1] for r in rows]
    queue = [r[2] for r in rows]
    cols = [[r[0][x] for r in rows] for x in range(len(SIGNALS))]
    head = f"| {trace_name} | {seed} | {frac:.0%} | {blocks} | {spec} | " \
           f"{result.recomputed_tokens / 1e6:.3f} | {len(rows)} | "
    med = sorted(total)[len(total) // 2] if total else math.nan
    medq = sorted(queue)[len(queue) // 2] if queue else math.nan
    a = head + f"{med:.2f} | {medq:.2f} | " + " | ".join(
        f"{spearman(c, total):+.2f}" for c in cols) + " |"
    b = head + " | ".join(f"{spearman(c, queue):+.2f}" for c in cols) + " |"
    pairs, g = gamma(pol)
    c = head + f"{len(pol.searches)} | {pairs} | " + " | ".join(f"{x:+.2f}" for x in g) + " |"
    return a, b, c


HEAD = "| trace | seed | capacity | blocks | policy | recomputed (M) | paused demoted noted | "
SIG = " | ".join(SIGNALS) + " |"
RULE = "|---|---:|---:|---:|---|---:|---:|"


def main(argv: list[str] | None = None) -> int:
    p = case_parser(__doc__, "one case (with --seed, --fraction); default the six")
    args = p.parse_args(argv)
    cases = [(args.trace, args.seed, args.fraction)] if args.trace else CASES
    for _, seed, frac in cases:
        check_case(p, seed, frac)
    out = []
    for t, seed, frac in cases:
        try:
            out.append(case(t, seed, frac, args.policy))
        except ValueError as e:
            p.error(str(e))
        print(f"({t} {seed} {frac:.0%} done)", file=sys.stderr, flush=True)
    n = len(SIGNALS)
    print("Spearman against the total time (noting -> step start):\n")
    print(HEAD + "median total (s) | median queue part (s) | " + SIG)
    print(RULE + "---:|---:|" + "---:|" * n)
    print("\n".join(o[0] for o in out))
    print("\nSpearman against the queue part (first queue tell -> step start):\n")
    print(HEAD + SIG)
    print(RULE + "---:|" * n)
    print("\n".join(o[1] for o in out))
    print("\nWithin a victim search, Goodman-Kruskal gamma of each signal's order against "
          "the order the steps start in (pairs pooled over searches):\n")
    print(HEAD + "searches with >= 2 | pairs | " + SIG)
    print(RULE + "---:|---:|" + "---:|" * n)
    print("\n".join(o[2] for o in out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
