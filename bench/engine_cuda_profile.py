"""Where a step's time goes on CUDA: host (Python, launches) against the GPU's own.

    python bench/engine_cuda_profile.py [--model PATH] [--arms eager,graphs] [--batch 1,16]
        [--mixed 0] [--steps 20] [--top 25] [--json PATH]

For each arm (`eager`: `enforce_eager=True`; `graphs`: decode and mixed passes replayed
from CUDA graphs, the default on CUDA; `decode-graphs`: only decode passes replayed
(`max_graph_tokens=0`), what session 30 measured; one engine at a time, `--kv-gib` of KV)
and each batch size, `--batch` greedy requests (bench/generate.py's "chat" prompts,
numbered) prefill in one `LLMEngine`, then `--steps` steps are timed three ways. With
`--mixed 0` (the default) they are decode steps. With `--mixed N` each timed step also
carries a fresh N-token prompt (random ids, one sampled token): the batch's decode rows
plus one prefill chunk, the shape of an agent step that prefills a tool's output; at most
`max_num_batched_tokens` (1,024) - batch tokens. `rows` is the mean sequences a timed step
held (below the batch where the KV budget holds fewer; +1 with `--mixed`):
  wall      milliseconds a step with a device sync after each (what a user waits);
  cprofile  cProfile over the same steps: the top `--top` functions by own time, so a host
            cost (a Python loop, a copy to the host that syncs, a Triton launcher) shows by name;
  torch     torch.profiler over 5 steps: kernels launched a step, the GPU's busy time a step
            (sum of kernel times) and the top ops by host time.
A graph arm records every shape before its timed steps (`capture_graphs`, what
kvsaga-serve's start-up does) and prints how long that took.
A step whose wall time is far above its GPU busy time is bound by the host. Without CUDA it
runs on CPU (the torch part then reads CPU ops only). `--model`: an HF directory or .gguf
(default: the installed SmolLM2-135M-Instruct; bench/gpu_check.py writes a random one of its
shape where that is not installed).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch
from ascii_args import ascii_int, int_arg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import _engine, _greedy, batch_prompts, sync  # noqa: E402


def _prefilled(llm, batch: int, max_tokens: int):
    """Add `batch` requests and step until each has its first token."""
    eng = llm.engine
    prompts = batch_prompts("chat", 16)  # longer ones would not fit the context
    room = eng.max_model_len - max_tokens - 1  # a small model's context may be short
    reqs = [eng.add_request(llm.tokenizer.encode(f"{i}: " + prompts[i % 16])[:room],
                            _greedy(max_tokens)) for i in range(batch)]
    while not all(r.output_ids for r in reqs):
        eng.step()
    return eng, reqs


class _Stepper:
    """One timed step: `eng.step()`, after adding a fresh `mixed`-token prompt (random ids,
    one greedy token) when `mixed` > 0. `one_pass` counts the prompts whose prefill and
    first token came in their own step (else a step split them: not the shape asked)."""

    def __init__(self, eng, mixed: int) -> None:
        self.eng, self.mixed, self.one_pass, self.added = eng, mixed, 0, 0
        self.gen = torch.Generator().manual_seed(mixed)
        self.vocab = eng.config.vocab_size

    def __call__(self) -> None:
        if not self.mixed:
            self.eng.step()
            return
        ids = torch.randint(3, self.vocab, (self.mixed,), generator=self.gen).tolist()
        req = self.eng.add_request(ids, _greedy(1))
        self.eng.step()
        self.added += 1
        self.one_pass += bool(req.output_ids)  # else its prefill runs on in the next step


def profile_batch(llm, device: str, batch: int, steps: int, top: int, mixed: int = 0) -> dict:
    eng, reqs = _prefilled(llm, batch, max_tokens=3 * steps + 20)
    step = _Stepper(eng, mixed)
    for _ in range(3):  # warm-up: the kernels' first launches (and graph captures)
        step()
    sync(device)
    step.one_pass = step.added = 0
    t0, rows = time.perf_counter(), 0
    for _ in range(steps):
        rows += eng.stats().num_running + (mixed > 0)
        step()
        sync(device)
    wall_ms = 1e3 * (time.perf_counter() - t0) / steps
    one_pass, added = step.one_pass, step.added

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    sync(device)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)

    acts = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    n = 5
    with torch.profiler.profile(activities=acts) as tp:
        for _ in range(n):
            step()
        sync(device)
    kernels = [e for e in tp.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    gpu_busy_ms = sum(e.device_time for e in kernels) / 1e3 / n  # device_time: us
    table = tp.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
    for r in reqs:  # the next batch starts on an empty engine
        eng.abort(r.request_id)
    while eng.has_unfinished():
        eng.step()
    return {"batch": batch, "mixed": mixed, "rows": rows / steps,
            "prompts_in_one_step": f"{one_pass}/{added}" if mixed else None,
            "wall_ms_per_step": wall_ms,
            "kernels_per_step": len(kernels) / n,
            "gpu_busy_ms_per_step": gpu_busy_ms, "cprofile": buf.getvalue(),
            "torch_ops": table}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="HF directory or .gguf (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu, cuda or cuda:N (default: cuda where available)")
    ap.add_argument("--dtype", default="bfloat16", help="model dtype (float32 on CPU)")
    ap.add_argument("--arms", default="eager,graphs",
                    help="eager, graphs and/or decode-graphs (the last two CUDA only)")
    ap.add_argument("--batch", default="1,16", help="comma-separated batch sizes")
    ap.add_argument("--kv-gib", type=int_arg, default=8, help="KV budget of each engine (GiB)")
    ap.add_argument("--steps", type=int_arg, default=20, help="steps timed per reading")
    ap.add_argument("--mixed", type=int_arg, default=0,
                    help="tokens of a fresh prompt each timed step carries (0: decode steps)")
    ap.add_argument("--top", type=int_arg, default=25, help="profile rows printed")
    ap.add_argument("--json", help="write the readings here")
    args = ap.parse_args()
    dtype = args.dtype if args.device == "cuda" else "float32"
    rows, captures = [], []
    for arm in args.arms.split(","):
        if arm not in ("eager", "graphs", "decode-graphs"):
            ap.error(f"--arms: unknown arm {arm!r} (eager, graphs, decode-graphs)")
        extra = {"max_graph_tokens": 0} if arm == "decode-graphs" else {}
        llm = _engine(args.device, args.model, dtype=dtype, kv_memory_bytes=args.kv_gib << 30,
                      enforce_eager=arm == "eager", **extra)
        runner = llm.engine.runner
        if runner.graphs is not None or runner.mixed is not None:
            # Every shape recorded before the timed steps, as kvsaga-serve's start-up does
            # (graph_capture="startup"): what that start-up costs, and no capture inside a
            # timed step.
            sync(args.device)
            t0 = time.perf_counter()
            done = runner.capture_graphs()
            sync(args.device)
            startup = {"arm": arm, "seconds": time.perf_counter() - t0, **done}
            captures.append(startup)
            print(f"== {arm}: every graph recorded at start-up in {startup['seconds']:.2f} s "
                  f"({', '.join(f'{n} {kind}' for kind, n in done.items()) or 'none'})")
        for b in (ascii_int(x) for x in args.batch.split(",")):
            r = profile_batch(llm, args.device, b, args.steps, args.top, args.mixed)
            r["arm"] = arm
            rows.append(r)
            shape = f", +{args.mixed}-token prompt" if args.mixed else ""
            print(f"== {arm}, batch {b}{shape} ({r['rows']:.0f} rows): "
                  f"{r['wall_ms_per_step']:.2f} ms a step (wall), "
                  f"{r['kernels_per_step']:.0f} kernels, GPU busy "
                  f"{r['gpu_busy_ms_per_step']:.2f} ms")
            if args.mixed:
                print(f"   prompts prefilled and sampled in their own step: "
                      f"{r['prompts_in_one_step']}")
            print(r["cprofile"])
            print(r["torch_ops"])
        graphs, mixed = llm.engine.runner.graphs, llm.engine.runner.mixed
        if graphs is not None:
            print(f"== {arm}: decode graphs captured for sizes {graphs.captured_sizes()}, "
                  f"{graphs.replays} decode passes replayed")
        if mixed is not None:
            print(f"== {arm}: mixed graphs captured for (tokens, rows) {mixed.captured()}, "
                  f"{mixed.replays} mixed passes replayed")
        del llm, graphs, mixed
        if args.device == "cuda":
            torch.cuda.empty_cache()
    print("\n| arm | batch | prompt tokens | rows | ms a step | kernels a step | GPU busy ms |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['arm']} | {r['batch']} | {r['mixed']} | {r['rows']:.0f} | "
              f"{r['wall_ms_per_step']:.2f} | {r['kernels_per_step']:.0f} | "
              f"{r['gpu_busy_ms_per_step']:.2f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "rows": rows,
                                               "startup_captures": captures}, indent=1))


if __name__ == "__main__":
    main()
