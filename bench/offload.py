"""Offload and load throughput of the TransferEngine, against a plain large copy.

    python bench/offload.py [--device cuda] [--json PATH]

For 16, 64 and 256 blocks of Llama-3-8B shape (32 layers x 8 KV heads x 128, bf16, 16
tokens: 2 MiB a block) and of SmolLM2-135M (30 x 3 x 64: 360 KiB a block), it times one
plan each way and reports GB/s and the share of a plain copy of the same bytes in one call
(CUDA: pinned host <-> device; CPU: memcpy), measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from ascii_args import int_arg

from kvsaga.config import KVSpec
from kvsaga.host_tier import TransferPlan
from kvsaga.offload import TransferEngine
from kvsaga.storage import KVStorage

SPECS = {
    "llama3-8b": KVSpec(32, 8, 128, "bfloat16", 16),
    "smollm2-135m": KVSpec(30, 3, 64, "bfloat16", 16),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeat: int) -> float:
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best


def measure(name, spec, te, gpu, host, n: int, dev, repeat: int) -> list[dict]:
    """One plan of `n` blocks each way against one plain copy of the same bytes."""
    ids = list(range(n))
    dst = ids[::-1]  # shuffled targets: the engine's case (blocks are not adjacent)
    nbytes = n * spec.bytes_per_block
    out_pairs, in_pairs = list(zip(ids, dst, strict=True)), list(zip(dst, ids, strict=True))

    def plain_out():
        host[:n].copy_(gpu[:n], non_blocking=True)

    def plain_in():
        gpu[:n].copy_(host[:n], non_blocking=True)

    def off():
        te.wait(te.submit(TransferPlan(out_pairs, [])))

    def load():
        te.wait(te.submit(TransferPlan([], in_pairs)))

    rows = []
    for way, fn, plain in (("offload", off, plain_out), ("load", load, plain_in)):
        t, tp = timed(fn, dev, repeat), timed(plain, dev, repeat)
        rows.append(
            {
                "kv": name,
                "blocks": n,
                "direction": way,
                "MiB": nbytes / 2**20,
                "GB/s": nbytes / t / 1e9,
                "plain_GB/s": nbytes / tp / 1e9,
                "share_of_plain": tp / t,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                    help="cpu, cuda or cuda:N (default: cuda where available)")
    ap.add_argument("--repeat", type=int_arg, default=5,
                    help="timed runs of each plan and copy; the best is reported")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args()
    dev = torch.device(args.device)
    rows = []
    for name, spec in SPECS.items():
        n_max = 256
        gpu = KVStorage(spec, n_max, dev).kv
        host = KVStorage(spec, n_max, "cpu", pin_memory=dev.type == "cuda").kv
        te = TransferEngine(gpu, host)
        for n in (16, 64, 256):
            rows += measure(name, spec, te, gpu, host, n, dev, args.repeat)
        te.wait_all()
    print(f"device: {torch.cuda.get_device_name(dev) if dev.type == 'cuda' else 'cpu'}")
    print(f"{'kv':<13} {'blocks':>6} {'dir':<8} {'MiB':>7} {'GB/s':>7} {'plain':>7} {'share':>6}")
    for r in rows:
        print(
            f"{r['kv']:<13} {r['blocks']:>6} {r['direction']:<8} {r['MiB']:>7.1f} "
            f"{r['GB/s']:>7.2f} {r['plain_GB/s']:>7.2f} {r['share_of_plain']:>6.0%}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": str(dev), "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
