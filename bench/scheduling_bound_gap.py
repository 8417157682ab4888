"""The bound's schedule beside `workflow`'s and fcfs+lru's at one grid point: where each
session's TCT goes beyond the bound's, and which of the scheduler's decisions cost it (a
diagnosis, any seed; it changes nothing it measures: the simulator's and the scheduler's
calls are only observed).

    python bench/scheduling_bound_gap.py bfcl 1 0.25 101,102,103,104,105,106
    python bench/scheduling_bound_gap.py bfcl 1 0.25 101,106 --params '{"growth_charge": "once"}'
    python bench/scheduling_bound_gap.py bfcl 1 0.25 101 --write /tmp/gap.md

The schedule behind bench/scheduling_bound.py's bound at the capacities where it reads its
solo part (bfcl 1x 25% on seeds 101-106 among them) is every session run alone: admitted as
it arrives, never made to wait, each step with the fewest prefill tokens its context allows
(`session_needs`: what it computed before stays cached), its tools' pauses as in the trace.
So each session's TCT beyond its solo time ("gap") is what the simulated schedule adds, split
per step into:

- **wait first**: a session's first step queued until it first runs (its first admission;
  fcfs: its queueing);
- **wait again**: a step of a demoted session queued until it runs (its admission again);
- **wait admitted**: a step of an admitted session queued until it runs (the resumed queue,
  the batch budget, the gate's decode reserve; fcfs: every later step's queueing);
- **run**: the rest, from a step's first start to its finish beyond its solo time: batches
  shared with other steps, preemptions and their retries, and recomputation (its tokens and
  their time alone, priced by the cost model's prefill of that many tokens after its cached
  part, are listed by the step that recomputed them: a session's first step, an admitted
  session's step, a demoted session's step, a preempted step's retry).

Where the bound's schedule and `workflow`'s differ most is the wait again; so per demotion,
the decision that caused it: whether, when it was made, the admitted sessions' contexts
(what they hold, not the growth charged for them) fitted the GPU ("on prediction": only the
charged growth took the working sets over) or not ("on contexts"); and what it cost the
demoted session: its wait again and the seconds of the tokens it recomputed on its return.
Per demoted step waiting, its wait is split by the GPU at each moment: whether its whole
prompt fitted beside the running steps' contexts (what the bound's schedule would have run
at once, evicting paused contexts) or not.
"""

from __future__ import annotations

import sys
from collections import Counter, defaultdict
from typing import Any

from scheduling import PRESET, capacity, trace
from scheduling_bound import session_needs
from scheduling_overflow import point_params, point_parser, point_seeds

from kvsaga.scheduler import DEFAULT_SCHEDULER
from kvsaga.sim.cost import attention_pairs
from kvsaga.sim.metrics import tenant_key
from kvsaga.sim.simulator import SimConfig, Simulator

WAITS = ("first", "again", "admitted")
KINDS = ("first", "admitted", "demoted", "retry")


def _prefill_terms(prefill) -> tuple[int, int, int]:
    """A batch step's prefill figures as `Simulator._execute` prices them."""
    pairs = ctx = 0
    for req, n in prefill:
        before = req.num_computed - n
        pairs += attention_pairs(n, before)
        ctx += before
    return sum(n for _, n in prefill), pairs, ctx


def _kind(sched: Any, req: Any) -> str:
    """The recomputation class of a step starting now (module docstring)."""
    if req.retried:
        return "retry"
    if not req.resumed:
        return "first"
    if req.session_id in getattr(sched, "sessions", {req.session_id: None}):
        return "admitted"
    return "demoted"


