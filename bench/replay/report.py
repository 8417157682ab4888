"""Figures of a run: per-arm summaries and their medians over repeats, the paired ratios each
mode is judged by, the tables, and the RESULTS.md block `--write-results` writes (bench/ is
on sys.path wherever this package is imported: bench/results_blocks.py writes it)."""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import results_blocks

from kvsaga.stats import percentile

from .arms import REPLICAS_TITLE, Arm, replica_pairs
from .client import PolicyResult, StepRecord
from .goals import CONNECTOR_VS_VLLM, SCHEDULER_VS_BASE, SERVE_VS_CONNECTOR, Goal
from .servers import COMPUTED_PROMPT_COUNTS


def measured_peak(records: list[StepRecord]) -> int:
    """Peak over time of the live sessions' summed context: a running step holds its
    prompt, a finished one its prompt and output, until the session's last step ends."""
    events: list[tuple[float, str, int]] = []
    last_step: dict[str, int] = {}
    for r in records:
        last_step[r.session] = max(last_step.get(r.session, -1), r.step)
    for r in records:
        if r.error:
            continue
        events.append((r.start, r.session, r.prompt_tokens))
        done = r.step == last_step[r.session]
        events.append((r.end, r.session, 0 if done else r.prompt_tokens + r.completion_tokens))
    live: dict[str, int] = {}
    peak = 0
    for _, sid, ctx in sorted(events):
        live[sid] = ctx
        peak = max(peak, sum(live.values()))
    return peak


def floor_tokens(records: list[StepRecord], shared_prefix: int, block_size: int) -> int:
    """Prefill tokens of an unbounded cache, which no policy can beat.

    A later step computes what it appends to its session's context, plus the previous
    step's last output token (sampled, never fed back, so its KV was never computed); a
    first step computes its prompt but the shared prefix's full blocks, which only the first
    session to arrive computes.
    """
    total, prev, first = 0, {}, True
    shared = shared_prefix // block_size * block_size
    for r in sorted((r for r in records if r.error is None), key=lambda r: r.start):
        ctx = prev.get(r.session)
        if ctx is None:
            total += r.prompt_tokens - (0 if first else shared)
            first = False
        else:
            total += r.prompt_tokens - ctx + 1
        prev[r.session] = r.prompt_tokens + r.completion_tokens
    return total


def replica_changes(records: list[StepRecord]) -> int | None:
    """Steps served on another replica than their session's previous step (each one a
    session moved: its KV migrated or recomputed); None when no step names its replica
    (a single node, or Ray's own router, whose responses carry no x-kvsaga-replica)."""
    last: dict[str, str] = {}
    n = 0
    for r in sorted(records, key=lambda r: (r.session, r.step)):
        if r.error is None and r.replica is not None:
            n += r.session in last and last[r.session] != r.replica
            last[r.session] = r.replica
    return n if last else None


def route_counts(records: list[StepRecord]) -> dict[str, int]:
    """How many steps the router sent where they went for each reason (x-kvsaga-route)."""
    out: dict[str, int] = {}
    for r in records:
        if r.error is None and r.route is not None:
            out[r.route] = out.get(r.route, 0) + 1
    return dict(sorted(out.items()))


def scraped(metrics: dict[str, float]) -> dict[str, float | int]:
    """Scraped `/metrics` samples as a summary keeps them: seconds (a key ending in `_s`) as
    floats, counters and gauges rounded to ints (they were int() before, which truncated
    float seconds)."""
    return {k: float(v) if k.endswith("_s") else int(round(v)) for k, v in metrics.items()}


