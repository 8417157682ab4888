"""What the `workflow` shrink demotes for when a queued step's growth is charged again (a
diagnosis, any seed; it changes nothing it measures: the scheduler's calls are observed).

    python bench/scheduling_charge_split.py bfcl 1 0.25 101,102,103,104,105,106 \
        [--params '{"growth_charge": "remaining"}']

`bench/scheduling_overflow.py` attributes each demotion to the event that last took the
admitted working sets (`_committed`) over the tiers; at bfcl 1x 25% 33-64% of them follow a
paused session's next step queueing (its predicted growth charged again, `paused_growth`
False). Here, at each such crossing, the admitted sessions' charges are recounted three
ways, and each demotion attributed to the crossing is classed by the first that stays over
the tiers:

- "charged": as the gate charged them (a running step: its prompt plus the growth from one
  finish to the next, `growth_charge` "step"; a queued step: its last finish's context plus
  that growth; a paused session: its context).
- "once": the same, but a running step whose prompt already holds its tool's observation
  is charged max(prompt, last finish's context + the growth predicted from it), i.e. the
  predicted growth once: the step is charged the context it was predicted to reach while
  it queued, not that growth again on top of the observation that already arrived.
- "realized": every active step (queued or running) charged the context it actually
  reached at its finish (hindsight), paused sessions their contexts.

So a demotion is "double count" where the "once" sets fit the tiers, "over-prediction"
where they do not but the realized ones do, and "real need" where the realized contexts
themselves exceed the tiers. Per seed, also the sums over every finished step of realized /
predicted growth (the gate sums working sets, so the ratio of sums, not the median, is the
bias that matters): from the last finish (what a queued step is charged for) and from the
prompt (what a running step still adds).
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any

from scheduling_overflow import _sim, point_parser, point_seeds

CLASSES = ("double count", "over-prediction", "real need")


def _blocks(tokens: float, bs: int) -> int:
    return -(-max(int(tokens), 0) // bs)


def observe(family: str, load: float, frac: float, seed: int, policy: str,
            params: dict | None = None) -> dict[str, Any]:
    """One observed simulation (module docstring)."""
    sim = _sim(family, load, frac, seed, policy, params)
    sched = sim.scheduler
    bs = sim.manager.block_size
    limit = sched.overcommit * sched.capacity
    state: dict[str, Any] = {"event": "start", "over_by": None}
    snaps: list[dict] = []  # crossings by a queued step's charge
    why: Counter = Counter()  # demotions by the event that took the sets over the tiers
    realized: dict[tuple[str, int], int] = {}  # (session, its finishes before) -> context
    nfin: Counter = Counter()  # finishes per session so far (across its admissions)
    sums = Counter()
    set_blocks, enqueue, admitted, finish = (sched._set_blocks, sched._enqueue,
                                             sched._admitted, sched.finish)
    demote = sched._demote_session

    def snapshot() -> dict:
        queued = {r.session_id: r.num_tokens for r in sched._resumed}
        rows = []
        for sid, i in sched.sessions.items():
            if not i.active:
                kind = "paused"
            elif i.on_prompt:
                kind = "running"
            else:
                kind = "queued"
            g = sched._growth_tokens(i.workflow, i.steps, i.tool)
            rows.append({"sid": sid, "kind": kind, "blocks": i.blocks, "context": i.context,
                         "shared": i.shared, "last": i.last_context, "growth": g,
                         "fin": nfin[sid], "prompt": queued.get(sid)})
        return {"committed": sched._committed, "rows": rows, "demotions": 0}

    def on_set_blocks(info) -> None:
        was = sched._committed
        set_blocks(info)
        if was <= limit < sched._committed:
            state["over_by"] = state["event"]
            if state["event"] == "queued":
                snaps.append(snapshot())
                state["snap"] = snaps[-1]
            else:
                state["snap"] = None

    def on_enqueue(req, now, *, retry):
        before, state["event"] = state["event"], "queued"
        try:
            return enqueue(req, now, retry=retry)
        finally:
            state["event"] = before

    def on_admitted(req, now, **k):
        before, state["event"] = state["event"], "admitted"
        try:
            return admitted(req, now, **k)
        finally:
            state["event"] = before

    def on_finish(req, now, *, ended=False):
        info = sched.sessions.get(req.session_id)
        if info is not None:
            realized[req.session_id, nfin[req.session_id]] = req.num_tokens
            pred = sched._growth_tokens(info.workflow, info.steps, info.tool)
            if not ended and pred > 0:
                if info.last_context is not None:
                    sums["queued realized"] += req.num_tokens - info.last_context
                    sums["queued predicted"] += pred
                sums["running realized"] += req.num_tokens - info.context
                sums["running predicted"] += pred
        nfin[req.session_id] += 1
        before, state["event"] = state["event"], "finish"
        try:
            return finish(req, now, ended=ended)
        finally:
            state["event"] = before

    def on_demote(sid, now):
        why[state["over_by"]] += 1
        if state["over_by"] == "queued" and state.get("snap") is not None:
            state["snap"]["demotions"] += 1
        return demote(sid, now)

    sched._set_blocks, sched._enqueue, sched._admitted = on_set_blocks, on_enqueue, on_admitted
    sched.finish, sched._demote_session = on_finish, on_demote
    row = sim.run().to_dict()

    by_class: Counter = Counter()
    parts: Counter = Counter()
    for s in snaps:
        once = real = 0
        for r in s["rows"]:
            own_ctx = _blocks(r["context"] - r["shared"], bs)
            if r["kind"] == "paused":
                once += r["blocks"]
                real += own_ctx
                continue
            if r["kind"] == "running" and r["last"] is not None:
                once += min(_blocks(max(r["context"], r["last"] + r["growth"]) - r["shared"],
                                    bs), sched.capacity)
            else:
                once += r["blocks"]
            fin = realized.get((r["sid"], r["fin"]))
            real += r["blocks"] if fin is None else _blocks(fin - r["shared"], bs)
        c = ("double count" if once <= limit else
             "over-prediction" if real <= limit else "real need")
        by_class[c] += s["demotions"]
        parts["crossings " + c] += 1
        parts["excess charged"] += s["committed"] - limit
        parts["excess once"] += max(once - limit, 0)
        parts["excess realized"] += max(real - limit, 0)
    return {"row": row, "why": why, "classes": by_class, "parts": parts, "sums": sums,
            "crossings": len(snaps)}


def main(argv: list[str] | None = None) -> int:
    ap = point_parser(__doc__.split("\n\n")[0])
    ap.add_argument("--params", type=json.loads, default=None,
                    help="workflow scheduler parameters, a JSON object")
    a = ap.parse_args(argv)
    for seed in point_seeds(ap, a.seeds):
        d = observe(a.family, a.load, a.capacity, seed, a.policy, a.params)
        n, sums, p = sum(d["why"].values()), d["sums"], d["parts"]
        k = max(d["crossings"], 1)
        print(f"seed {seed}: mean TCT {d['row']['tct_mean_s']:.1f} s, {n} demotions, after a "
              f"queued step's charge {d['why']['queued']} ({d['crossings']} crossings): "
              + ", ".join(f"{c} {d['classes'][c]}" for c in CLASSES)
              + f"; mean excess at a crossing, blocks: charged {p['excess charged'] / k:.1f}, "
              f"once {p['excess once'] / k:.1f}, realized {p['excess realized'] / k:.1f}; "
              f"realized / predicted growth, sums over finishes: from the last finish "
              f"{sums['queued realized'] / max(sums['queued predicted'], 1):.2f}, from the "
              f"prompt {sums['running realized'] / max(sums['running predicted'], 1):.2f}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
