"""A sweep of the paged decode kernel's launch configuration on one GPU.

    python bench/decode_sweep.py [--json PATH] [--repeat 20] [--block-n 32,64,128]
        [--warps 2,4,8] [--stages 1,2,3] [--per-sm 2,4,8]

For each decode case (bench/kernels.py's Llama-3-8B shapes: 64 x 4096 and 1 x 32768, and
SmolLM2-135M's: 9 query and 3 KV heads of 64, 16 x 2048; bf16, blocks of 16 at shuffled
ids), every combination of BLOCK_N, num_warps, num_stages (`decode_config`) and the split-K
target of programs per SM (`_PROGRAMS_PER_SM`) is timed two ways and checked against the
default configuration's output:
  ms        as bench/kernels.py times (one call between two events, median, L2 flushed), which
            includes the host's Python and launch time where that outlasts the flush ahead;
  graph ms  the device's time alone (`kernels.graph_seconds`: calls replayed from a CUDA graph,
            L2 flushed before each, the flushes' own time taken off), as the engine's decode
            graphs run the kernel.
Also printed per case: `host us`, the host's time to issue one call of the default
configuration (no sync). Rows are ranked by graph ms on CUDA. Printed: per case, the
default's and the best five configurations' GB/s and % of peak (from graph ms where there is
one); configurations that fail to compile (shared memory) or disagree are listed as such.
`--cases` picks cases by name. `--bound N` passes the host bound `max_seq_len` = N (at
least the context), as a CUDA graph captured for `max_model_len` N does: the default row
with and without it shows what a graph's worst-case bound costs the kernel. Needs CUDA
(`--small`: a smoke test of tiny cases, under Triton's interpreter without CUDA).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import time
from pathlib import Path

import torch
from ascii_args import ascii_int, int_arg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import kernels as kbench  # noqa: E402  (bench/kernels.py)

import kvsaga.kernels as kernels  # noqa: E402

CASES = [  # name, batch, context, query heads, kv heads, head_dim
    ("llama8b_b64_4096", 64, 4096, 32, 8, 128),
    ("llama8b_b1_32768", 1, 32768, 32, 8, 128),
    ("smollm2_b16_2048", 16, 2048, 9, 3, 64),
]


def case_inputs(batch, seq_len, heads, kv_heads, head_dim, device):
    gen = torch.Generator().manual_seed(0)
    bs = 16
    nb = -(-seq_len // bs)
    kv = torch.randn(batch * nb, 2, bs, kv_heads, head_dim, device=device, dtype=torch.bfloat16)
    ids = torch.randperm(batch * nb, generator=gen).to(torch.int32).view(batch, nb).to(device)
    seq_lens = torch.full((batch,), seq_len, dtype=torch.int32, device=device)
    qsl = torch.arange(batch + 1, dtype=torch.int32, device=device)
    q = torch.randn(batch, heads, head_dim, device=device, dtype=torch.bfloat16)
    nbytes = (2 * batch * seq_len * kv_heads * head_dim + 2 * q.numel()) * 2
    return (q, kv[:, 0], kv[:, 1], ids, seq_lens, qsl, head_dim**-0.5), nbytes


def host_us(fn, device, calls: int = 50) -> float:
    """Microseconds the host takes to issue one fn() (no sync between calls)."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    host = (time.perf_counter() - t) / calls
    if device.type == "cuda":
        torch.cuda.synchronize()
    return host * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", help="write every reading here")
    ap.add_argument("--repeat", type=int_arg, default=20, help="timed runs per configuration")
    ap.add_argument("--block-n", default="32,64,128", help="BLOCK_N values")
    ap.add_argument("--warps", default="2,4,8", help="num_warps values")
    ap.add_argument("--stages", default="1,2,3", help="num_stages values")
    ap.add_argument("--per-sm", default="2,4,8", help="split-K programs per SM targets")
    ap.add_argument("--cases", default=",".join(c[0] for c in CASES),
                    help="comma-separated case names (default: all)")
    ap.add_argument("--bound", type=int_arg, default=0,
                    help="host bound max_seq_len passed to the kernel, as a CUDA graph's "
                    "max_model_len (0: each case's own context)")
    ap.add_argument("--small", action="store_true",
                    help="tiny cases; without CUDA under Triton's interpreter (a smoke test)")
    args = ap.parse_args()
    wanted = args.cases.split(",")
    unknown = sorted(set(wanted) - {c[0] for c in CASES})
    if unknown:
        ap.error(f"--cases: unknown {unknown}; known: {[c[0] for c in CASES]}")
    cases = [c for c in CASES if c[0] in wanted]
    if args.small:
        cases = [(c, min(b, 2), n // 64, h, kv, d) for c, b, n, h, kv, d in cases]
        if not torch.cuda.is_available():
            os.environ.update(KVSAGA_KERNELS="triton", TRITON_INTERPRET="1")
    elif not torch.cuda.is_available():
        sys.exit("bench/decode_sweep.py needs a CUDA device (--small runs without one)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from kvsaga.kernels import attention  # after TRITON_INTERPRET is settled
    name, peak = kbench.peak_gbps(device)
    ints = lambda text: [ascii_int(x) for x in text.split(",")]  # noqa: E731
    grid = list(itertools.product(ints(args.block_n), ints(args.warps), ints(args.stages),
                                  ints(args.per_sm)))
    default_config, default_per_sm = attention.decode_config, attention._PROGRAMS_PER_SM
    rows = []
    for case, batch, seq_len, heads, kv_heads, head_dim in cases:
        inputs, nbytes = case_inputs(batch, seq_len, heads, kv_heads, head_dim, device)
        bound = max(seq_len, args.bound)

        def run(inputs=inputs, bound=bound):
            return kernels.paged_attention(*inputs, max_query_len=1, max_seq_len=bound,
                                           validate=False)

        def timed(row, run=run, nbytes=nbytes):
            t = kbench.median_seconds(run, device, args.repeat)
            g = kbench.graph_seconds(run, device, args.repeat)
            best = g if g else t
            row.update(ms=t * 1e3, graph_ms=None if g is None else g * 1e3,
                       gbps=nbytes / best / 1e9)
            return row

        want = run()
        base = default_config(head_dim, torch.bfloat16)
        rows.append(timed(dict(case=case, config="default", block_n=base.BLOCK_N,
                               warps=base.num_warps, stages=base.num_stages,
                               per_sm=default_per_sm, host_us=host_us(run, device))))
        for block_n, warps, stages, per_sm in grid:
            cfg = dataclasses.replace(base, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
            attention.decode_config = lambda *_a, cfg=cfg: cfg
            attention._PROGRAMS_PER_SM = per_sm
            row = dict(case=case, config="sweep", block_n=block_n, warps=warps, stages=stages,
                       per_sm=per_sm)
            try:
                got = run()
                torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
                timed(row)
            except Exception as e:  # noqa: BLE001  (compile failures are readings too)
                row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            finally:
                attention.decode_config = default_config
                attention._PROGRAMS_PER_SM = default_per_sm
            rows.append(row)
    for r in rows:
        if "gbps" in r:
            r["pct_peak"] = 100 * r["gbps"] / peak if peak else None
    note = f", host bound max_seq_len {args.bound}" if args.bound else ""
    print(f"# decode sweep on {name} (peak {peak} GB/s), torch {torch.__version__}{note}")
    for case, *_ in cases:
        mine = [r for r in rows if r["case"] == case]
        ok = sorted((r for r in mine if "gbps" in r and r["config"] == "sweep"),
                    key=lambda r: r["graph_ms"] if r["graph_ms"] is not None else r["ms"])
        print(f"\n## {case} (host us a call, default: {mine[0]['host_us']:.1f})\n\n"
              "| config | BLOCK_N | warps | stages | per SM | ms | graph ms | GB/s | % peak |"
              "\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in [mine[0], *ok[:5]]:
            pct = f"{r['pct_peak']:.1f}" if r.get("pct_peak") is not None else "-"
            gms = f"{r['graph_ms']:.4f}" if r.get("graph_ms") is not None else "-"
            print(f"| {r['config']} | {r['block_n']} | {r['warps']} | {r['stages']} | "
                  f"{r['per_sm']} | {r['ms']:.4f} | {gms} | {r['gbps']:.0f} | {pct} |")
        bad = [r for r in mine if "error" in r]
        if bad:
            print(f"\n{len(bad)} configurations failed: " + "; ".join(
                f"{r['block_n']}/{r['warps']}/{r['stages']}/{r['per_sm']}: {r['error']}"
                for r in bad[:6]))
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": name, "peak_gbps": peak, "bound": args.bound,
                                               "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
