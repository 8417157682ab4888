"""`kvsaga sim`: compare schedulers and eviction policies on a generated or recorded trace.

    kvsaga sim --workload swe --sessions 200 --seed 1 --policy lru,saga,ttl,graph,belady \\
        --scheduler fcfs,workflow --kv-memory 20G --preset a100-llama3-8b \\
        [--host-memory SIZE] [--trace FILE.jsonl] [--slo-factor 3] [--json OUT] [--plot OUT.png]
        [--jobs N]

Prints one row per scheduler and policy; `belady` is added as the reference when not asked
for (with `belady-host` for rows denied the --host-memory tier by a `-host` suffix: each
ratio's reference is a row). `--plot` also sweeps the KV capacity (0.5x to 2x of
--kv-memory) and draws recomputation against it. `--gpus N` / `--router a,b` serve the trace
on simulated GPUs behind routers instead (`cmd_cluster`, `kvsaga.sim.cluster`): one row per
router, scheduler and policy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import sys
from dataclasses import replace

from kvsaga.ascii_numbers import float_arg
from kvsaga.logs import StderrHandler, logging_to_stderr
from kvsaga.policy import DEFAULT_POLICY, POLICIES
from kvsaga.routing import ROUTERS
from kvsaga.scheduler import DEFAULT_SCHEDULER, SCHEDULERS
from kvsaga.sim.cli_outputs import check_outputs, plot_format, save, write_json
from kvsaga.sim.cli_types import (
    comma_names,
    path_type,
    positive_type,
    report_period_type,
    seed_type,
    size_type,
)
from kvsaga.sim.cluster import MAX_GPUS, format_rows, simulate_cluster
from kvsaga.sim.cluster_tenants import add_cluster_tenant_slowdowns
from kvsaga.sim.compare import (
    compare,
    config_for,
    parse_policy,
    tenant_share_misfit,
    with_belady_references,
)
from kvsaga.sim.config import MAX_GPU_BLOCKS, MAX_HOST_BLOCKS, block_cap_error
from kvsaga.sim.cost import GIB, PRESETS
from kvsaga.sim.simulator import SimConfig, Simulator, blocks_needed
from kvsaga.sim.trace import Session, TraceError, load_trace
from kvsaga.sim.workloads import WORKLOADS, generate

SWEEP_FACTORS = (0.5, 0.75, 1.0, 1.5, 2.0)
# The generation flags' defaults: with --trace a flag set otherwise gets an "ignored" note.
GENERATE = {"workload": "swe", "sessions": 200, "seed": 1, "scale": 1.0, "arrival_rate": None}
DEFAULT_SLO_FACTOR = 3.0
# A --trace whose first arrival is past this share of a row's makespan, and past this many
# of its mean gaps between arrivals, gets a note: the makespan runs from t=0 of the trace
# clock (docs/simulator.md, "Time"). A trace generated from 0 starts one exponential gap
# after it (past 10 mean gaps with odds e^-10).
IDLE_LEAD_SHARE = 0.05
IDLE_LEAD_GAPS = 10
COLUMNS = (
    ("scheduler", "scheduler", "{}"),
    ("policy", "policy", "{}"),
    ("recomputed", "recomputed_tokens", "{:,}"),
    ("x belady", "belady_ratio", "{:.3f}"),
    ("hit rate", "hit_rate", "{:.3f}"),
    ("tct mean s", "tct_mean_s", "{:.1f}"),
    ("tct p95 s", "tct_p95_s", "{:.1f}"),
    ("tasks/h", "tasks_per_hour", "{:.1f}"),
    ("slo", "slo_attainment", "{:.3f}"),
    ("kv util", "kv_utilization", "{:.3f}"),
    ("offl GB", "bytes_offloaded", "{:.2f}"),
    ("reld GB", "bytes_reloaded", "{:.2f}"),
)
# Below the table, so "x belady" is not read as distance from the best possible run.
BELADY_FOOTER = ("belady: a reference, not a lower bound (greedy on the trace's next uses; "
                 "a policy can recompute less)")


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the `sim` command to `kvsaga`'s subparsers."""
    p = subparsers.add_parser(
        "sim", help="compare eviction policies on a simulated GPU",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default=GENERATE["workload"],
                   help=f"workload family: {', '.join(sorted(WORKLOADS))} (default: swe)")
    p.add_argument("--sessions", type=positive_type(int), default=GENERATE["sessions"],
                   help="sessions to generate (default: 200)")
    p.add_argument("--seed", type=seed_type, default=GENERATE["seed"],
                   help="trace seed, an integer >= 0 (default: 1)")
    p.add_argument("--scale", type=positive_type(float), default=GENERATE["scale"],
                   help="multiply token counts and tool times (e.g. 0.1 for a quick run; "
                   "default: 1)")
    p.add_argument("--arrival-rate", type=positive_type(float), default=GENERATE["arrival_rate"],
                   help="sessions per second (default: the family's)")
    p.add_argument("--trace", type=path_type, default=None,
                   help="replay this JSON Lines trace instead (--workload, --sessions, "
                   "--seed, --scale and --arrival-rate then do not apply: a note names those "
                   "set to other than their defaults; the --json config records them as "
                   "null)")
    default_policies = list(dict.fromkeys(("lru", "saga", "ttl", "graph", DEFAULT_POLICY,
                                           "belady")))
    p.add_argument("--policy", default=",".join(default_policies),
                   help="comma-separated policies; with --host-memory every one gets the "
                   "host tier and a -host suffix denies a row it (+host, which needs "
                   "--host-memory, is the same as no suffix) "
                   f"(default: {','.join(default_policies)})")
    p.add_argument("--scheduler", default=DEFAULT_SCHEDULER,
                   help=f"comma-separated schedulers, run side by side: "
                   f"{', '.join(sorted(SCHEDULERS))} (default: {DEFAULT_SCHEDULER})")
    p.add_argument("--slo-factor", type=positive_type(float), default=DEFAULT_SLO_FACTOR,
                   help="a task meets its SLO when its TCT <= this x its unloaded TCT "
                   "(default: 3; the --gpus/--router cluster run reports no SLO and ignores "
                   "it, saying so)")
    p.add_argument("--preset", default="a100-llama3-8b",
                   help=f"GPU and model: {', '.join(sorted(PRESETS))} (default: "
                   "a100-llama3-8b)")
    p.add_argument("--kv-memory", type=size_type, default=None,
                   help="GPU KV capacity, e.g. 20G or 512M (default: the preset's free "
                   f"memory); at most {MAX_GPU_BLOCKS:,} blocks (8T with the llama3-8b "
                   "presets' 2 MiB blocks): the simulator keeps per-block bookkeeping")
    p.add_argument("--host-memory", type=size_type, default=None,
                   help="host-tier capacity, e.g. 64G (default: none; every victim is "
                   f"discarded); at most {MAX_HOST_BLOCKS:,} blocks (8T with the llama3-8b "
                   "presets' 2 MiB blocks): the simulator keeps per-block lists")
    p.add_argument("--kv-gib", type=positive_type(float), default=None,
                   help="deprecated: use --kv-memory (--kv-gib N is --kv-memory NG)")
    p.add_argument("--host-gib", type=float_arg, default=None,
                   help="deprecated: use --host-memory (--host-gib N is --host-memory NG)")
    p.add_argument("--hints", default="tool", choices=("tool", "oracle", "none"),
                   help="what the engine tells the policy at each pause (default: tool)")
    p.add_argument("--no-resume-hints", action="store_true",
                   help="do not call resume_hint when a tool returns")
    p.add_argument("--gpus", type=positive_type(int), default=1,
                   help="simulate this many GPUs behind a router (see --router; default: 1); "
                   f"at most {MAX_GPUS:,}: a GPU no step reaches holds no simulator state, "
                   "but every GPU costs the routers per-GPU state and the kvsaga router "
                   "reads every GPU at each routing decision")
    p.add_argument("--router", default=None,
                   help="comma-separated routers run side by side: round-robin, affinity, "
                   "kvsaga (default with --gpus > 1: all three); giving it runs the cluster "
                   "simulation, on --gpus GPUs (1 unless given)")
    p.add_argument("--report-period", type=report_period_type, default=None, metavar="SECONDS",
                   help="the cluster run's GPUs report their load to the router every this "
                   "many seconds of simulated time, each at its own phase, as a serving "
                   "replica's report lags (Ray Serve: 0.5 s): the router decides on reports "
                   "up to that old and a steal may be refused; the rows then count the "
                   "refused imports. Default (or 0): live reports, as every recorded "
                   "cluster figure")
    p.add_argument("--json", type=path_type, default=None,
                   help="write the results to this JSON file")
    p.add_argument("--plot", type=path_type, default=None,
                   help="sweep KV capacity and plot recomputation against it (the "
                   "format by the suffix: .png, .svg, .pdf, ...; PNG without one)")
    p.add_argument("--jobs", type=positive_type(int), default=None,
                   help="simulations run at once, in worker processes (default: one per "
                   "CPU core; results do not depend on it); the --gpus/--router cluster run "
                   "runs one at a time and ignores it, saying so")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-simulation "
                   "lines (a policy skipped with --gpus is still said)")
    p.set_defaults(func=cmd_sim)
    return p


