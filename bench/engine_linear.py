"""fp32 linear layers on CPU: torch's F.linear (MKL sgemm) against `kvsaga.engine.cpu_linear`
(oneDNN, or the small GEMM for up to SMALL_ROWS rows, both on the plain weight), for every
projection of a model's layer and its LM head, at prefill and decode row counts; and, with
`--step`, oneDNN against kvsaga's small-rows GEMM (csrc/small_gemm.cpp) over a whole decode
step's linears.

    python bench/engine_linear.py [--model PATH] [--threads 1] [--rows 1 16 256 1024]
        [--repeat 5]
    python bench/engine_linear.py --step [--rows 1 3 8 16] [--threads 1] [--repeat 5]
    python bench/engine_linear.py --modes [--rows 1 8 16 64 256] [--threads 1] [--repeat 5]
        [--shapes model|llama3-8b-layer]

Prints CPU milliseconds per call (process time, the best of `--repeat`; on a shared machine
wall time mostly measures waiting for a core) and the ratio F.linear / cpu_linear. Shapes come
from the model's config (default SmolLM2-135M-Instruct); weights are random (speed does not
depend on their values). `--step`: one pass over every layer's four projections and the LM
head, each layer its own weights (so, as in a decode step, each weight comes from memory,
not from a cache a repeated call would leave it in), through oneDNN (`SMALL_ROWS` 0) and
through the small GEMM, the two alternating every repeat; prints each pass's median wall
and process-CPU ms and small / oneDNN. `--modes`: the same pass with the weights held once
against packed (`cpu_linear.weights_mode`), the two alternating every repeat; prints once /
packed (wall and CPU, the median pass), the lowest and highest of the repeats' CPU ratios,
and each projection's CPU ratio; `--shapes llama3-8b-layer` takes one Llama-3-8B layer's
four projections (832 MiB) instead of the model's.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from ascii_args import int_arg

from kvsaga.engine import cpu_linear
from kvsaga.engine.loader import default_model_path
from kvsaga.engine.weights import open_checkpoint


def cpu_ms(fn, repeat: int) -> float:
    """Best process time of `repeat` calls after one warm-up, in ms."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        fn()
        best = min(best, time.process_time() - t)
    return best * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", help="HF directory or .gguf (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--threads", type=int_arg, default=1, help="torch intra-op threads")
    ap.add_argument("--rows", type=int_arg, nargs="+", default=[1, 16, 256, 1024],
                    help="row counts (tokens a call) to time")
    ap.add_argument("--repeat", type=int_arg, default=5,
                    help="timed calls (--step, --modes: passes); the best, or the median "
                    "pass, is reported")
    ap.add_argument("--step", action="store_true",
                    help="a decode step's linears: oneDNN against the small-rows GEMM")
    ap.add_argument("--modes", action="store_true",
                    help="a step's linears with the weights held once against packed")
    ap.add_argument("--shapes", choices=("model", "llama3-8b-layer"), default="model",
                    help="--modes: the model's layers and LM head (default), or one "
                         "Llama-3-8B layer's projections")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c = open_checkpoint(args.model or default_model_path()).config
    if args.step:
        return step(c, args)
    if args.modes:
        return modes(c, args)
    shapes = {
        "qkv": (c.q_size + 2 * c.kv_size, c.hidden_size),
        "o": (c.hidden_size, c.q_size),
        "gate_up": (2 * c.intermediate_size, c.hidden_size),
        "down": (c.hidden_size, c.intermediate_size),
        "lm_head": (c.vocab_size, c.hidden_size),
    }
    print(f"{args.threads} thread(s); CPU ms per call, best of {args.repeat}")
    print("| rows | weight | F.linear | cpu_linear | ratio |\n|---:|---|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    for rows in args.rows:
        layer = {"F": 0.0, "packed": 0.0}
        for name, (n, k) in shapes.items():
            w = torch.randn(n, k, generator=gen) * 0.02
            x = torch.randn(rows, k, generator=gen)
            packed = cpu_linear.pack(w)
            if packed is None:
                raise SystemExit("this torch has no usable oneDNN linear: nothing to compare")
            f_ms = cpu_ms(lambda: F.linear(x, w), args.repeat)  # noqa: B023
            p_ms = cpu_ms(lambda: cpu_linear.linear(x, w, None, packed), args.repeat)  # noqa: B023
            print(f"| {rows} | {name} {n}x{k} | {f_ms:.2f} | {p_ms:.2f} | {f_ms / p_ms:.2f}x |")
            if name != "lm_head":
                layer["F"] += f_ms
                layer["packed"] += p_ms
        print(f"| {rows} | one layer's 4 | {layer['F']:.2f} | {layer['packed']:.2f} | "
              f"{layer['F'] / layer['packed']:.2f}x |")


def step(c, args) -> None:
    """One decode step's linears, every layer's own weights, oneDNN against the small GEMM."""
    if cpu_linear.ISA == 0:
        raise SystemExit("no small-GEMM tiles on this CPU (or kvsaga._small_gemm not built)")
    gen = torch.Generator().manual_seed(0)
    shapes = [(c.q_size + 2 * c.kv_size, c.hidden_size), (c.hidden_size, c.q_size),
              (2 * c.intermediate_size, c.hidden_size), (c.hidden_size, c.intermediate_size)]
    weights = [(w, cpu_linear.pack(w)) for _ in range(c.num_layers)
               for w in (torch.randn(n, k, generator=gen) * 0.02 for n, k in shapes)]
    head = torch.randn(c.vocab_size, c.hidden_size, generator=gen) * 0.02
    weights.append((head, cpu_linear.pack(head)))
    if any(p is None or not (p.small and p.onednn) for _, p in weights):
        raise SystemExit("a weight was not checked for both paths")
    mib = sum(w.numel() for w, _ in weights) * 4 / 2**20
    print(f"{args.threads} thread(s); one pass = {len(weights)} linears, {mib:.0f} MiB of "
          f"weights; ms per pass, the median of {args.repeat} (wall / process CPU)")
    print("| rows | oneDNN | small GEMM | small / oneDNN wall | small / oneDNN CPU |\n"
          "|---:|---:|---:|---:|---:|")
    small_rows = cpu_linear.SMALL_ROWS
    for rows in args.rows:
        xs = {k: torch.randn(rows, k, generator=gen) for k in {k for _, k in shapes}}
        times: dict[str, list[tuple[float, float]]] = {"onednn": [], "small": []}
        for rep in range(args.repeat + 1):
            for arm in (("onednn", "small") if rep % 2 else ("small", "onednn")):
                cpu_linear.SMALL_ROWS = small_rows if arm == "small" else 0
                w0, c0 = time.perf_counter(), time.process_time()
                for w, p in weights:
                    cpu_linear.linear(xs[w.shape[1]], w, None, p)
                if rep:  # the first pass warms up
                    times[arm].append(((time.perf_counter() - w0) * 1e3,
                                       (time.process_time() - c0) * 1e3))
        cpu_linear.SMALL_ROWS = small_rows
        med = {a: [statistics.median(t[i] for t in v) for i in (0, 1)] for a, v in times.items()}
        print(f"| {rows} | {med['onednn'][0]:.2f} / {med['onednn'][1]:.2f} | "
              f"{med['small'][0]:.2f} / {med['small'][1]:.2f} | "
              f"{med['small'][0] / med['onednn'][0]:.2f}x | "
              f"{med['small'][1] / med['onednn'][1]:.2f}x |")


# One Llama-3-8B layer's projections (hidden 4,096, 32 query and 8 KV heads of 128,
# intermediate 14,336): the decode shapes of a model too large to pack by default.
LLAMA3_8B_LAYER = [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096),
                   ("down", 4096, 14336)]


def modes(c, args) -> None:
    """A step's linears (every layer's own weights) held once against packed; per
    projection, the CPU ratio of its calls."""
    gen = torch.Generator().manual_seed(0)
    if args.shapes == "llama3-8b-layer":
        named = [(name, n, k) for name, n, k in LLAMA3_8B_LAYER]
        what = "one Llama-3-8B layer's 4 projections"
    else:
        named = [(name, n, k) for _ in range(c.num_layers) for name, n, k in (
            ("qkv", c.q_size + 2 * c.kv_size, c.hidden_size), ("o", c.hidden_size, c.q_size),
            ("gate_up", 2 * c.intermediate_size, c.hidden_size),
            ("down", c.hidden_size, c.intermediate_size))]
        named.append(("lm_head", c.vocab_size, c.hidden_size))
        what = f"{len(named)} linears"
    names = list(dict.fromkeys(name for name, _, _ in named))
    ws = [(name, torch.randn(n, k, generator=gen) * 0.02) for name, n, k in named]
    arms = {m: [(name, w, cpu_linear.pack(w, None, m)) for name, w in ws]
            for m in ("once", "packed")}
    if any(p is None for arm in arms.values() for _, _, p in arm):
        raise SystemExit("a weight was not checked")
    mib = sum(w.numel() for _, w in ws) * 4 / 2**20
    print(f"{args.threads} thread(s); one pass = {what}, {mib:.0f} MiB; ms per pass, the "
          f"median of {args.repeat} (wall / process CPU); SMALL_ROWS {cpu_linear.SMALL_ROWS}; "
          "range: the repeats' once / packed CPU, lowest-highest")
    print("| rows | packed | once | once / packed wall | once / packed CPU | range | "
          + " | ".join(f"{n} CPU" for n in names) + " |\n|---:|---:|---:|---:|---:|---:|"
          + "---:|" * len(names))
    for rows in args.rows:
        xs = {k: torch.randn(rows, k, generator=gen) for k in {w.shape[1] for _, w in ws}}
        times: dict[str, list[tuple[float, float]]] = {"once": [], "packed": []}
        parts: dict[str, list[dict[str, float]]] = {"once": [], "packed": []}
        for rep in range(args.repeat + 1):
            for arm in (("once", "packed") if rep % 2 else ("packed", "once")):
                part = dict.fromkeys(names, 0.0)
                w0, c0 = time.perf_counter(), time.process_time()
                for name, w, p in arms[arm]:
                    t0 = time.process_time()
                    cpu_linear.linear(xs[w.shape[1]], w, None, p)
                    part[name] += time.process_time() - t0
                if rep:  # the first pass warms up
                    times[arm].append(((time.perf_counter() - w0) * 1e3,
                                       (time.process_time() - c0) * 1e3))
                    parts[arm].append(part)
        med = {a: [statistics.median(t[i] for t in v) for i in (0, 1)] for a, v in times.items()}
        ratios = [o[1] / p[1] for o, p in zip(times["once"], times["packed"], strict=True)]
        per = [statistics.median(d[n] for d in parts["once"])
               / statistics.median(d[n] for d in parts["packed"]) for n in names]
        print(f"| {rows} | {med['packed'][0]:.1f} / {med['packed'][1]:.1f} | "
              f"{med['once'][0]:.1f} / {med['once'][1]:.1f} | "
              f"{med['once'][0] / med['packed'][0]:.2f}x | "
              f"{med['once'][1] / med['packed'][1]:.2f}x | "
              f"{min(ratios):.2f}-{max(ratios):.2f} | "
              + " | ".join(f"{r:.2f}x" for r in per) + " |")


if __name__ == "__main__":
    main()
