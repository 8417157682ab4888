"""kvsaga-serve's scheduler on the live agent replay's workload, on a simulated clock.

    python bench/serve_scheduler_replay.py --seeds 0,1,2,3,4 --token-scale 0.05 \\
        --time-scale 0.25 --kv-fraction 0.25 --step-s 0.025 --token-s 0.00065 [--trace]

`bench/agent_replay.py --engine vllm` replays agent sessions against live servers, and
`bench/vllm_scheduler_replay.py` replays the same sessions through vLLM's own scheduler (with
and without the kvsaga connector) on a simulated clock. This script is the third arm of that
comparison without the CPU's noise: the same sessions (`agent_replay.sample_steps`: the same
generator, token scale, shortened pauses and hints; the same chat-template token counts and
KV budget as `vllm_scheduler_replay.session_prompts` / `kv_blocks`, whose budget counts vLLM's
null block, so kvsaga gets one block more, as live) through kvsaga's own scheduler and
manager (`kvsaga.sim.Simulator`, the objects `LLMEngine` drives: the workflow scheduler and
the eviction policy), timed by the same cost: a batch step takes `--step-s` + `--token-s`
per scheduled token, prefill and decode alike. Each step's hint carries the tool's median
pause (`expected_s`), as agent_replay's client sends it.

Reported per seed: prefill tokens computed (prompt tokens not cached at a step's start, and
recomputation after a preemption), mean and p95 task completion time, demotions and
preemptions. `--trace` prints each demotion (why: the shrink at a step's finish, a pause
deadline, a tenant's share), how long the demoted session's pause had lasted, when its next
step arrived and was admitted again, and what was still cached then. `--params` passes the
workflow scheduler's parameters (JSON), so that a candidate is compared with the default on
the same seeds.

Never run it on the connector's fresh seeds (HELPERS.md); its figures are a simulation, to
read beside vllm_scheduler_replay's on the same seeds and costs, not a live measurement.

Seeds: a run that writes results (`--json`) refuses a seed any fit read (bench/fit_seeds.py:
the workflow scheduler's fit, the vLLM connector's gate fit 0-4 and the others), the default
0 among them, unless `--fit-seeds` makes it a diagnosis on registry seeds only, which its
output and every JSON row say ("fit seeds, not held out"); a run that writes nothing prints
that line and goes on. The vLLM gate's seen seeds are held out here: no vLLM gate runs.
Before, nothing checked, and a JSON of fit seed 0 read as a held-out one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ascii_args import ascii_int, float_arg, int_arg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))

from fit_seeds import run_seed_note  # noqa: E402
from vllm_replay_report import kv_blocks, session_prompts  # noqa: E402

from kvsaga.cli import HelpFormatter  # noqa: E402
from kvsaga.sim.config import SimConfig  # noqa: E402
from kvsaga.sim.cost import PRESETS, StepCostModel  # noqa: E402
from kvsaga.sim.simulator import Simulator  # noqa: E402
from kvsaga.sim.trace import Session, SharedPrefix, Step  # noqa: E402


@dataclass(frozen=True)
class LinearCost(StepCostModel):
    """A batch step takes `step_s` + `token_s` per scheduled token (prefill and decode
    alike), as bench/vllm_scheduler_replay.py times vLLM's; the rest of the preset (block
    shape, the policies' pricing) is the base preset's."""

    step_s: float = 0.025
    token_s: float = 0.00065

    def _step_time(self, prefill_tokens, prefill_attention_pairs, prefill_context_tokens,
                   decode_batch, decode_context_tokens, transfer_bytes=0):
        tokens = prefill_tokens + decode_batch
        return self.step_s + self.token_s * tokens if tokens else 0.0

    def decode_step_times(self, batch, contexts):
        return contexts * 0.0 + (self.step_s + self.token_s * batch)


def replay_sessions(args: argparse.Namespace, seed: int) -> tuple[list[Session], dict, int]:
    """The seed's sessions as a simulator trace, each step's `expected_s` hint by (session,
    step), and the KV budget in blocks (kvsaga's: vLLM's count, null block included)."""
    system, steps = session_prompts(args, seed)
    blocks = kv_blocks(args, system, steps)
    prefix = SharedPrefix(f"{args.workload}-system", len(system))
    sessions, hints = [], {}
    for i, sess in enumerate(steps):
        sid = f"s{i}"
        out = []
        for k, st in enumerate(sess):
            # the message as the chat template frames it; after a reply, its end of turn
            n_in = st.input_tokens + args.template_tokens + (args.template_end_tokens if k else 0)
            out.append(Step(input_tokens=n_in, output_tokens=st.output_tokens,
                            tool=st.tool, tool_s=st.tool_s))
            hints[sid, k] = st.expected_s
        sessions.append(Session(sid, args.workload, i * args.arrival_gap, prefix, out))
    return sessions, hints, blocks


class TracedReplay(Simulator):
    """The simulator with the replay's hints (each step's `expected_s`) and a trace of the
    workflow scheduler's demotions and each step's admission."""

    def __init__(self, sessions, config, hints: dict) -> None:
        super().__init__(sessions, config)
        self.hints = hints
        self.steps_done: dict[str, int] = {}
        self.events: list[dict[str, Any]] = []
        self.prefill_tokens = 0
        self.finished_at: dict[str, float] = {}  # session -> its last step's finish
        self.arrived: dict[tuple[str, int], float] = {}
        # (session, step) -> the `expected_s` of the manager's hint after that step's finish
        self.manager_hints: dict[tuple[str, int], float | None] = {}
        m = self.manager
        inner_finish = m.finish_step

        def finish_step(sid, *, now, tool=None, expected_s=None):
            k = self.steps_done.get(sid, 0)
            self.steps_done[sid] = k + 1
            self.finished_at[sid] = now
            out = inner_finish(sid, now=now, tool=tool, expected_s=self.hints.get((sid, k)))
            s = m.sessions.get(sid)
            if s is not None:
                self.manager_hints[sid, k] = s.hint.expected_s if s.hint is not None else None
            return out
        m.finish_step = finish_step
        sched = self.scheduler
        self._why = "?"
        for name in ("_shrink", "_demote", "_reclaim_share", "_reclaim_due"):
            if hasattr(sched, name):
                setattr(sched, name, self._tagged(name, getattr(sched, name)))
        if hasattr(sched, "_demote_session"):
            inner_demote = sched._demote_session

            def demote(sid, now):
                self.events.append({"t": now, "what": "demoted", "sid": sid, "why": self._why,
                                    "paused_s": now - self.finished_at.get(sid, now),
                                    "cached_blocks": self._cached(sid)})
                return inner_demote(sid, now)
            sched._demote_session = demote

    def _tagged(self, name, fn):
        def run(*a, **kw):
            before, self._why = self._why, name
            try:
                return fn(*a, **kw)
            finally:
                self._why = before
        return run

    def _cached(self, sid: str) -> int:
        s = self.manager.sessions.get(sid)
        if s is None:
            return 0
        get = self.manager.index.get
        return sum(1 for h in s.block_hashes if get(h) is not None)

    def _release_due_events(self) -> None:
        for t, _, session, k in sorted(e for e in self._events if e[0] <= self.now):
            self.arrived[session.id, k] = t
            if session.id in getattr(self.scheduler, "_deferred", {}):
                self.events.append({"t": self.now, "what": "returned", "sid": session.id,
                                    "k": k, "cached_blocks": self._cached(session.id)})
        super()._release_due_events()

    def begin(self, req, now):
        start = super().begin(req, now)
        self.prefill_tokens += req.num_tokens - start.num_cached_tokens
        self.events.append({"t": now, "what": "begin", "sid": req.session.id, "k": req.k,
                            "wait_s": now - req.arrival, "prompt": req.num_tokens,
                            "cached": start.num_cached_tokens})
        return start


def linear_cost(args: argparse.Namespace) -> LinearCost:
    """`--preset` with `--block-size` and the linear step time of `--step-s` / `--token-s`."""
    base = PRESETS[args.preset]
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return LinearCost(**{**fields, "block_size": args.block_size},
                      step_s=args.step_s, token_s=args.token_s)


def run_seed(args: argparse.Namespace, seed: int, params: dict) -> dict[str, Any]:
    """One seed's replay: its figures and its trace (`events`)."""
    sessions, hints, blocks = replay_sessions(args, seed)
    cost = linear_cost(args)
    cfg = SimConfig(preset=cost, num_gpu_blocks=blocks, policy=args.policy,
                    max_num_batched_tokens=args.max_num_batched_tokens,
                    max_num_seqs=args.max_num_seqs, scheduler=args.scheduler,
                    scheduler_params=params or None)
    sim = TracedReplay(sessions, cfg, hints)
    res = sim.run()
    sched = sim.scheduler
    out = {"seed": seed, "blocks": blocks, "prefill_tokens": sim.prefill_tokens,
           "tct_mean_s": res.tct_mean_s, "tct_p95_s": res.tct_p95_s,
           "demotions": getattr(sched, "num_demotions", 0),
           "undone": getattr(sched, "num_undone_demotions", 0),
           "preemptions": res.num_preemptions, "makespan_s": res.makespan_s,
           "events": sim.events, "manager_hints": sim.manager_hints}
    return out