def _load(args) -> list[Session]:
    """The sessions to simulate. Raises ValueError for a trace that cannot be read or holds
    none (a table of nan rows would say nothing)."""
    if args.trace is not None:
        try:
            sessions = load_trace(args.trace)
        except OSError as e:  # missing, a directory, unreadable: name the flag and the path
            raise ValueError(f"--trace {args.trace!r}: {e.strerror or e}") from None
        if not sessions:
            raise ValueError(f"trace {args.trace!r} holds no sessions")
        return sessions
    return generate(args.workload, args.sessions, seed=args.seed,
                    arrival_rate=args.arrival_rate, scale=args.scale)


def idle_lead_note(sessions: list[Session], rows: list[dict]) -> str | None:
    """What to tell the user when the trace's first arrival is more than `IDLE_LEAD_SHARE`
    of the shortest makespan among `rows` and more than `IDLE_LEAD_GAPS` mean gaps between
    its arrivals (None otherwise): the makespan, and so tasks_per_hour and the kv_* shares,
    count the idle time before it. Generated traces start one gap after 0; a recorded one
    may keep its own clock's origin."""
    arrivals = sorted(s.arrival_s for s in sessions)
    first = arrivals[0]
    span = min((r["makespan_s"] for r in rows if r["makespan_s"] > 0), default=0.0)
    if not span or first <= IDLE_LEAD_SHARE * span:
        return None
    if len(arrivals) > 1 and first <= IDLE_LEAD_GAPS * (arrivals[-1] - first) / (
            len(arrivals) - 1):
        return None  # as a Poisson trace from 0 may start
    return (f"the trace's first arrival is at {first:,.1f} s, {first / span:.0%} of the "
            f"shortest makespan ({span:,.1f} s): makespan_s runs from t=0 of the trace clock, "
            "so tasks_per_hour and the kv_* shares count that idle lead (shift the trace's "
            "arrival_s to start near 0 to leave it out)")