def computed_prompt(res: PolicyResult) -> dict[str, Any]:
    """The prompt tokens the server computed over the replay by its own counters: prefix-cache
    queries minus hits, differenced between the scrape after the warm-up and the one at the
    end, and what they count (`servers.COMPUTED_PROMPT_COUNTS`: kvsaga-serve every attempt,
    recomputation after preemption included; vLLM first admissions only). Empty when a
    scrape lacks either counter."""
    keys = ("prefix_cache_query_tokens", "prefix_cache_hit_tokens")
    if not all(k in m for k in keys for m in (res.metrics, res.metrics_start)):
        return {}
    (q1, h1), (q0, h0) = ([m[k] for k in keys] for m in (res.metrics, res.metrics_start))
    return {"computed_prompt_tokens": int(round((q1 - q0) - (h1 - h0))),
            "computed_prompt_counts": COMPUTED_PROMPT_COUNTS.get(res.engine or "", "unknown")}


def summarize(res: PolicyResult, shared_prefix: int, block_size: int,
              sessions: int | None = None) -> dict[str, Any]:
    """One arm's figures in one round. `sessions`: how many sessions were replayed (default:
    those with a record); a session without a task time (an error ended it, or it never
    finished) is a failed one, and a round with one is not judged (`comparisons`)."""
    ok = [r for r in res.records if r.error is None]
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    lat = [r.end - r.start for r in ok]
    num_sessions = len({r.session for r in res.records}) if sessions is None else sessions
    erred = len({r.session for r in res.records if r.error is not None})
    return {
        "requests": len(ok),
        "errors": len(res.records) - len(ok),
        "sessions": num_sessions,
        "failed_sessions": max(num_sessions - len(res.task_s), erred),
        "error_examples": sorted({r.error for r in res.records if r.error})[:3],
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "prefill_tokens": prompt - cached,
        "cached_share": cached / prompt if prompt else 0.0,
        "completion_tokens": sum(r.completion_tokens for r in ok),
        "step_latency_mean_s": statistics.fmean(lat) if lat else math.nan,
        "step_latency_p95_s": percentile(lat, 95),
        "task_time_mean_s": statistics.fmean(res.task_s) if res.task_s else math.nan,
        "task_time_p95_s": percentile(res.task_s, 95) if res.task_s else math.nan,
        "tasks_completed": len(res.task_s),
        "wall_s": res.wall_s,
        "peak_context_tokens_measured": measured_peak(res.records),
        "floor_prefill_tokens": floor_tokens(res.records, shared_prefix, block_size),
        "replica_changes": replica_changes(res.records),
        "routes": route_counts(res.records),
        **scraped(res.metrics),
        **computed_prompt(res),
        **res.conditions,
    }


def machine() -> dict[str, Any]:
    """The host a run measured: CPU model, its widest x86 vector ISA, cores, when the
    machine booted, Python, torch and its threads, the load average.

    Why the ISA and the boot: "AMD EPYC" named two different hosts in RESULTS. The
    2026-11-30 live replay ran on one with AVX-512, where the engine's attention kernels
    (csrc/paged_attn.cpp) take their AVX-512 tiles and extend GEMM; the machine booted on
    2026-12-01 has AVX2 only, so extend and prefill rows go to SDPA, and the same code took
    4.2-5.7x the engine CPU per step there (`python bench/extend_step.py --threads 2
    --repeat 3`; RESULTS, "Why every arm of that run was slower: another host, not the
    code"). A run's times compare with another's only on the same kind of host.
    """
    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        info = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        info = []
    fields = {}  # the first processor's fields (all cores of a VM are alike)
    for line in info:
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip(), value.strip())
    cpu = fields.get("model name", cpu)
    flags = set(fields.get("flags", "").split())
    return {"cpu": cpu, "vector_isa": vector_isa(flags), "cores": os.cpu_count(),
            "booted_utc": boot_time_utc(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]}


def vector_isa(flags: set[str]) -> str:
    """The widest x86 vector extension in /proc/cpuinfo's flags ("AVX-512", "AVX2", "AVX",
    else "baseline"); "unknown" with no flags (not Linux, or not x86)."""
    if not flags:
        return "unknown"
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX")):
        if flag in flags:
            return name
    return "baseline"