def print_trace(r: dict[str, Any]) -> None:
    for e in r["events"]:
        if e["what"] == "begin":
            print(f"  {e['t']:7.2f} begin    {e['sid']} step {e['k']}: waited {e['wait_s']:.2f} s, "
                  f"{e['cached']}/{e['prompt']} tokens cached")
        elif e["what"] == "demoted":
            print(f"  {e['t']:7.2f} DEMOTED  {e['sid']} by {e['why']}: paused "
                  f"{e['paused_s']:.3f} s, {e['cached_blocks']} blocks cached")
        else:
            print(f"  {e['t']:7.2f} returned {e['sid']} step {e['k']} while demoted, "
                  f"{e['cached_blocks']} blocks cached")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    a = p.add_argument
    a("--workload", default="swe", help="workload family of the generated sessions")
    a("--sessions", type=int_arg, default=6, help="agent sessions per seed")
    a("--steps", type=int_arg, default=8, help="most LLM steps a session takes")
    a("--seeds", default="0",
      help="comma-separated generator seeds (held out: a seed any fit read, bench/"
           "fit_seeds.py, the default 0 among them, is refused where the run writes "
           "results, --json, without --fit-seeds)")
    a("--fit-seeds", action="store_true",
      help="a diagnosis on seeds a fit read (those of bench/fit_seeds.py only), labelled "
           "fit seeds, not held out, in the output and every JSON row")
    a("--token-scale", type=float_arg, default=0.05, help="factor on every token count")
    a("--time-scale", type=float_arg, default=0.25, help="factor on every tool pause")
    a("--max-tool-s", type=float_arg, default=10.0, help="cap on a scaled tool pause, seconds")
    a("--arrival-gap", type=float_arg, default=1.0, help="seconds between sessions' starts")
    a("--hint", choices=("median", "exact", "none"), default="median",
      help="the pause a finished step tells the manager: its tool's median, the real one, "
           "or none")
    a("--kv-fraction", type=float_arg, default=0.25,
      help="KV budget as a share of the sessions' working set (unless --kv-blocks)")
    a("--kv-blocks", type=int_arg, default=None,
      help="usable KV blocks of vLLM (kvsaga gets one more, as live)")
    a("--block-size", type=int_arg, default=32, help="tokens per KV block")
    a("--max-num-seqs", type=int_arg, default=16, help="most sequences in a batch step")
    a("--max-num-batched-tokens", type=int_arg, default=1024,
      help="kvsaga-serve's default token budget of a batch step")
    a("--template-tokens", type=int_arg, default=8, help="chat-template tokens a message adds")
    a("--template-end-tokens", type=int_arg, default=2,
      help="chat-template tokens of a reply's end of turn, added to the next message")
    a("--reply-tokens", type=int_arg, default=None,
      help="not supported: replies run to the trace's length here, as the live replay's "
           "--ignore-eos makes them")
    a("--step-s", type=float_arg, default=0.025, help="simulated seconds per step")
    a("--token-s", type=float_arg, default=0.00065, help="simulated seconds per scheduled token")
    a("--preset", default="a100-llama3-8b",
      help="the cost preset whose block shape and pricing the policies read (its step "
           "times are replaced by --step-s / --token-s)")
    a("--policy", default="ttl", help="kvsaga's eviction policy")
    a("--scheduler", default="workflow", help="kvsaga's scheduler by name")
    a("--params", default="{}", help="the scheduler's parameters, JSON")
    a("--trace", action="store_true", help="print every step's start and every demotion")
    a("--json", default=None,
      help="write the results here as JSON, one row per seed (held-out seeds only, or "
           "--fit-seeds)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.reply_tokens is not None:
        raise SystemExit("--reply-tokens is not supported here (replies run to the trace's "
                         "length, as --ignore-eos)")
    try:
        params = json.loads(args.params)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--params is not JSON: {e}") from None
    if not isinstance(params, dict):
        raise SystemExit(f"--params must be a JSON object, got {args.params!r}")
    seeds = [ascii_int(s) for s in args.seeds.split(",") if s.strip()]
    try:  # before any replay: a refused seed costs none
        seed_note = run_seed_note(seeds, "--seeds", fit_seeds=args.fit_seeds,
                                  writes=args.json is not None,
                                  refused="a diagnosis on them: --fit-seeds")
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if seed_note is not None:
        print(seed_note, flush=True)
    rows = []
    for seed in seeds:
        r = run_seed(args, seed, params)
        rows.append(r)
        if args.trace:
            print(f"seed {seed} ({r['blocks']} blocks):")
            print_trace(r)
        print(f"seed {seed}: {r['blocks']} blocks, prefill {r['prefill_tokens']:,} tokens, "
              f"TCT mean {r['tct_mean_s']:.2f} s, p95 {r['tct_p95_s']:.2f} s, demotions "
              f"{r['demotions']} ({r['undone']} undone), preemptions {r['preemptions']}, makespan "
              f"{r['makespan_s']:.1f} s")
    if len(rows) > 1:
        geo = math.exp(statistics.mean(math.log(r["tct_mean_s"]) for r in rows))
        print(f"mean TCT geomean {geo:.3f} s, "
              f"prefill tokens {sum(r['prefill_tokens'] for r in rows):,}")
    if args.json:
        rows = [{**{k: v for k, v in r.items() if k != "manager_hints"},  # tuple keys
                 "fit_seeds_note": seed_note}  # None: every seed is held out
                for r in rows]
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