def check_capacity(args, sessions: list[Session], config: SimConfig) -> None:
    """ValueError when a session outgrows one GPU's KV capacity: the simulator's message
    (the session, its blocks, the capacity and its largest count), preceded with --trace
    by the trace file and the session's line."""
    try:
        Simulator(sessions, config)
    except ValueError as e:
        if args.trace is None:
            raise
        sid = next((s.id for s in sessions if f"session {s.id!r} reaches " in str(e)), None)
        line = _trace_line(args.trace, sid) if sid is not None else None
        if line is None:
            raise
        raise ValueError(f"{args.trace}:line {line}: {e}") from None


def _trace_line(path: str, sid: str) -> int | None:
    """The 1-based line of session `sid` in a trace that loaded (None if not found)."""
    with open(path, encoding="utf-8-sig", errors="surrogateescape") as f:
        for lineno, text in enumerate(f, start=1):
            if text.strip() and json.loads(text).get("id") == sid:
                return lineno
    return None


def _resolve_memory_flags(args) -> None:
    """Fold the deprecated --kv-gib / --host-gib into --kv-memory / --host-memory (bytes),
    keeping the flag given in `args.memory_flags` for the messages about its size.

    Raises:
        ValueError: a deprecated flag together with its replacement, or a size that is
            negative, under one byte or past any number of bytes.
    """
    args.memory_flags = {"kv_memory": "--kv-memory", "host_memory": "--host-memory"}
    for old, new in (("kv_gib", "kv_memory"), ("host_gib", "host_memory")):
        value = getattr(args, old)
        if value is None:
            continue
        flag, repl = "--" + old.replace("_", "-"), "--" + new.replace("_", "-")
        if getattr(args, new) is not None:
            raise ValueError(f"{flag} is deprecated; give only {repl}")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{flag} must be a number >= 0, got {value!r}")
        if not math.isfinite(value * GIB):
            raise ValueError(f"{flag} {value:g} is too large to be a number of bytes")
        if value > 0 and int(value * GIB) == 0:
            raise ValueError(f"{flag} {value:g} is less than one byte")
        size = int(value * GIB)
        print(f"kvsaga sim: {flag} is deprecated and will be removed; use {repl} "
              f"{_size_text(value, size)}", file=sys.stderr)
        setattr(args, new, size)
        setattr(args, old, None)
        args.memory_flags[new] = flag


