"""Decode-step wall time with `KVSAGA_CPU_SERIAL_BELOW` at its default and at other values,
side by side in one run.

    python bench/serial_below_ab.py [--values default,8388608] [--seqs 1,2,16] [--context 1000]
        [--steps 40] [--repeat 3] [--threads 2]

Each (value, seqs) case runs in a fresh process (the variable is read at model load), with
`OMP_WAIT_POLICY=PASSIVE` as kvsaga-serve runs: `--seqs` greedy requests of `--context`
random prompt tokens in one `LLMEngine` (the default SmolLM2-135M, fp32, blocks of 32),
a few warm-up steps after their prefill, then `--steps` decode steps timed one by one.
Repeats alternate the values' order, so load from other jobs falls on every arm; printed:
each case's median step (ms) over repeats of the per-run medians, the ratio to the first
value, and the load average before and after.

Why: small decode-pass ops on the engine thread alone cut OpenMP wake-ups (a loaded host
gained, docs/engine_profiles.md "Fewer wake-ups a decode step"), but on an idle second core
that core's work is lost; this measures which wins on the host at hand. The default is 0
since session 38; 8388608 is what `kvsaga-serve --cpu-host shared` sets.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

from ascii_args import ascii_int, int_arg

_CHILD = r"""
import json, random, statistics, sys, time
import torch
from kvsaga.engine.engine import LLMEngine
from kvsaga.engine.sampling import SamplingParams
seqs, context, steps, threads = map(int, sys.argv[1:5])
torch.set_num_threads(threads)
engine = LLMEngine(None, progress=False, kv_memory_bytes=256 << 20, block_size=32)
rng = random.Random(0)
params = SamplingParams(max_tokens=steps + seqs + 8, temperature=0.0, ignore_eos=True)
for _ in range(seqs):
    engine.add_request([rng.randrange(100, 40000) for _ in range(context)], params)
for _ in range(seqs + 5):
    engine.step()
times = []
for _ in range(steps):
    t = time.perf_counter()
    engine.step()
    times.append(time.perf_counter() - t)
kinds = engine.stats().step_times.steps
print(json.dumps({"median_s": statistics.median(times), "steps": kinds}))
"""


def _csv_ints(text: str, name: str) -> list[int]:
    try:
        out = [ascii_int(x) for x in text.split(",")]
    except ValueError:
        raise SystemExit(f"--{name} must be comma-separated integers, got {text!r}") from None
    if not out or min(out) < 1:
        raise SystemExit(f"--{name} values must be >= 1, got {text!r}")
    return out


def _run(value: str, seqs: int, args: argparse.Namespace) -> float:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    env.pop("KVSAGA_CPU_SERIAL_BELOW", None)
    if value != "default":
        env["KVSAGA_CPU_SERIAL_BELOW"] = value
    cmd = [sys.executable, "-c", _CHILD, str(seqs), str(args.context), str(args.steps),
           str(args.threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"value {value}, {seqs} seqs failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])["median_s"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", default="default,8388608",
                    help="KVSAGA_CPU_SERIAL_BELOW values (bytes, or 'default': unset), the "
                         "first is the reference of the ratios")
    ap.add_argument("--seqs", default="1,2,16", help="decode batch sizes")
    ap.add_argument("--context", type=int_arg, default=1000, help="prompt tokens a request")
    ap.add_argument("--steps", type=int_arg, default=40, help="decode steps timed a run")
    ap.add_argument("--repeat", type=int_arg, default=3, help="runs of every case")
    ap.add_argument("--threads", type=int_arg, default=2, help="torch threads")
    args = ap.parse_args(argv)
    values = args.values.split(",")
    for v in values:
        if v != "default" and not (v.isascii() and v.isdigit()):  # "²" passes isdigit
            raise SystemExit(f"--values: {v!r} is neither 'default' nor a byte count")
    seqs = _csv_ints(args.seqs, "seqs")
    for name in ("context", "steps", "repeat", "threads"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name} must be >= 1, got {getattr(args, name)}")
    load0 = os.getloadavg()
    runs: dict[tuple[str, int], list[float]] = {(v, s): [] for v in values for s in seqs}
    for r in range(args.repeat):
        order = values if r % 2 == 0 else values[::-1]
        for v in order:
            for s in seqs:
                runs[v, s].append(_run(v, s, args))
                print(f"  repeat {r + 1}/{args.repeat}: value {v}, {s} seqs: "
                      f"{runs[v, s][-1] * 1e3:.1f} ms", file=sys.stderr, flush=True)
    load1 = os.getloadavg()
    print(f"decode step, median of {args.repeat} runs' medians ({args.steps} steps, context "
          f"{args.context}, {args.threads} threads); load average {load0[0]:.2f} before, "
          f"{load1[0]:.2f} after\n")
    ref = values[0]
    print("| seqs | " + " | ".join(f"{v} (ms)" for v in values) + " | "
          + " | ".join(f"{ref} / {v}" for v in values[1:]) + " |")
    print("|---:|" + "---:|" * (2 * len(values) - 1))
    for s in seqs:
        med = {v: statistics.median(runs[v, s]) for v in values}
        print(f"| {s} | " + " | ".join(f"{med[v] * 1e3:.1f}" for v in values) + " | "
              + " | ".join(f"{med[ref] / med[v]:.2f}x" for v in values[1:]) + " |")


if __name__ == "__main__":
    main()