def boot_time_utc() -> str | None:
    """When this machine booted (UTC, to the minute, from /proc/stat's btime): two runs
    with different boots may have run on different hosts. None where /proc is absent."""
    import datetime

    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                at = datetime.datetime.fromtimestamp(int(line.split()[1]), datetime.timezone.utc)
                return at.strftime("%Y-%m-%d %H:%M")
    except (OSError, ValueError):
        pass
    return None


def host_text(host: dict[str, Any]) -> str:
    """The host as a RESULTS line names it: CPU, vector ISA, cores, boot, Python, torch."""
    isa = host.get("vector_isa")
    booted = host.get("booted_utc")
    return (f"{host['cpu']} ({'' if isa is None else isa + ', '}{host['cores']} cores, "
            f"shared; {'' if booted is None else f'booted {booted} UTC; '}Python "
            f"{host['python']}, torch {host['torch']}"
            + (f", {host['torch_threads']} threads by default" if "torch_threads" in host else "")
            + ")")


def median_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One arm's figures over its repeats: the median of every number over the rounds that
    have it (errors and failed sessions summed), each number's [min, max] under "range",
    and under "rounds_with" how many rounds had each number some round lacked.

    A connector counter a round never logged (`connector_...`: its per-reason releases
    appear once one happens) is 0 in that round. Any other figure a round lacks (a /metrics
    scrape without the prefix-cache counters, `replica_changes` None where no step named
    its replica) is left out of the median, not read as 0: before review s49 every missing
    number was 0 (900, absent, 950 gave "900 (0-950)"), and None after a number lost the
    whole run with a TypeError."""
    out: dict[str, Any] = dict(runs[0])
    ranges: dict[str, list[float]] = {}
    rounds_with: dict[str, int] = {}
    keys = {k: v for r in reversed(runs) for k, v in r.items() if _is_number(v)}
    for key in keys:
        summed = key in ("errors", "failed_sessions")  # over the rounds: summed
        counted = [r.get(key, 0) if summed or key.startswith("connector_") else r.get(key)
                   for r in runs]
        counted = [v for v in counted if _is_number(v)]
        if len(counted) < len(runs):
            rounds_with[key] = len(counted)
        values = [v for v in counted if not math.isnan(v)]
        if summed:
            out[key] = sum(values)
        elif values:
            out[key] = statistics.median(values)
            ranges[key] = [min(values), max(values)]
    out["error_examples"] = sorted({e for r in runs for e in r["error_examples"]})[:3]
    out["runs"] = len(runs)
    out["range"] = ranges
    out["rounds_with"] = rounds_with
    return out


def _is_number(value: Any) -> bool:
    """An int or float, not a bool (a figure a median is taken of)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def paired(rounds: list[dict[str, dict[str, Any]]], base: str, arm: str, key: str
           ) -> list[float]:
    """`base`'s figure over `arm`'s, per round (both ran in it, back to back)."""
    return [r[base][key] / r[arm][key] for r in rounds
            if base in r and arm in r and r[arm][key] > 0]


def _ratio_text(values: list[float]) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}x"
    return f"{med:.2f}x (per round {', '.join(f'{v:.2f}' for v in values)})"


def failed_sessions(rounds: list[dict[str, dict[str, Any]]], *names: str) -> int:
    """Sessions that failed (an error, or no task time) in the named arms over the rounds
    where they all ran: a round with any is not judged."""
    return sum(r[n].get("failed_sessions", 0) for r in rounds
               if all(n in r for n in names) for n in names)