def _size_text(gib: float, size: int) -> str:
    """What to give --kv-memory / --host-memory for a deprecated `--kv-gib gib` run with
    `size` bytes: `NG` for a whole number of GiB, else the bytes themselves (`{gib:g}G`
    was rounded to 6 digits, or in an exponent form `parse_bytes` refuses)."""
    return f"{int(gib)}G" if gib.is_integer() else str(size)


def _base_config(args, kv_memory_bytes: float | None) -> SimConfig:
    """The run's SimConfig. Raises ValueError, naming the flag the user gave, for a
    --kv-memory that holds no block or more than `MAX_GPU_BLOCKS`, and for a --host-memory
    that holds no block (a run labelled with a host tier that has none would say nothing
    about one) or more than `MAX_HOST_BLOCKS`."""
    flags = getattr(args, "memory_flags", {"kv_memory": "--kv-memory",
                                           "host_memory": "--host-memory"})
    if kv_memory_bytes is not None and kv_memory_bytes <= 0:
        raise ValueError(f"{flags['kv_memory']} must be > 0, got {kv_memory_bytes:,} B")
    if kv_memory_bytes is not None:
        _check_cap(flags["kv_memory"], kv_memory_bytes, MAX_GPU_BLOCKS, args.preset)
    config = SimConfig(
        preset=args.preset,
        kv_memory_bytes=kv_memory_bytes,
        hints=args.hints,
        resume_hints=not args.no_resume_hints,
        slo_factor=args.slo_factor,
    )
    cost = config.cost  # checked here to name the flag (SimConfig names its field)
    if kv_memory_bytes is not None and cost.num_blocks(kv_memory_bytes) == 0:
        raise ValueError(f"{flags['kv_memory']} {kv_memory_bytes:,} B holds no KV block "
                         f"({cost.block_bytes:,} B each with preset {cost.name})")
    if not args.host_memory:
        return config
    if cost.num_blocks(args.host_memory) == 0:
        raise ValueError(f"{flags['host_memory']} {args.host_memory:,} B holds no host block "
                         f"({cost.block_bytes:,} B each with preset {cost.name})")
    _check_cap(flags["host_memory"], args.host_memory, MAX_HOST_BLOCKS, args.preset)
    return replace(config, host_memory_bytes=args.host_memory)


def _check_cap(flag: str, size: float, most: int, preset: str) -> None:
    """ValueError naming `flag` when `size` bytes are more than `most` blocks of `preset`
    (an unknown preset is left to SimConfig's message)."""
    cost = PRESETS.get(preset)
    if cost is None or cost.num_blocks(size) <= most:
        return
    raise block_cap_error(f"{flag} {size:,.0f} B", cost.num_blocks(size), most, cost)


def check_distinct_runs(specs: list[str], base: SimConfig,
                        host_memory_bytes: int | None) -> None:
    """ValueError naming two --policy specs that are one run: the same policy with the same
    host tier, as `lru` and `lru+host` are with --host-memory (every row gets its tier) and
    `lru` and `lru-host` without it. They would print the same row twice under two labels,
    which reads as a comparison with and without a host tier (`config_for`'s errors, such as
    a +host spec without --host-memory, come first)."""
    seen: dict[tuple[str, int], str] = {}
    for spec in specs:
        key = (parse_policy(spec)[0], config_for(spec, base, host_memory_bytes).host_blocks())
        if key in seen:
            why = ("--host-memory gives every row its host tier; suffix -host to deny a row "
                   "it" if host_memory_bytes else "no row has a host tier without "
                   "--host-memory")
            raise ValueError(f"--policy names {seen[key]!r} and {spec!r}, the same run "
                             f"({key[1]:,} host blocks each): {why}")
        seen[key] = spec