def observe(family: str, load: float, frac: float, seed: int, policy: str,
            scheduler: str, params: dict | None, *, sessions: list | None = None,
            num_gpu_blocks: int | None = None, reference: bool = False) -> dict[str, Any]:
    """One observed simulation of the point (module docstring): per session its TCT, solo
    time, waits by class and recomputation by class; per demotion its class and cost.

    `sessions` and `num_gpu_blocks` replace the point's trace and capacity (a two-tenant
    mix: bench/scheduling_afs_split.py `--time`). `reference`: every batch step through
    `schedule` (`Simulator(reference=True)`, the same results), so that each session's
    "stall batch" is read too: the seconds its decode steps took beyond the same step with
    its decode alone (decoding beside other sessions' decodes), and "prefill beside": the
    seconds its prefill chunks' steps took beyond its chunk alone (other steps' prefill and
    decodes in the same batch step); without it, decode runs move the clock unobserved and
    both keys are absent.

    Each session's decodes stalled by prefill (its "stall recomputed" plus "stall
    first-time") are also split by the tenant whose prefill tokens the batch step carried,
    pro rata the tokens ("stall by tenant": tenant -> seconds; `tenant_key`'s keys), with
    the count of its decode steps beside prefill ("steps beside prefill"): whose prefill a
    tenant's decodes wait behind (bench/scheduling_afs_split.py `--by-tenant`)."""
    if sessions is None:
        sessions = trace(family, seed, load)
    if num_gpu_blocks is None:
        num_gpu_blocks = capacity(sessions, frac)
    cfg = SimConfig(preset=PRESET, num_gpu_blocks=num_gpu_blocks, policy=policy,
                    scheduler=scheduler, scheduler_params=params)
    sim = Simulator(sessions, cfg, reference=reference)
    sched, m, cost = sim.scheduler, sim.manager, cfg.cost
    bs, gpu = m.block_size, m.num_gpu_blocks
    waits: dict[str, Counter] = defaultdict(Counter)
    recomputed: dict[str, Counter] = defaultdict(Counter)  # tokens by kind
    recompute_s: dict[str, Counter] = defaultdict(Counter)
    queued: dict[int, tuple[Any, str, float]] = {}  # id(req) -> (req, wait class, since)
    kind: dict[int, str] = {}
    demotions: list[dict] = []
    open_demotion: dict[str, dict] = {}
    room = Counter()  # demoted steps' waiting seconds: prompt fits beside running or not
    gpu_time = Counter()  # time integrals of shares of the GPU's blocks
    add, begin, slots, advance = sched.add, sim.begin, sim._slots, sim._advance
    finish, execute = sched.finish, sim._execute
    stalls: dict[str, Counter] = defaultdict(Counter)  # decode seconds stalled by prefill
    stall_by: dict[str, Counter] = defaultdict(Counter)  # ... by the prefilling tenant
    first_by_state = Counter()  # ... by first-time prefill, by the queue at the step
    demote = getattr(sched, "_demote_session", None)

    def on_add(req, now):
        if not req.retried:
            sid = req.session_id
            adm = getattr(sched, "sessions", None)
            if req.k == 0:
                cls = "first"
            elif adm is None or sid in adm:
                cls = "admitted"
            else:
                cls = "again"
            queued[id(req)] = (req, cls, now)
        out = add(req, now)
        tick(now)
        return out

    def on_begin(req, now):
        q = queued.pop(id(req), None)
        if q is not None:
            waits[req.session_id][q[1]] += now - q[2]
            d = open_demotion.get(req.session_id)
            if q[1] == "again" and d is not None and "wait" not in d:
                d["wait"] = now - q[2]
        kind[id(req)] = _kind(sched, req)
        out = begin(req, now)
        tick(now)
        return out

    def on_slots(req, n):
        before = sim.recomputed_so_far
        start = req.num_computed
        slots(req, n)
        r = sim.recomputed_so_far - before
        if req.prefilling:
            chunks[req.session_id] += 1
            chunk["all"] += n
            chunk["recomputed"] += r
            chunk["new " + kind.get(id(req), "first")] += n - r
        if r and req.prefilling:
            k = kind.get(id(req), "first")
            sid = req.session_id
            recomputed[sid][k] += r
            s = max(cost.prefill_time(r, start) - cost.step_overhead_s, 0.0)
            recompute_s[sid][k] += s
            d = open_demotion.get(sid)
            if k == "demoted" and d is not None:
                d["recompute_s"] = d.get("recompute_s", 0.0) + s

    state: dict[str, Any] = {"t": 0.0, "shares": None, "again": ()}
    chunks: Counter = Counter()  # prefill chunks per session

    def tick(now: float) -> None:
        """Credit the time since the last observed call to the state then, and read the
        state now (decode runs move the clock without `_advance`: any call observes)."""
        dt = now - state["t"]
        if dt > 0 and state["shares"] is not None:
            for k, v in state["shares"].items():
                gpu_time[k] += dt * v
            gpu_time["seconds"] += dt
            for fits in state["again"]:
                room["fits" if fits else "short"] += dt
        state["t"] = now
        running = sum(-(-r.context_len // bs) for r in sched.running)
        shares = {"running": running / gpu}
        adm = getattr(sched, "sessions", None)
        if adm is not None:
            paused = sum(sched._own_blocks(i) for i in adm.values() if not i.active)
            shares["paused admitted"] = paused / gpu
            shares["charged"] = sched._committed / gpu
        state["shares"] = shares
        state["again"] = tuple(running + -(-req.num_tokens // bs) <= gpu
                               for req, cls, _ in queued.values() if cls == "again")

    def on_advance(t):
        tick(sim.now)
        out = advance(t)
        tick(t)
        return out

    def on_finish(req, now, **k):
        out = finish(req, now, **k)
        tick(now)
        return out

    chunk = Counter()  # prefill tokens since the last batch step: all, recomputed

    def on_execute(prefill, decode):
        if reference and decode:
            together = cost._step_time(0, 0, 0, len(decode),
                                       sum(r.fed_position + 1 for r in decode))
            for r in decode:
                stalls[r.session_id]["batch"] += together - cost._step_time(
                    0, 0, 0, 1, r.fed_position + 1)
        if reference and prefill:
            whole = cost._step_time(*_prefill_terms(prefill), len(decode),
                                    sum(r.fed_position + 1 for r in decode))
            for r, n in prefill:
                stalls[r.session_id]["prefill beside"] += whole - cost._step_time(
                    *_prefill_terms([(r, n)]), 0, 0)
        if prefill and decode:
            whole = cost._step_time(*_prefill_terms(prefill), len(decode),
                                    sum(r.fed_position + 1 for r in decode))
            alone = cost._step_time(0, 0, 0, len(decode),
                                    sum(r.fed_position + 1 for r in decode))
            share = chunk["recomputed"] / max(chunk["all"], 1)
            state = _queue_state(sched)
            by_tenant = stall_by_tenant(prefill, whole - alone)
            for r in decode:
                stalls[r.session_id]["steps beside prefill"] += 1
                stall_by[r.session_id].update(by_tenant)
                stalls[r.session_id]["recomputed"] += (whole - alone) * share
                stalls[r.session_id]["first-time"] += (whole - alone) * (1 - share)
                for k in KINDS:  # the first-time part by the prefilling step's class
                    part = (whole - alone) * chunk["new " + k] / max(chunk["all"], 1)
                    stalls[r.session_id]["first-time " + k] += part
                    first_by_state[state] += part
        chunk.clear()
        return execute(prefill, decode)

    def on_demote(sid, now):
        adm = sched.sessions
        shared = max((-(-i.shared // bs) for i in adm.values()), default=0)
        held = shared + sum(sched._own_blocks(i) for i in adm.values())
        d = {"at": now, "sid": sid,
             "why": "on prediction" if held <= gpu else "on contexts"}
        demotions.append(d)
        open_demotion[sid] = d
        return demote(sid, now)

    sched.add, sim.begin, sim._slots, sim._advance = on_add, on_begin, on_slots, on_advance
    sched.finish, sim._execute = on_finish, on_execute
    if demote is not None:
        sched._demote_session = on_demote
    row = sim.run().to_dict()
    budget = cfg.max_num_batched_tokens
    per = {}
    for s in sessions:
        solo = session_needs(s, cost, budget).solo_s
        tct = sim._finished_at[s.id] - s.arrival_s
        w = waits[s.id]
        per[s.id] = {"tct": tct, "solo": solo, **{f"wait {c}": w[c] for c in WAITS},
                     "run": tct - solo - sum(w.values()),
                     "stall recomputed": stalls[s.id]["recomputed"],
                     "stall first-time": stalls[s.id]["first-time"],
                     **{f"rec {k}": recomputed[s.id][k] for k in KINDS},
                     **{f"rec_s {k}": recompute_s[s.id][k] for k in KINDS}}
        per[s.id].update({f"stall first-time {k}": stalls[s.id]["first-time " + k]
                          for k in KINDS})
        per[s.id]["prefill chunks"] = chunks[s.id]
        per[s.id]["stall by tenant"] = dict(stall_by[s.id])
        per[s.id]["steps beside prefill"] = stalls[s.id]["steps beside prefill"]
        if reference:
            per[s.id]["stall batch"] = stalls[s.id]["batch"]
            per[s.id]["prefill beside"] = stalls[s.id]["prefill beside"]
    return {"row": row, "sessions": per, "demotions": demotions, "room": room,
            "gpu": gpu_time, "first_by_state": first_by_state}


def stall_by_tenant(prefill: list[tuple[Any, int]], stall: float) -> Counter:
    """One batch step's prefill stall on each of its decodes (`stall`: the step's time less
    its decodes' alone) split by the tenant whose prefill tokens the step carried (`prefill`:
    (request, tokens) pairs; `tenant_key`'s keys), pro rata the tokens: the prefill time a
    step adds grows with its tokens, so a tenant prefilling three times the tokens is charged
    three times the stall (`--by-tenant`)."""
    tokens = Counter()
    for p, n in prefill:
        tokens[tenant_key(p.tenant)] += n
    carried = tokens.total()
    return Counter({t: stall * n / carried for t, n in tokens.items()})


STATES = ("two or more demoted waiting", "one demoted waiting", "new sessions waiting",
          "nothing waiting")


def _queue_state(sched: Any) -> str:
    """The admission queue at a batch step, for `--stall-split`: two or more demoted
    sessions' steps waiting (the default cap's gate open), one, none but new sessions'
    steps, or nothing waiting (fcfs: its waiting requests, all "new")."""
    demoted = getattr(sched, "_demoted_waiting", None)
    if demoted is not None and demoted(2):
        return STATES[0]
    if demoted is not None and demoted(1):
        return STATES[1]
    return STATES[2] if sched.num_waiting else STATES[3]


def stall_line(seed: int, out: dict) -> str:
    """`--stall-split`: the decodes' stall by first-time prefill, seconds a session, by the
    prefilling step's class and by the queue at the batch step."""
    per, n = out["sessions"], max(len(out["sessions"]), 1)
    by_kind = ", ".join(f"{k} {_mean(per, 'stall first-time ' + k):.2f}" for k in KINDS)
    st = out["first_by_state"]
    by_state = ", ".join(f"{k} {st[k] / n:.2f}" for k in STATES)
    total = _mean(per, "stall first-time")
    return (f"seed {seed}: decodes stalled by first-time prefill {total:.2f} s a session; "
            f"by the prefilling step (first step / admitted / demoted / retry): {by_kind}; "
            f"by the queue at the batch step: {by_state}")


def _mean(per: dict, key: str) -> float:
    return sum(p[key] for p in per.values()) / max(len(per), 1)


def seed_rows(label: str, seed: int, out: dict) -> list[str]:
    """The table rows of one run (module docstring's columns)."""
    per = out["sessions"]
    rec = sum(p[f"rec {k}"] for p in per.values() for k in KINDS)
    by = " / ".join(f"{sum(p[f'rec {k}'] for p in per.values()) / 1000:.1f}k"
                    for k in KINDS)
    rec_s = sum(p[f"rec_s {k}"] for p in per.values() for k in KINDS) / max(len(per), 1)
    return [f"| {seed} | {label} | {_mean(per, 'tct'):.1f} | {_mean(per, 'solo'):.1f} | "
            f"{_mean(per, 'tct') - _mean(per, 'solo'):.1f} | "
            + " | ".join(f"{_mean(per, 'wait ' + c):.1f}" for c in WAITS)
            + f" | {_mean(per, 'run'):.1f} | {_mean(per, 'stall first-time'):.1f} / "
            f"{_mean(per, 'stall recomputed'):.1f} | {rec / 1000:.1f}k ({by}) | {rec_s:.2f} |"]


def demotion_line(seed: int, out: dict) -> str:
    """Per seed: the demotions by class, with their mean cost to the demoted session."""
    parts = []
    for why in ("on prediction", "on contexts"):
        ds = [d for d in out["demotions"] if d["why"] == why]
        if not ds:
            parts.append(f"{why} 0")
            continue
        # A demotion whose session's next step was already queued while admitted gets no
        # "wait again" (that wait is the step's "wait admitted"): left out of the mean.
        waited = [d["wait"] for d in ds if "wait" in d]
        wait = sum(waited)
        mean = f"{wait / len(waited):.2f} s" if waited else "n/a"
        rs = sum(d.get("recompute_s", 0.0) for d in ds)
        parts.append(f"{why} {len(ds)} (wait again {mean}, recompute "
                     f"{rs / len(ds):.3f} s a demotion; {wait:.0f} s in all"
                     + (f"; {len(ds) - len(waited)} whose next step was queued while "
                        f"admitted, left out of the wait's mean" if len(waited) < len(ds)
                        else "") + ")")
    room, g = out["room"], out["gpu"]
    total = room["fits"] + room["short"]
    fits = f"{room['fits'] / total:.0%}" if total else "n/a (none waited)"
    shares = (", ".join(f"{k} {g[k] / g['seconds']:.0%}" for k in
                        ("running", "paused admitted", "charged"))
              if g.get("seconds") else "n/a (no time observed)")
    return (f"seed {seed}: {len(out['demotions'])} demotions: " + "; ".join(parts)
            + f". Demoted steps' waiting: {total:.0f} s, of it with the prompt fitting beside "
            f"the running steps' contexts {fits}. Time mean share of the GPU's blocks: "
            + shares)

HEADER = ("| seed | schedule | mean TCT s | bound's (solo) s | gap s | wait first s | "
          "wait again s | wait admitted s | run s | of it, decodes stalled by prefill s "
          "(first-time / recomputed) | recomputed tokens (first / admitted / "
          "demoted / retry) | recompute s a session |")


def main(argv: list[str] | None = None) -> int:
    ap = point_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=None,
                    help="workflow scheduler parameters, a JSON object (default: its "
                         "defaults)")
    ap.add_argument("--no-fcfs", action="store_true",
                    help="leave out the fcfs+lru rows (default: one beside each workflow row)")
    ap.add_argument("--stall-split", action="store_true",
                    help="also print, per seed, the decodes' stall by first-time prefill "
                         "split by the prefilling step's class and by the admission queue")
    ap.add_argument("--write", default=None, metavar="PATH",
                    help="also write the table and the demotion lines to PATH (markdown)")
    a = ap.parse_args(argv)
    seeds = point_seeds(ap, a.seeds)
    params = point_params(ap, a.params)
    lines = [HEADER, "|" + "---|" * 12]
    notes = []
    for seed in seeds:
        w = observe(a.family, a.load, a.capacity, seed, a.policy, DEFAULT_SCHEDULER, params)
        lines += seed_rows(f"workflow+{a.policy}", seed, w)
        if not a.no_fcfs:
            f = observe(a.family, a.load, a.capacity, seed, "lru", "fcfs", None)
            lines += seed_rows("fcfs+lru", seed, f)
        notes.append(demotion_line(seed, w))
        if a.stall_split:
            notes.append(stall_line(seed, w))
        print(lines[-1 - (not a.no_fcfs)], flush=True)
    text = "\n".join(lines + [""] + notes)
    print()
    print(text)
    if a.write:
        with open(a.write, "w") as fh:
            fh.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