def comparisons(args: argparse.Namespace, systems: list[Arm],
                rounds: list[dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The ratios each mode is judged by, as medians of per-round (paired) ratios, and each
    pair's verdict on the whole of its goal (`goals.Goal`):

    - `--engine vllm`: every vLLM + connector arm against plain vLLM (issue 13's goal: mean
      TCT >= 1.64x faster and fewer prefill tokens), and kvsaga-serve against vLLM +
      connector (goal: at least as fast);
    - `--kvsaga-arms`: every arm against the first named (issue 10's goal for the workflow
      scheduler against fcfs+lru: mean TCT >= 2x faster and p95 TCT no worse); when
      `--only-arms` left that baseline out, against the first that ran, with no verdict;
    - `--replicas`: kvsaga's router against each other one (issue 12: a lower mean TCT and
      fewer prefill tokens).

    A pair whose arms lost a session in any round (an error, or fewer tasks completed than
    sessions) is not judged: its mean TCT would leave the failed tasks out. Its line says
    "not judged: N sessions failed" and its `goal_met` is None.
    """
    names = [a.name for a in systems]
    pairs: list[tuple[str, str, Goal | None]] = []
    notes: list[str] = []
    if args.replicas:
        pairs += replica_pairs(names)
    elif args.engine == "vllm":
        pairs += [("vllm", n, CONNECTOR_VS_VLLM) for n in names if n.startswith("vllm+")]
        pairs += [(c, n, SERVE_VS_CONNECTOR) for n in names
                  if n.startswith("kvsaga-serve:") and " " not in n
                  for c in names if c.startswith("vllm+")]
        # kvsaga-serve with more flags (`POLICY+--flag=value`): against the same policy plain
        pairs += [(n.split(" ")[0], n, None) for n in names
                  if n.startswith("kvsaga-serve:") and " " in n and n.split(" ")[0] in names]
    elif args.kvsaga_arms and len(names) > 1:
        base = [n.strip() for n in args.kvsaga_arms.split(",") if n.strip()][0]
        if base in names:
            pairs += [(base, n, SCHEDULER_VS_BASE) for n in names if n != base]
        else:  # --only-arms left the baseline out: ratios, no verdict
            pairs += [(names[0], n, None) for n in names[1:]]
            notes.append(f"issue 10's goal not judged: its baseline {base} (the first of "
                         "--kvsaga-arms) did not run")
    out: dict[str, Any] = {"lines": []}
    for base, arm, goal in pairs:
        tct = paired(rounds, base, arm, "task_time_mean_s")
        p95 = paired(rounds, base, arm, "task_time_p95_s")
        fewer = paired(rounds, base, arm, "prefill_tokens")
        med = statistics.median(tct) if tct else math.nan
        failed = failed_sessions(rounds, base, arm)
        if failed:
            verdict, met = f"not judged: {failed} sessions failed", None
        elif goal is None:
            verdict, met = "", False
        else:
            missed = goal.missed(tct, p95, fewer)
            verdict = "met" if not missed else f"not met ({'; '.join(missed)})"
            met = not missed
        out[f"{arm} vs {base}"] = {
            "tct_speedup": tct, "tct_speedup_median": med, "tct_p95_speedup": p95,
            "prefill_ratio": fewer, "goal": None if goal is None else goal.tct,
            "goal_text": None if goal is None else goal.text(), "goal_met": met,
            "judged": not failed, "failed_sessions": failed}
        judged = (f" ({goal.issue} goal {goal.text()}: {verdict})" if goal is not None
                  else f" ({verdict})" if verdict else "")
        out["lines"].append(
            f"{arm} vs {base}: mean TCT speed-up {_ratio_text(tct)}{judged}; p95 TCT "
            f"{_ratio_text(p95)}; prefill tokens {base}/{arm} {_ratio_text(fewer)}")
    out["lines"] += notes
    if args.replicas:
        out["lines"] += [moves_line(n, [r[n] for r in rounds if n in r]) for n in names]
    return out


def moves_line(arm: str, runs: list[dict[str, Any]]) -> str:
    """Per round, how many of an arm's steps changed replica, and the router's reasons (what
    a session's move costs: a migration or a recompute, and the hand-over between them)."""
    if any(r["replica_changes"] is None for r in runs):
        return f"{arm}: which replica served each step is not reported (no x-kvsaga-replica)"
    per = ", ".join(f"{r['replica_changes']} of {r['requests']}" for r in runs)
    routes = ", ".join(f"{k} {v}" for k, v in runs[0]["routes"].items()) if runs else ""
    return (f"{arm}: steps that changed replica per round {per}"
            + (f"; routes (round 0) {routes}" if routes else ""))


def _cell(s: dict[str, Any], key: str, fmt: str) -> str:
    """A median with its range over the repeats, when there was more than one, and how many
    rounds had the figure when some lacked it ("n/a": none had it)."""
    if not _is_number(s.get(key)):
        return "n/a"
    text = format(s[key], fmt)
    notes = []
    lo_hi = s.get("range", {}).get(key)
    if s.get("runs", 1) > 1 and lo_hi and lo_hi[0] != lo_hi[1]:
        notes.append(f"{format(lo_hi[0], fmt)}-{format(lo_hi[1], fmt)}")
    if key in s.get("rounds_with", {}):
        notes.append(f"{s['rounds_with'][key]} of {s['runs']} rounds")
    return text + (f" ({', '.join(notes)})" if notes else "")


TABLE_HEAD = ("system", "prefill tok (first-attempt misses)", "computed prompt tok",
              "cached share", "step mean s", "step p95 s", "task mean s", "task p95 s",
              "evictions", "preempt", "errors")


def table_head(summary: dict[str, dict[str, Any]]) -> tuple[str, ...]:
    """TABLE_HEAD with the computed-prompt column naming what its cells count: the servers'
    counters differ (kvsaga-serve counts every attempt, recomputation after preemption in;
    vLLM its first admissions only, as the usage-based first-attempt misses do), so a table
    with both says which is which instead of heading unlike figures alike."""
    kinds = {"kvsaga": "kvsaga-serve", "vllm": "vLLM"}
    present = {s.get("computed_prompt_counts") for s in summary.values()}
    scopes = [c for c in COMPUTED_PROMPT_COUNTS.values() if c in present]
    if len(scopes) == 1:
        note = scopes[0]
    else:  # both (or none reported): say what each engine's cells count
        note = "; ".join(f"{kinds[e]}: {c}" for e, c in COMPUTED_PROMPT_COUNTS.items())
        note += ", not comparable"
    head = list(TABLE_HEAD)
    head[2] = f"computed prompt tok ({note})"
    return tuple(head)


def table_rows(summary: dict[str, dict[str, Any]]) -> list[tuple[str, ...]]:
    rows = []
    for name, s in summary.items():
        rows.append((name, _cell(s, "prefill_tokens", ",.0f"),
                     _cell(s, "computed_prompt_tokens", ",.0f")
                     if "computed_prompt_tokens" in s else "-",
                     _cell(s, "cached_share", ".1%"),
                     _cell(s, "step_latency_mean_s", ".2f"), _cell(s, "step_latency_p95_s", ".2f"),
                     _cell(s, "task_time_mean_s", ".1f"), _cell(s, "task_time_p95_s", ".1f"),
                     _cell(s, "evictions", ".0f") if "evictions" in s else "-",
                     _cell(s, "preemptions", ".0f") if "preemptions" in s else "-",
                     str(s["errors"])))
    return rows


def print_table(summary: dict[str, dict[str, Any]]) -> None:
    rows = table_rows(summary)
    head = table_head(summary)
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for r in (head, *rows):
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


def markdown_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    head = table_head(summary)
    aligns = ["---"] + ["---:"] * (len(head) - 1)
    return ["| " + " | ".join(r) + " |" for r in (head, tuple(aligns), *table_rows(summary))]


# What else sets an --engine vllm run apart, named in its title where it is not the default
# (the model and block size since review s49: a run on another model or with 64-token blocks
# replaced the default run's block; `--fit-seeds`: the title says it is no held-out reading).
TITLE_SETTINGS = ("steps", "kv_memory", "vllm_policies", "kvsaga_policies", "hint",
                  "max_tool_s", "arrival_gap", "max_num_seqs", "idle_spinners", "model",
                  "block_size", "fit_seeds")


def _settings_text(args: argparse.Namespace, defaults: dict[str, Any]) -> str:
    """", --steps 16, --hint none": each of `TITLE_SETTINGS` where the run's value is not
    the parser's default (all defaults: "", so a default run's title is what it was)."""
    out = ""
    for key in TITLE_SETTINGS:
        value = getattr(args, key, defaults.get(key))
        if key in defaults and value != defaults[key]:
            flag = "--" + key.replace("_", "-")
            out += f", {flag}" if value is True else f", {flag} {value}"
    return out


def results_title(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> str:
    """The RESULTS.md section `--write-results` writes in (one per mode; under --engine vllm
    one per workload, seed, scales and every setting of `TITLE_SETTINGS` that differs from
    `defaults`, the parser's: a run with other settings writes a section of its own)."""
    if args.replicas:
        return REPLICAS_TITLE
    if args.engine == "vllm":  # one section per workload, seed and scale: runs sit side by side
        eos = ", EOS ignored" if getattr(args, "ignore_eos", False) else ""
        kv = (f", KV {args.kv_fraction:g} of the working set"
              if args.kv_fraction != 0.5 and not args.kv_memory else "")
        return (f"### Agent replay, interleaved repeats: {args.workload} seed {args.seed}, "
                f"{args.sessions} sessions, tokens x{args.token_scale:g}, pauses "
                f"x{args.time_scale:g}{kv}{eos}{_settings_text(args, defaults or {})} "
                "(written by bench/agent_replay.py)")
    if args.kvsaga_arms:
        return "## Agent replay: schedulers on live kvsaga-serve (written by bench/agent_replay.py)"
    return "## Agent replay: policies on live kvsaga-serve (written by bench/agent_replay.py)"


def write_section(path: Path, title: str, body: str, writer: str,
                  parent: str | None = None) -> None:
    """Write `body` as `writer`'s own marked block of the section headed `title` in the
    Markdown file at `path` (bench/results_blocks.py): the block its last run wrote there is
    replaced and nothing else (notes written by hand in the section stay, and a section that
    holds no block yet keeps its text, the block added after it); a new section goes at the
    end of the section whose heading starts with `parent` (when there is one), else at the
    end of the file. Replacing the whole section wiped the notes sessions wrote in it.

    Raises:
        results_blocks.BlockError: as `results_blocks.replace_block` (nothing written).
    """
    results_blocks.replace_block(path, title, writer, body, within=parent)


def refuse_early(path: Path, title: str, writer: str, parent: str | None = None) -> None:
    """Exit with the reason, before a run of minutes, if `write_section` would refuse."""
    try:
        results_blocks.check(path, title, writer, within=parent)
    except results_blocks.BlockError as e:
        raise SystemExit(f"not run: {e} (or run without --write-results)") from None


def results_body(command: str, host: dict[str, Any], load_end: list[float], info: list[str],
                 summary: dict[str, dict[str, Any]], lines: list[str], repeat: int) -> str:
    """The section `--write-results` writes: the command, the machine and its load, the
    workload, the per-arm medians (ranges over the repeats), and the judged ratios."""
    order = ("forward in even rounds, backward in odd ones" if repeat > 1 else "one round")
    return "\n".join([
        f"`{command}` on {host_text(host)}; load average "
        f"{host['loadavg_at_start'][0]:.1f} at the start, {load_end[0]:.1f} at the end. "
        f"{repeat} round(s) of every arm, arm order {order}, each arm a fresh server. "
        "Cells: the median over the rounds (min-max); ratios: the median of per-round "
        "ratios (each round runs the arms back to back). Prefill tokens (first-attempt "
        "misses): prompt minus cached tokens of each response's usage, fixed at a request's "
        "first schedule, so recomputation after a preemption is not in them; computed prompt "
        "tokens: the server's prefix-cache queries minus hits over the replay (warm-up left "
        "out), every attempt on kvsaga-serve, first admissions only on vLLM (it exports no "
        "counter of re-admissions). Prefill tokens and the cached share do not depend on the "
        "CPU's speed; times do (shared machine).",
        "", *info, "", *markdown_table(summary), "", *[f"- {ln}" for ln in lines]])