def _schedulers(args) -> list[str]:
    """The --scheduler names, checked (ValueError naming an unknown one)."""
    return comma_names("--scheduler", args.scheduler, "scheduler", sorted(SCHEDULERS))


def _parse_policy(spec: str) -> tuple:
    """`parse_policy(spec)`, its ValueError (an unknown name, listing the known) naming
    --policy."""
    try:
        return parse_policy(spec)
    except ValueError as e:
        raise ValueError(f"--policy: {e}") from None


def format_table(rows: list[dict]) -> str:
    """The rows as an aligned text table (bytes in GB)."""
    cells = [[title for title, _, _ in COLUMNS]]
    for row in rows:
        line = []
        for _, key, fmt in COLUMNS:
            value = row[key]
            if key.startswith("bytes_"):
                value = value / 1e9
            line.append("nan" if isinstance(value, float) and math.isnan(value)
                        else fmt.format(value))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = []
    for r in cells:
        pairs = enumerate(zip(r, widths, strict=True))
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs))
    return "\n".join(lines)


def cmd_sim(args) -> int:
    """Run `kvsaga sim`; returns the exit status (2 on bad arguments or input)."""
    with contextlib.ExitStack() as scope:  # what the run set up for its logging, undone
        return _cmd_sim(args, scope)


def _cmd_sim(args, scope: contextlib.ExitStack) -> int:
    try:  # before any simulation: a bad output path must not cost the whole run
        check_outputs(args)
    except ValueError as e:
        print(f"kvsaga sim: error: {e}", file=sys.stderr)
        return 2
    ignored = [f"--{k.replace('_', '-')}" for k, v in GENERATE.items() if getattr(args, k) != v]
    if args.trace is not None and ignored:  # (silent before session 50, an unknown --workload too)
        print(f"kvsaga sim: {' and '.join(ignored)} {'does' if len(ignored) == 1 else 'do'} not "
              "apply with --trace (the trace is replayed as it is): ignored", file=sys.stderr)
    if args.gpus > 1 or args.router is not None:
        ignored = [flag for flag, given in (("--jobs", args.jobs is not None),
                                             ("--slo-factor",
                                              args.slo_factor != DEFAULT_SLO_FACTOR))
                   if given]
        if ignored:
            print(f"kvsaga sim: {' and '.join(ignored)} {'does' if len(ignored) == 1 else 'do'}"
                  " not apply to the cluster run (--gpus/--router): ignored", file=sys.stderr)
        return cmd_cluster(args)
    if args.report_period is not None:
        print("kvsaga sim: --report-period applies to the cluster run (--gpus/--router) "
              "only: ignored", file=sys.stderr)
    try:
        specs = comma_names("--policy", args.policy, "policy")
        for spec in specs:
            _parse_policy(spec)
        schedulers = _schedulers(args)
        if args.trace is None:
            WORKLOADS[args.workload]  # unknown family: lists the known ones
        _resolve_memory_flags(args)
        base = _base_config(args, args.kv_memory)
        check_distinct_runs(specs, base, args.host_memory or None)
        # the reference every ratio is to, for each host setting, as a row of its own
        specs = with_belady_references(specs, base, args.host_memory or None)
        sessions = _load(args)
        check_capacity(args, sessions, base)
        progress = not args.quiet and sys.stderr.isatty()
        if not args.quiet and not progress:  # a log, not a terminal: a line per simulation
            _log_lines_to_stderr(scope)
        host_bytes = args.host_memory or None
        jobs = args.jobs or default_jobs()
        rows = compare(sessions, base, specs, host_memory_bytes=host_bytes, progress=progress,
                       schedulers=schedulers, jobs=jobs)
        sweep: list[dict] = []
        if args.plot is not None:
            sweep = _sweep(args, sessions, specs, host_bytes, progress, schedulers, jobs, rows)
        _write_files(args, sessions, base, schedulers, rows, sweep)
    except (ValueError, OSError, TraceError) as e:
        print(f"kvsaga sim: error: {e}", file=sys.stderr)
        return 2
    cost = base.cost  # printed after the files: a reader that leaves early loses no file
    print(f"{len(sessions)} sessions, preset {cost.name}, {base.blocks()} GPU blocks "
          f"({base.blocks() * cost.block_bytes / GIB:.1f} GiB), "
          f"host {base.host_blocks()} blocks")
    print(format_table(rows))
    print(BELADY_FOOTER)
    note = idle_lead_note(sessions, rows) if args.trace is not None else None
    if note is not None:
        print(f"kvsaga sim: note: {note}", file=sys.stderr)
    for path in (args.json, args.plot):
        if path is not None:
            print(f"wrote {path}")
    return 0


