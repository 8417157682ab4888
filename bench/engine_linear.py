"""fp32 linear layers on CPU: torch's F.linear (MKL sgemm) against oneDNN with the weight
packed once (`kvsaga.engine.cpu_linear`), for every projection of a model's layer and its LM
head, at prefill and decode row counts.

    python bench/engine_linear.py [--model PATH] [--threads 1] [--rows 1 16 256 1024]
        [--repeat 5]

Prints CPU milliseconds per call (process time, the best of `--repeat`; on a shared machine
wall time mostly measures waiting for a core) and the ratio F.linear / packed. Shapes come
from the model's config (default SmolLM2-135M-Instruct); weights are random (speed does not
depend on their values).
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

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
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 16, 256, 1024])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    c = open_checkpoint(args.model or default_model_path()).config
    shapes = {
        "qkv": (c.q_size + 2 * c.kv_size, c.hidden_size),
        "o": (c.hidden_size, c.q_size),
        "gate_up": (2 * c.intermediate_size, c.hidden_size),
        "down": (c.hidden_size, c.intermediate_size),
        "lm_head": (c.vocab_size, c.hidden_size),
    }
    print(f"{args.threads} thread(s); CPU ms per call, best of {args.repeat}")
    print("| rows | weight | F.linear | oneDNN packed | ratio |\n|---:|---|---:|---:|---:|")
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


if __name__ == "__main__":
    main()
