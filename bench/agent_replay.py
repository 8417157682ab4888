"""Agent replay: a simulator workload against a live kvsaga-serve, once per eviction policy.

    python bench/agent_replay.py --json /tmp/agent_replay.json   # swe, 6 x 8 steps, 3-8 min

    python bench/agent_replay.py --sessions 2 --steps 2 --policies lru,graph   # a quick look

    python bench/agent_replay.py --engine vllm --vllm-python /path/to/vllm-env/bin/python

    python bench/agent_replay.py --kvsaga-arms fcfs+lru,workflow+graph --repeat 3

Schedulers (`--kvsaga-arms`, issue 10): kvsaga-serve arms named `scheduler+policy`, each a
server started with `--scheduler S --policy P`, the first arm the baseline every other arm
is compared with (mean and p95 task completion time, prefill tokens; issue 10's goal is
judged only when that baseline ran, not when `--only-arms` left it out). A run names one
mode: `--replicas`, `--kvsaga-arms` and `--engine vllm` are refused together.

Repeats (`--repeat N`): every arm runs N times, a fresh server each time, in alternating
order (forward in even rounds, backward in odd ones), so that the load drift of a shared
machine weighs on every arm alike. Each cell is the median over the rounds with its range;
each ratio is the median of per-round ratios (the arms of one round ran back to back).
Prefill tokens and the cached share do not depend on the CPU's speed; times do.
`--write-results` writes the run's block of bench/RESULTS.md (one section per mode:
policies, schedulers, routers; under vLLM one per workload, seed and scales, naming every
setting of `replay.report.TITLE_SETTINGS` that is not the default, a new one at the end of
"vLLM as the peer"): its block between marker lines naming this script
(bench/results_blocks.py) replaces the one its last run wrote there and nothing else, and a
run refuses before it starts if the text between those markers was edited by hand.

Seeds: a run that writes results (`--write-results`, `--json`) refuses a `--seed` any fit
read (bench/fit_seeds.py; under --engine vllm the vLLM gate's seen seeds too), the default
0 among them, unless `--fit-seeds` makes it a diagnosis, which its output, JSON and section
say ("fit seeds, not held out"); a run that writes nothing prints that line and goes on.

vLLM as the peer (`--engine vllm`). The same sessions are replayed against plain vLLM (prefix
caching on), vLLM with the kvsaga retention connector (`--vllm-policies`, enabled by
`--kv-transfer-config` only), and kvsaga-serve (`--kvsaga-policies`): the same HF model
directory (written from the GGUF when needed), fp32, the same block size (32 tokens: vLLM's
CPU attention needs a multiple of 32) and the same KV budget in bytes (vLLM's
`--kv-cache-memory-bytes`, kvsaga-serve's `--kv-memory`). vLLM runs from its own environment
(`--vllm-python`; tests/integrations/vllm/make_env.sh builds one) with `--enforce-eager`
(torch.compile's warm-up takes minutes on a small CPU). The hint goes to vLLM as
`kv_transfer_params: {"kvsaga": {"session_id", "tool", "expected_s", "last_step"}}`.
Reported besides the table: the mean-TCT ratio of plain vLLM to vLLM + connector (issue 13's
goal: >= 1.64x, with fewer prefill tokens) and of vLLM + connector to kvsaga-serve.
`--only-arms kvsaga-serve:ttl` runs one arm of that list alone (same server, model, block
size and budget), e.g. to compare two commits' kvsaga-serve without the vLLM arms' load.

What it does. `kvsaga.sim.generate` samples agent sessions (step counts, tools, token counts,
tool latencies); they are scaled (`--token-scale` for tokens; `--time-scale`, capped by
`--max-tool-s`, for tool pauses) and replayed with real text against a real server: for each
policy a fresh `kvsaga-serve` subprocess on a free 127.0.0.1 port, all with the same KV
budget, each stopped through its process handle before the next starts. Each session is one
thread with the official `openai` client: a system message shared by its workflow group (real
text of about the group's prefix length), then per step a user (first step) or tool message
of about `input_tokens` tokens of synthetic text, `max_tokens=output_tokens`,
`temperature=0`, the `kvsaga` hint (`tool`, `expected_s`, `workflow`; `last_step` on the
last step), and then a sleep for the tool's scaled latency. The model may stop at its EOS
before `max_tokens` (SmolLM2 replies 6-8 tokens where the swe trace at x0.05 asks 13-18), so
contexts grow less than the trace; `--ignore-eos` makes each reply exactly its step's output
tokens, as the working set below and bench/vllm_scheduler_replay.py assume.

Pauses. On a CPU every forward pass of SmolLM2-135M takes ~0.3-1 s, so a scaled step takes
seconds whatever its token count. Tool latencies shortened like the tokens (e.g. x0.05:
a file read becomes 2 ms) would leave every session queued in the server nearly all the
time: a compute-bound replay where the cache competition is between queued requests, not
paused sessions. The default x20 (capped at 10 s: a file read ~1 s, `run_tests` 10 s) makes
sessions spend a good part of their time paused on tools, as they do on a GPU, so that
paused sessions' caches compete for the budget. `--time-scale 1` keeps the sampled latencies.

The KV budget is a fraction (`--kv-fraction`) of the workload's working set: the peak of the
sessions' concurrent context tokens (every session live at once at its final length, the
shared system prompt once; arrivals are packed into the first seconds), times the model's KV
bytes per token (SmolLM2-135M in fp32 on CPU: 30 layers x 3 KV heads x 64 x 2 (K and V) x
4 bytes = 46,080 bytes).

Machine state. A live round's wall time is the engine's CPU time stretched by how fast its
threads wake (bench/replay/conditions.py): each round also prints the machine's idle,
steal and others' CPU shares, cpuidle halts a second, and the server's CPU-s, run-queue
wait and context switches; `--idle-spinners` keeps every CPU from going idle for all arms.

Reported per policy: prefill tokens as first-attempt misses (prompt tokens minus cached
tokens, from the responses' `usage`, whose cached count is fixed at a request's first
schedule: recomputation after a preemption is not in it), computed prompt tokens from the
server's own prefix-cache counters (queries minus hits over the replay, the warm-up left out:
every attempt on kvsaga-serve; first admissions only on vLLM, which exports no counter of
re-admissions, so the two engines' cells do not compare and the header says so), the cached
share of prompt tokens, mean and p95 step latency, mean task completion time (arrival to last
response, tool pauses included), evictions and preemptions from `/metrics`; then the median
of the per-round ratios of lru's prefill tokens to graph's (issue 6's goal: >= 5x) and the
floor of an unbounded cache, which no policy can go below. A run where an arm lost a session
(an error, or fewer tasks completed than sessions) judges nothing ("not judged: N sessions
failed") and `--write-results` refuses to write it (exit status 1).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ascii_args import float_arg, int_arg

# bench/ holds the replay package; a test or another script may load this file by path.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from fit_seeds import run_seed_note  # noqa: E402
from replay.arms import (  # noqa: E402
    REPLICA_ROUTERS,  # noqa: E402
    REPLICAS_TITLE,
    Arm,
    arms,
    check_host_memory,
    mode_conflict,
    ray_default_text,
    scheduler_arms,
)
from replay.client import StepRecord, replay  # noqa: E402
from replay.conditions import IdleSpinners, conditions_text, sigterm_exits  # noqa: E402
from replay.report import (  # noqa: E402
    comparisons,
    failed_sessions,
    machine,
    median_summary,
    paired,
    print_table,
    refuse_early,
    results_body,
    summarize,
    write_section,
)
from replay.report import results_title as _title  # noqa: E402
from replay.servers import SERVED_NAME, vllm_model_dir  # noqa: E402
from replay.workload import build_sessions, sample_steps, working_set  # noqa: E402

from kvsaga.cli import HelpFormatter  # noqa: E402

__all__ = [  # what tests and the other bench scripts reach through this module
    "REPLICAS_TITLE", "RESULTS", "SERVED_NAME", "VLLM_SECTION", "WRITER", "Arm", "arms",
    "build_parser", "comparisons", "machine", "main", "refuse_early", "results_title",
    "run_order", "sample_steps", "scheduler_arms", "select_arms", "vllm_model_dir",
    "with_scheduler_params", "write_section"]

POLICIES = ("lru", "ttl", "graph")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"  # what --write-results writes in
WRITER = "bench/agent_replay.py"  # its blocks' writer (bench/results_blocks.py)
VLLM_SECTION = "## vLLM as the peer"  # where the vLLM-mode sections go in RESULTS.md


# -- main -----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=HelpFormatter)
    a = p.add_argument
    a("--workload", default="swe", help="a kvsaga.sim workload (swe, web, bfcl, assistant)")
    a("--sessions", type=int_arg, default=6, help="agent sessions replayed per policy")
    a("--steps", type=int_arg, default=8, help="most steps replayed per session (the rest cut)")
    a("--seed", type=int_arg, default=0,
      help="the generator's seed (held out: a seed any fit read, bench/fit_seeds.py, the "
           "default 0 among them, is refused where the run writes results, --write-results "
           "or --json, without --fit-seeds)")
    a("--fit-seeds", action="store_true",
      help="a diagnosis on a seed a fit read (those of bench/fit_seeds.py only), labelled "
           "fit seeds, not held out, in the output, the JSON and the RESULTS section")
    a("--token-scale", type=float_arg, default=0.02, help="multiplies every token count")
    a("--time-scale", type=float_arg, default=20.0, help="multiplies every tool latency")
    a("--max-tool-s", type=float_arg, default=10.0, help="cap on one (shortened) tool pause")
    a("--arrival-gap", type=float_arg, default=1.0, help="seconds between session arrivals")
    a("--ignore-eos", action="store_true",
      help="every reply runs to its step's output tokens (the model's EOS ignored), so the "
           "contexts grow as the sampled trace and the working set say")
    a("--hint", choices=("median", "exact", "none"), default="median",
      help="expected_s sent: the tool's median latency, the exact pause, or none")
    a("--policies", default=",".join(POLICIES), help="comma-separated, run in this order")
    a("--kv-fraction", type=float_arg, default=0.5,
      help="KV budget as a share of the working set")
    a("--kv-memory", type=int_arg, default=None,
      help="KV budget in bytes (overrides --kv-fraction)")
    a("--host-memory", type=int_arg, default=0,
      help="host-tier bytes for offloaded KV blocks, given to every kvsaga-serve arm (0: no "
           "host tier); not with --engine vllm, whose vLLM arms would have none")
    a("--block-size", type=int_arg, default=16, help="tokens per KV block")
    a("--max-num-seqs", type=int_arg, default=16, help="the server's batch limit")
    a("--model", default=None, help="model path (default: the bundled SmolLM2-135M)")
    a("--start-timeout", type=float_arg, default=180.0, help="seconds to wait for a server")
    a("--request-timeout", type=float_arg, default=300.0, help="seconds per request")
    a("--json", default=None, help="write the results here as JSON")
    a("--replicas", type=int_arg, default=None,
      help="compare routers on kvsaga-serve --replicas N (a local Ray cluster; needs "
           "kvsaga[cluster]), one arm per --replica-routers; replaces --policies; not with "
           "--kvsaga-arms or --engine vllm")
    a("--replica-policy", default="graph",
      help="the eviction policy of --replicas' arms (default graph, which RESULTS' recorded "
           "--replicas run used; not kvsaga-serve's own default, kvsaga.policy.DEFAULT_POLICY)")
    a("--replica-routers", default=",".join(REPLICA_ROUTERS),
      help="--replicas' arms, one per kvsaga-serve --router, run in this order; kvsaga is "
           "compared with each other one (ray-default: Ray Serve's own default router)")
    a("--kvsaga-arms", default=None,
      help="kvsaga-serve arms as scheduler+policy pairs, the first the baseline (e.g. "
           "fcfs+lru,workflow+graph; with --only-arms leaving it out, no goal is judged); "
           "replaces --policies; not with --replicas or --engine vllm")
    a("--repeat", type=int_arg, default=1,
      help="rounds of every arm; the order alternates (forward, backward, ...) so that load "
           "drift weighs on every arm alike; figures are per-arm medians")
    a("--write-results", action="store_true",
      help="write this run's block of bench/RESULTS.md (its section: one per mode)")
    a("--only-arms", default=None,
      help="run only these of the mode's arms, comma-separated as the table names them "
           "(e.g. kvsaga-serve:ttl with --engine vllm: the same server, model, block size and "
           "KV budget as in the full run, without the vLLM arms' load); not with "
           "--write-results (a section holds every arm)")
    a("--idle-spinners", action="store_true",
      help="keep one SCHED_IDLE busy loop per CPU while every arm runs: it takes no time "
           "from other threads but keeps every CPU from going idle, so the engine's "
           "threads never wake on an idle (halted) CPU (bench/replay/conditions.py)")
    v = p.add_argument_group("peer engine (--engine vllm)")
    v.add_argument("--engine", choices=("kvsaga", "vllm"), default="kvsaga",
                   help="kvsaga: one kvsaga-serve per --policies; vllm: plain vLLM (prefix "
                        "caching), vLLM + the kvsaga connector, and kvsaga-serve, same model, "
                        "dtype (fp32) and KV budget")
    v.add_argument("--vllm-python", default=sys.executable,
                   help="interpreter that has vLLM (tests/integrations/vllm/make_env.sh)")
    v.add_argument("--vllm-policies", default="ttl",
                   help="vLLM connector arms: POLICY (a kvsaga policy, the connector's "
                        "defaults: session gate on), POLICY+nogate (retention alone), "
                        "POLICY+gate (gate forced on), POLICY+noroom (the gate without "
                        "room admission), POLICY+fifo (the gate in vLLM's queue order), "
                        "POLICY+ride (deferred steps ride along, best_effort_steps 10)")
    p.add_argument("--kvsaga-scheduler-params", default=None, metavar="JSON",
                   help="kvsaga-serve's --scheduler-params for every kvsaga-serve arm (a JSON "
                        "object of the scheduler's parameters, e.g. '{\"undo_demotion\": "
                        "true}'; default: the scheduler's defaults)")
    v.add_argument("--kvsaga-policies", default="graph",
                   help="kvsaga-serve policies run next to vLLM (default graph, which RESULTS' "
                        "recorded default replay used; not kvsaga-serve's own default, "
                        "kvsaga.policy.DEFAULT_POLICY); POLICY+--flag=value adds an arm "
                        "with that kvsaga-serve flag too, compared with the plain POLICY arm "
                        "(e.g. ttl,ttl+--cpu-host=shared)")
    return p



def _load_tokenizer(model: str | None) -> tuple[Any, Any]:
    from kvsaga.engine.loader import default_model_path
    from kvsaga.engine.tokenizer import Tokenizer
    from kvsaga.engine.weights import open_checkpoint

    ckpt = open_checkpoint(default_model_path() if model is None else model)
    if ckpt.gguf is not None:
        return Tokenizer.from_gguf(ckpt.gguf), ckpt.config
    return Tokenizer.from_hf_dir(ckpt.path, ckpt.config.eos_token_ids), ckpt.config


def run_order(systems: list[Arm], repeat: int) -> list[tuple[int, Arm]]:
    """(round, arm) in the order they run: every arm once per round, forward in even rounds
    and backward in odd ones (A B, B A, A B, ...), so that a drift in the machine's load over
    the run weighs on every arm alike and no arm always runs first after a server start."""
    out = []
    for rnd in range(repeat):
        out += [(rnd, a) for a in (systems if rnd % 2 == 0 else systems[::-1])]
    return out


def select_arms(systems: list[Arm], only: str | None, write_results: bool) -> list[Arm]:
    """`--only-arms`: the named arms of the mode's list, in its order (None: all).

    Raises:
        SystemExit: a name that is not one of the mode's arms, none named, or
            `--write-results` (a partial run would replace the whole section).
    """
    if only is None:
        return systems
    want = [n.strip() for n in only.split(",") if n.strip()]
    known = [a.name for a in systems]
    bad = [n for n in want if n not in known]
    if bad or not want:
        raise SystemExit(f"--only-arms: {only!r} must name arms of this mode: {known}")
    if write_results:
        raise SystemExit("--only-arms runs part of a section's arms: not with --write-results")
    return [a for a in systems if a.name in want]


def with_scheduler_params(systems: list[Arm], text: str | None,
                          write_results: bool = False) -> list[Arm]:
    """`--kvsaga-scheduler-params`: every kvsaga-serve arm started with `--scheduler-params
    TEXT` (vLLM arms unchanged; None: all unchanged).

    Raises:
        SystemExit: TEXT is not a JSON object, or `--write-results` is on (the section's
            title does not name the parameters: it would replace the defaults' section).
    """
    if text is None:
        return systems
    if write_results:
        raise SystemExit("--kvsaga-scheduler-params changes the kvsaga-serve arms: not with "
                         "--write-results (it would replace the defaults' section)")
    try:
        ok = isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        ok = False
    if not ok:
        raise SystemExit(f"--kvsaga-scheduler-params must be a JSON object, got {text!r}")
    return [replace(a, serve_args=(*a.serve_args, "--scheduler-params", text))
            if a.engine == "kvsaga" else a for a in systems]


def results_parent(args: argparse.Namespace) -> str | None:
    """The start of the heading a run's new RESULTS.md section goes under (None: at the end
    of the file)."""
    return VLLM_SECTION if args.engine == "vllm" else None


def results_title(args: argparse.Namespace) -> str:
    """The RESULTS.md section a run's `--write-results` writes its block in (`replay.report.
    results_title`), naming under --engine vllm the settings that differ from this parser's
    defaults (the block size as vLLM runs it: `vllm_block_size`)."""
    defaults = vars(build_parser().parse_args([]))
    if args.engine == "vllm":
        args = argparse.Namespace(**{**vars(args),
                                     "block_size": vllm_block_size(args.block_size)})
        defaults["block_size"] = vllm_block_size(defaults["block_size"])
    return _title(args, defaults)


def vllm_block_size(block_size: int) -> int:
    """The block size an --engine vllm run uses for both engines: `block_size` where vLLM's
    CPU attention takes it (a multiple of 32 tokens), else 32."""
    return block_size if block_size % 32 == 0 else 32


def check_seed(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The line that says `--seed` is not held out (None: it is), printed here; exits with
    the reason where the run would write results (`--write-results`, `--json`) on a seed a
    fit read (bench/fit_seeds.py; with --engine vllm the vLLM gate's seen seeds too) without
    `--fit-seeds`, or where `--fit-seeds` names a seed no fit read (it would be used up
    unreported). Before, nothing checked: a run on fit seed 0 wrote a section that read as
    a held-out reading (review s49, gate finding 1)."""
    try:
        note = run_seed_note([args.seed], "--seed", fit_seeds=args.fit_seeds,
                             writes=args.write_results or args.json is not None,
                             refused="a diagnosis on it: --fit-seeds",
                             gate_seen=args.engine == "vllm")
    except ValueError as e:
        parser.error(str(e))
    if note is not None:
        print(note, flush=True)
    return note


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if conflict := mode_conflict(args):
        parser.error(conflict)
    if args.repeat < 1:
        raise SystemExit(f"--repeat must be >= 1, got {args.repeat}")
    if args.replicas is not None and args.replicas < 1:
        raise SystemExit(f"--replicas must be >= 1, got {args.replicas}")
    seed_note = check_seed(parser, args)  # before the model and tokenizer load
    check_host_memory(args)  # before the model is exported for vLLM
    title = results_title(args)  # (names --model as given, not the exported directory)
    if args.engine == "vllm":
        # Both engines serve the same HF directory; vLLM's CPU attention takes blocks of a
        # multiple of 32 tokens, and kvsaga-serve gets the same block size and budget.
        args.model = vllm_model_dir(args.model)
        if args.block_size != vllm_block_size(args.block_size):
            print(f"note: --block-size {args.block_size} -> 32 (vLLM's CPU attention)",
                  file=sys.stderr)
            args.block_size = vllm_block_size(args.block_size)
    if args.write_results:  # a block it may not write over: refused before the run
        refuse_early(RESULTS, title, WRITER, results_parent(args))
    systems = with_scheduler_params(select_arms(arms(args), args.only_arms,
                                                args.write_results),
                                    args.kvsaga_scheduler_params, args.write_results)
    host = machine()  # before the run: the load average says how shared the machine was
    tok, cfg = _load_tokenizer(args.model)
    sessions = build_sessions(args, tok)
    ws = working_set(sessions, tok)
    # The server computes in fp32 on CPU, and so stores KV in fp32 (4 bytes).
    kv_per_token = cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * 4
    args.kv_bytes_per_token = kv_per_token
    block_bytes = kv_per_token * args.block_size
    ws_bytes = ws["peak_context_tokens"] * kv_per_token
    kv_bytes = args.kv_memory or int(args.kv_fraction * ws_bytes)
    kv_blocks = kv_bytes // block_bytes
    # The server's context limit is its whole pool: the longest session must fit alone (with
    # one block of slack for the output), or its last steps fail with a 400.
    need = -(-(ws["longest_context_tokens"] + args.block_size) // args.block_size)
    if kv_blocks < need:
        print(f"note: raising the KV budget from {kv_blocks} to {need} blocks so that the "
              f"longest session ({ws['longest_context_tokens']} tokens) fits", file=sys.stderr)
        kv_blocks = need
    kv_bytes = kv_blocks * block_bytes  # what the server will actually use
    num_steps = sum(len(s.steps) for s in sessions)
    print(f"workload {args.workload}: {len(sessions)} sessions, {num_steps} steps "
          f"(tokens x{args.token_scale}, tool pauses x{args.time_scale} capped at "
          f"{args.max_tool_s} s, hint {args.hint})")
    print(f"working set: {ws['peak_context_tokens']:,} tokens x {kv_per_token:,} B/token = "
          f"{ws_bytes / 2**20:.1f} MiB; KV budget {kv_bytes / 2**20:.1f} MiB = {kv_blocks} "
          f"blocks of {args.block_size} tokens = {kv_bytes / ws_bytes:.0%} of the working set",
          flush=True)
    info = [
        f"Workload {args.workload} (seed {args.seed}): {len(sessions)} sessions, {num_steps} "
        f"steps, tokens x{args.token_scale}, tool pauses x{args.time_scale} capped at "
        f"{args.max_tool_s} s, sessions {args.arrival_gap} s apart, hint {args.hint}"
        + (", replies to their full output tokens (EOS ignored)." if args.ignore_eos else "."),
        f"KV budget {kv_bytes:,} B = {kv_blocks} blocks of {args.block_size} tokens = "
        f"{kv_bytes / ws_bytes:.0%} of the {ws['peak_context_tokens']:,}-token working set; "
        f"--max-num-seqs {args.max_num_seqs}."]
    if args.fit_seeds:  # the section says first that its seed is no held-out reading
        info.insert(0, seed_note[0].upper() + seed_note[1:] + ".")
    if args.replicas:
        info.append(f"Each of the {args.replicas} replicas has this KV budget; "
                    f"--replica-policy {args.replica_policy}.")
        if "ray-default" in args.replica_routers:
            info.append(ray_default_text())
    if args.idle_spinners:
        ncpu = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        info.append(f"One SCHED_IDLE busy loop per CPU of its affinity ({ncpu or 'n/a'}) ran "
                    "beside every arm (--idle-spinners).")
    rounds: list[dict[str, dict[str, Any]]] = []
    records: dict[str, list[StepRecord]] = {a.name: [] for a in systems}
    spinners = IdleSpinners() if args.idle_spinners else contextlib.nullcontext()
    # SIGTERM unwinds like Ctrl-C: the servers, the spinners and the directory are cleaned up.
    with sigterm_exits(), tempfile.TemporaryDirectory(prefix="agent-replay-") as tmp, spinners:
        for rnd, arm in run_order(systems, args.repeat):
            if rnd == len(rounds):
                rounds.append({})
            t = time.perf_counter()
            res = replay(args, sessions, arm, kv_bytes, Path(tmp))
            for r in res.records:
                r.round = rnd
            records[arm.name] += res.records
            rounds[rnd][arm.name] = summarize(res, ws["shared_prefix_tokens"], args.block_size,
                                              sessions=len(sessions))
            lost = rounds[rnd][arm.name]["failed_sessions"]
            print(f"  round {rnd} {arm.name}: {rounds[rnd][arm.name]['prefill_tokens']:,} "
                  f"prefill tokens, task mean {rounds[rnd][arm.name]['task_time_mean_s']:.1f} "
                  f"s, {time.perf_counter() - t:.0f} s (load {os.getloadavg()[0]:.1f})"
                  + (f"; {lost} of {len(sessions)} sessions FAILED (not judged)" if lost
                     else ""), flush=True)
            cond = conditions_text(res.conditions)
            if cond:
                print(f"    over its replay: {cond}", flush=True)
    summary = {a.name: median_summary([r[a.name] for r in rounds]) for a in systems}
    load_end = [round(x, 2) for x in os.getloadavg()]
    print()
    print_table(summary)
    judged = comparisons(args, systems, rounds)
    lines = list(judged.pop("lines"))
    ratio, goal_5x, line = lru_graph_line(rounds, summary)
    if line is not None:
        lines.append(line)
    lines += ceiling_lines(sessions, summary)
    for line in lines:
        print(line)
    command = "python bench/agent_replay.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    refusal = write_refusal(summary)
    if args.write_results and refusal is not None:
        print(f"not writing bench/RESULTS.md: {refusal}", file=sys.stderr)
    elif args.write_results:
        body = results_body(command.strip(), host, load_end, info, summary, lines, args.repeat)
        write_section(RESULTS, title, body, WRITER, results_parent(args))
        print("wrote bench/RESULTS.md")
    if args.json:
        out = {
            "command": command.strip(),
            "machine": {**host, "loadavg_at_end": load_end},
            "config": vars(args),
            "fit_seeds_note": seed_note,  # None: the seed is held out
            "workload": {"sessions": len(sessions), "steps": num_steps,
                         "steps_per_session": [len(s.steps) for s in sessions],
                         "tool_pauses_s": [[st.tool_s for st in s.steps[:-1]]
                                           for s in sessions]},
            "working_set": {**ws, "kv_bytes_per_token": kv_per_token, "bytes": ws_bytes},
            "kv_budget": {"bytes": kv_bytes, "blocks": kv_blocks,
                          "tokens": kv_blocks * args.block_size,
                          "fraction_of_working_set": kv_bytes / ws_bytes},
            "policies": summary,
            "rounds": rounds,
            "prefill_ratio_lru_over_graph": ratio,
            "goal_5x_met": goal_5x,
            "comparisons": judged or None,
            "steps": {p: [asdict(r) for r in recs] for p, recs in records.items()},
        }
        Path(args.json).write_text(json.dumps(out, indent=1))
        print(f"wrote {args.json}")
    return 1 if refusal is not None else 0


def write_refusal(summary: dict[str, dict[str, Any]]) -> str | None:
    """Why this run's section must not be written (None: it may): an arm had errors or
    lost sessions in some round, so its mean TCT leaves failed tasks out."""
    bad = [f"{name} {s.get('failed_sessions', 0)} failed sessions, {s['errors']} errors"
           for name, s in summary.items() if s["errors"] or s.get("failed_sessions", 0)]
    if not bad:
        return None
    return ("an arm lost sessions, so its task times leave them out (" + "; ".join(bad)
            + " over the rounds); nothing is judged from this run")


def lru_graph_line(rounds: list[dict[str, dict[str, Any]]], summary: dict[str, dict[str, Any]]
                   ) -> tuple[float | None, bool | None, str | None]:
    """Issue 6's figure when lru and graph both ran: the median of the per-round ratios of
    lru's prefill tokens to graph's (each round's arms ran back to back), whether it meets
    the 5x goal (None: not judged, a session failed in either arm), and its line."""
    if "lru" not in summary or "graph" not in summary:
        return None, None, None
    per = paired(rounds, "lru", "graph", "prefill_tokens")
    if not per:
        return None, None, None
    ratio = statistics.median(per)
    failed = failed_sessions(rounds, "lru", "graph")
    met = None if failed else ratio >= 5
    verdict = (f"not judged: {failed} sessions failed" if failed
               else "met" if met else "not met")
    floor = summary["lru"]["floor_prefill_tokens"]
    bound = (f"{summary['lru']['prefill_tokens'] / floor:.2f}x" if floor else "n/a")
    per_text = "" if len(per) == 1 else f" (per round {', '.join(f'{v:.2f}' for v in per)})"
    return ratio, met, (
        f"prefill tokens lru/graph: {ratio:.2f}x{per_text} (goal >= 5x: {verdict}); floor of "
        f"an unbounded cache: {floor:,.0f} tokens, so lru/floor = {bound} bounds any "
        "policy's ratio")


def ceiling_lines(sessions, summary: dict[str, dict[str, Any]]) -> list[str]:
    """How much faster any engine could finish these tasks than the first arm (the baseline
    every goal is judged against): a task takes at least its tool pauses, so the baseline's
    mean TCT over the sessions' mean tool time bounds every TCT speed-up over it. A goal
    above that bound cannot be shown on this workload at this machine's speed. Then the
    pressure the baseline was under: its prefill tokens over the floor of a cache that never
    evicts (what a retention can at best remove)."""
    tool = sum(sum(st.tool_s for st in s.steps[:-1]) for s in sessions) / len(sessions)
    if not summary:
        return []
    name, base = next(iter(summary.items()))
    tct = base["task_time_mean_s"]
    out = []
    if tool > 0:
        out.append(f"ceiling: the tool pauses alone average {tool:.1f} s a task, so no engine "
                   f"can finish these tasks more than {tct / tool:.2f}x faster than {name} "
                   f"(mean TCT {tct:.1f} s)")
    floor = base.get("floor_prefill_tokens")
    if floor:
        out.append(f"pressure: {name} computed {base['prefill_tokens']:,.0f} prefill tokens, "
                   f"{base['prefill_tokens'] / floor:.2f}x the {floor:,.0f} of a cache that "
                   f"never evicts (its own requests' floor)")
    return out


if __name__ == "__main__":
    sys.exit(main())