def _write_files(args, sessions: list[Session], base: SimConfig, schedulers: list[str],
                 rows: list[dict], sweep: list[dict]) -> None:
    """Write --json and --plot (ValueError naming the flag when one cannot be written)."""
    if args.json is not None:
        out = {"config": run_config(args, sessions, base, schedulers), "results": rows}
        if sweep:
            out["sweep"] = sweep
        save("--json", args.json, lambda path: write_json(path, out))
    if args.plot is not None:
        from kvsaga.sim.plot import plot_sweep

        name = args.trace or f"{args.workload} x{len(sessions)}"
        title = f"{name} on {base.cost.name}"
        save("--plot", args.plot, lambda path: plot_sweep(sweep, path, title=title,
                                                          fmt=plot_format(path)))


def run_config(args, sessions: list[Session], base: SimConfig, schedulers: list[str]) -> dict:
    """The JSON's `config`: what the run used. The generation fields (workload, seed, scale,
    arrival_rate: the family's when --arrival-rate is not given) are null with --trace,
    which replays the file as it is."""
    generated = args.trace is None
    rate = None
    if generated:
        rate = (args.arrival_rate if args.arrival_rate is not None
                else WORKLOADS[args.workload].arrival_rate)
    return {"workload": args.workload if generated else None, "trace": args.trace,
            "sessions": len(sessions), "seed": args.seed if generated else None,
            "scale": args.scale if generated else None, "arrival_rate": rate,
            "preset": base.cost.name, "num_gpu_blocks": base.blocks(),
            "num_host_blocks": base.host_blocks(), "hints": args.hints,
            "resume_hints": base.resume_hints, "schedulers": schedulers,
            "slo_factor": args.slo_factor}


def _log_lines_to_stderr(scope: contextlib.ExitStack) -> None:
    """Show `kvsaga.sim`'s per-simulation lines on stderr until `scope` closes (the run's
    end: before session 53 the handler and the INFO level stayed for the rest of the
    process, and a later simulation in it printed its lines too, `--quiet` or not)."""
    logger = logging.getLogger("kvsaga.sim")
    if not any(isinstance(h, StderrHandler) for h in logger.handlers):
        scope.enter_context(logging_to_stderr(
            logging.INFO, logging.Formatter("kvsaga sim: %(message)s"), "kvsaga.sim"))


def default_jobs() -> int:
    """The CPU cores this process may run on (each simulation keeps one busy)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _sweep(args, sessions, specs, host_bytes, progress, schedulers, jobs,
           table: list[dict]) -> list[dict]:
    """--plot's rows: `compare` at each of `SWEEP_FACTORS` x the KV capacity that the
    longest session and each tenant's share fit and `MAX_GPU_BLOCKS` holds, with `kv_gib`;
    at 1x, copies of the table's rows (`table`, the same simulations: before session 50 they
    ran again)."""
    base = _base_config(args, args.kv_memory)
    cost = base.cost
    kv_gib = base.blocks() * cost.block_bytes / GIB
    need = max(blocks_needed(s, cost.kv_spec) for s in sessions)
    rows = []
    for factor in SWEEP_FACTORS:
        gib = kv_gib * factor
        if cost.num_blocks(gib * GIB) < need:
            continue  # the longest session would not fit
        if cost.num_blocks(gib * GIB) > MAX_GPU_BLOCKS:
            continue  # past the cap (--kv-memory itself is refused past it, before any run)
        config = _base_config(args, gib * GIB)
        if tenant_share_misfit(sessions, config) is not None:
            continue  # nor a tenant's longest on its share (its slowdown's denominator)
        if config.blocks() == base.blocks():  # what the table ran
            rows += [dict(row, kv_gib=gib) for row in table]
            continue
        for row in compare(sessions, config, specs,
                           host_memory_bytes=host_bytes, progress=progress,
                           schedulers=schedulers, jobs=jobs):
            row["kv_gib"] = gib
            rows.append(row)
    return rows


def cmd_cluster(args) -> int:
    """`kvsaga sim --gpus N --router a,b`: one row per router x scheduler x policy."""
    try:
        routers = comma_names("--router", ",".join(ROUTERS) if args.router is None
                              else args.router, "router", list(ROUTERS))
        policies, offline = [], []
        for spec in comma_names("--policy", args.policy, "policy"):
            name, host = _parse_policy(spec)  # ValueError listing the known names
            if host is not None:
                raise ValueError(f"--policy {spec!r}: a +host/-host suffix applies without "
                                 "--gpus; with --gpus every policy gets --host-memory's tier")
            if getattr(POLICIES[name], "needs_oracle", False):
                offline.append(name)  # an offline reference is not run behind a router
            else:
                policies.append(name)
        if offline:  # said even under --quiet: a row the user asked for goes missing
            print(f"kvsaga sim: skipping {', '.join(offline)} with --gpus: offline "
                  "references (they read the whole trace in advance) are not run behind a "
                  "router", file=sys.stderr)
        if not policies:
            raise ValueError(f"--policy names no policy to run behind a router "
                             f"({', '.join(offline)}: offline references, not run with --gpus)")
        schedulers = _schedulers(args)
        _resolve_memory_flags(args)
        base = _base_config(args, args.kv_memory)  # the sizes' errors before a trace is read
        sessions = _load(args)
        check_capacity(args, sessions, base)
        # Said even under --quiet: columns a single-GPU row has are not left out unsaid.
        print("kvsaga sim: cluster rows (--gpus/--router) carry no kv_utilization or "
              "slo_attainment (one GPU's measures: run without --gpus/--router)",
              file=sys.stderr)
        misfit = tenant_share_misfit(sessions, _base_config(args, args.kv_memory))
        if misfit is not None:  # said, not refused: the rows stand without slowdowns
            print(f"kvsaga sim: no tenant slowdowns with --gpus: {misfit}", file=sys.stderr)
        rows = []
        for scheduler in schedulers:
            for policy in policies:
                base = _base_config(args, args.kv_memory)
                config = replace(base, policy=policy, scheduler=scheduler)
                for router in routers:
                    row = simulate_cluster(sessions, config, gpus=args.gpus, router=router,
                                           report_period_s=args.report_period).row()
                    if row["tenants"] is not None and misfit is None:
                        add_cluster_tenant_slowdowns(row, sessions, config, args.gpus, router,
                                                     args.report_period)
                    rows.append(row)
                    if not args.quiet:
                        print(f"  {router} {scheduler} {policy}: done", file=sys.stderr)
        if args.json is not None:  # before stdout: a reader that leaves early loses no file
            out = {"gpus": args.gpus, "sessions": len(sessions),
                   "config": cluster_config(args, sessions, base,
                                            {"schedulers": schedulers, "routers": routers,
                                             "policies": policies}),
                   "results": rows}
            save("--json", args.json, lambda path: write_json(path, out))
    except (ValueError, OSError, TraceError) as e:
        print(f"kvsaga sim: error: {e}", file=sys.stderr)
        return 2
    print(f"{len(sessions)} sessions on {args.gpus} GPUs ({config.cost.name}, "
          f"{config.blocks()} blocks each)")
    print(format_rows(rows))
    if args.report_period:
        print(f"reports every {args.report_period:g} s; imports refused: " + ", ".join(
            f"{r['router']} {r['scheduler']} {r['policy']} {r['num_refused']} "
            f"({r['refused_gb']:.2f} GB)" for r in rows))
    note = idle_lead_note(sessions, rows) if args.trace is not None else None
    if note is not None:
        print(f"kvsaga sim: note: {note}", file=sys.stderr)
    if args.json is not None:
        print(f"wrote {args.json}")
    return 0


def cluster_config(args, sessions: list[Session], base: SimConfig, names: dict) -> dict:
    """The cluster JSON's `config`: `run_config`'s fields (num_gpu_blocks per GPU; no
    slo_factor, which the cluster run does not use), its gpus, and `names`: the schedulers,
    routers and policies run (an offline reference --policy named is not)."""
    config = run_config(args, sessions, base, names["schedulers"])
    del config["slo_factor"]
    config.update(gpus=args.gpus, routers=names["routers"], policies=names["policies"],
                  report_period_s=args.report_period or None)
    return config
