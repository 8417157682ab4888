"""Throughput of the KV kernels, as GB/s and as a share of the card's memory bandwidth.

    python bench/kernels.py [--json PATH] [--small] [--repeat N] [--only NAME] [--interpret]

Cases (Llama-3-8B shapes: 32 query heads, 8 KV heads, head_dim 128, bf16, block size 16):
  decode_b64_4k     paged decode attention, 64 sequences of 4096 tokens
  decode_b1_32k     paged decode attention, 1 sequence of 32768 tokens (split-K)
  extend_512_16k    512 new tokens over 16384 cached (causal, prefix + new)
  cache_write       8192 tokens' K and V of one layer into shuffled slots
  block_copy        128 whole blocks (32 layers, 2 MiB each) to other blocks of the tier
  gather_blocks     128 blocks into a contiguous staging buffer (the host-offload path)
  scatter_blocks    and back
Each runs as `triton` (CUDA only, or under the interpreter with --interpret) and
`reference` (the torch reference); attention also as `sdpa_dense`,
torch.nn.functional.scaled_dot_product_attention on the same K/V laid out densely.

Bytes are those the operation must move at least: attention reads every context token's K
and V once (plus Q and O); copies read and write each byte once. GB/s = bytes / median
time; "% peak" divides by the card's memory bandwidth from PEAK_GBPS (by device name).
On CPU (or with --small) the shapes shrink (contexts / 8, fewer layers) so the script
runs in seconds and never rots; those figures measure the references only.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from ascii_args import int_arg

import kvsaga.kernels as kernels
from kvsaga.kernels import reference
from kvsaga.kernels.args import CacheWriteArgs, PagedAttentionArgs

# Memory bandwidth in GB/s by a substring of torch.cuda.get_device_name(); first match wins,
# so "GH200" (which contains "H200") comes first, and its 144 GB part before it.
PEAK_GBPS = [
    # "NVIDIA GH200 144G HBM3e": up to 4.9 TB/s (NVIDIA's GH200 Grace Hopper Superchip
    # datasheet); the 96 GB HBM3 GH200 4 TB/s.
    ("GH200 144G", 4900.0),
    ("GH200", 4000.0),
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB parts
    ("L40S", 864.0),
    ("L4", 300.0),
    ("A10G", 600.0),
    ("RTX 4090", 1008.0),
]

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 32, 8, 128, 16
DTYPE = torch.bfloat16


@dataclass(frozen=True)
class Shapes:
    decode_batch: int
    decode_len: int
    long_len: int
    extend_new: int
    extend_cached: int
    write_tokens: int
    copy_blocks: int
    copy_layers: int


FULL = Shapes(64, 4096, 32768, 512, 16384, 8192, 128, 32)
SMALL = Shapes(8, 512, 4096, 64, 2048, 1024, 16, 4)


def peak_gbps(device: torch.device) -> tuple[str, float | None]:
    if device.type != "cuda":
        return f"{platform.processor() or platform.machine()} CPU", None
    name = torch.cuda.get_device_name(device)
    return name, next((bw for key, bw in PEAK_GBPS if key in name), None)


WARMUP_S = 0.2  # CUDA: calls before timing, at least this long (the clocks ramp up)


def median_seconds(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median time of fn() over `repeat` runs after warm-up; on CUDA, with L2 flushed.

    On CUDA the warm-up lasts at least `WARMUP_S`. Two calls of a 60 us kernel are not
    enough for an idle card's clocks to ramp up. With only those, bench/decode_sweep.py's
    readings of such a kernel scattered up to 2.5x between neighbouring configurations
    (bench/RESULTS.md, "First GPU lent")."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
        end = time.perf_counter() + WARMUP_S
        while time.perf_counter() < end:
            for _ in range(8):
                fn()
            torch.cuda.synchronize()
    times = []
    if device.type == "cuda":
        flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
        for _ in range(repeat):
            flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
    else:
        for _ in range(repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def graph_seconds(fn: Callable[[], object], device: torch.device, repeat: int,
                  calls: int = 10) -> float | None:
    """Device time of one fn() call, host excluded: the median over `repeat` replays of a
    CUDA graph holding `calls` calls, each after an L2 flush, less the same graph's flushes
    alone. None off CUDA (or where fn cannot be captured).

    `median_seconds` times a call between two events, so a call whose Python and launch cost
    outlasts the L2 flush ahead of it reads the host's time, not the kernel's; for a
    50-150 us kernel that is the difference between the two. A replay launches everything at
    once, as the engine's decode graphs do."""
    if device.type != "cuda":
        return None
    flush = torch.empty(2 * _l2_bytes(device), dtype=torch.uint8, device=device)
    fn()
    torch.cuda.synchronize()
    graphs = []
    try:
        for with_fn in (True, False):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(calls):
                    flush.zero_()
                    if with_fn:
                        fn()
            graphs.append(g)
    except RuntimeError:
        return None
    end = time.perf_counter() + WARMUP_S
    while time.perf_counter() < end:
        graphs[0].replay()
        torch.cuda.synchronize()
    readings = []
    for g in graphs:
        times = []
        for _ in range(repeat):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            g.replay()
            stop.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
        readings.append(statistics.median(times))
    return max(0.0, readings[0] - readings[1]) / calls


def _l2_bytes(device: torch.device) -> int:
    props = torch.cuda.get_device_properties(device)
    return getattr(props, "L2_cache_size", 0) or 64 * 2**20


def _paged(seq_lens: list[int], device: torch.device, num_layers: int = 2, seed: int = 0):
    """A tier tensor holding the sequences at shuffled blocks; returns layer 1's views."""
    gen = torch.Generator().manual_seed(seed)
    blocks_per_seq = [-(-n // BLOCK_SIZE) for n in seq_lens]
    num_blocks = sum(blocks_per_seq)
    kv = torch.randn(num_blocks, num_layers, 2, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device=device,
                     dtype=DTYPE)
    ids = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    tables = torch.zeros(len(seq_lens), max(blocks_per_seq), dtype=torch.int32)
    used = 0
    for i, nb in enumerate(blocks_per_seq):
        tables[i, :nb] = ids[used : used + nb]
        used += nb
    return kv, kv[:, 1, 0], kv[:, 1, 1], tables.to(device)


def _dense_kv(k_cache, tables, seq_len: int) -> torch.Tensor:
    """[batch, kv_heads, seq_len, head_dim] contiguous copy of the paged K or V."""
    nb = -(-seq_len // BLOCK_SIZE)
    x = k_cache[tables[:, :nb].long()].flatten(1, 2)[:, :seq_len]
    return x.transpose(1, 2).contiguous()


def _sdpa(q, k, v, mask=None):
    try:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                                                enable_gqa=True)
    except (TypeError, RuntimeError):  # torch without enable_gqa for this backend
        g = q.shape[1] // k.shape[1]
        return torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(g, 1), v.repeat_interleave(g, 1), attn_mask=mask
        )


def attention_case(name, batch, seq_len, q_len, device, impls, repeat) -> list[dict]:
    kv, k_cache, v_cache, tables = _paged([seq_len] * batch, device)
    seq_lens = torch.full((batch,), seq_len, dtype=torch.int32, device=device)
    qsl = torch.arange(0, batch + 1, dtype=torch.int32, device=device) * q_len
    query = torch.randn(batch * q_len, HEADS, HEAD_DIM, device=device, dtype=DTYPE)
    out = torch.empty_like(query)
    scale = HEAD_DIM**-0.5
    args = (query, k_cache, v_cache, tables, seq_lens, qsl, scale)
    item = DTYPE.itemsize
    nbytes = (2 * batch * seq_len * KV_HEADS * HEAD_DIM + 2 * query.numel()) * item
    # 2 matmuls x 2 flops per multiply-add over the causal (prefix + triangle) region.
    attended = batch * (q_len * (seq_len - q_len) + q_len * (q_len + 1) // 2)
    flops = 4 * HEADS * HEAD_DIM * attended
    fns: dict[str, Callable[[], object]] = {}
    if "triton" in impls:
        fns["triton"] = lambda: kernels.paged_attention(
            *args, max_query_len=q_len, max_seq_len=seq_len, out=out, validate=False
        )
    fns["reference"] = lambda: reference.paged_attention(PagedAttentionArgs(*args), out)
    k = _dense_kv(k_cache, tables, seq_len)
    v = _dense_kv(v_cache, tables, seq_len)
    q = query.view(batch, q_len, HEADS, HEAD_DIM).transpose(1, 2)
    mask = None
    if q_len > 1:
        q_pos = torch.arange(seq_len - q_len, seq_len, device=device)
        mask = torch.arange(seq_len, device=device)[None, :] <= q_pos[:, None]
    fns["sdpa_dense"] = lambda: _sdpa(q, k, v, mask)
    rows = []
    for impl, fn in fns.items():
        s = median_seconds(fn, device, repeat)
        rows.append(dict(case=name, impl=impl, ms=s * 1e3, bytes=nbytes, tflops=flops / s / 1e12))
    del kv
    return rows


def cache_write_case(n_tokens, device, impls, repeat) -> list[dict]:
    num_blocks = -(-2 * n_tokens // BLOCK_SIZE)
    kv = torch.zeros(num_blocks, 2, 2, BLOCK_SIZE, KV_HEADS, HEAD_DIM, device=device, dtype=DTYPE)
    key = torch.randn(n_tokens, KV_HEADS, HEAD_DIM, device=device, dtype=DTYPE)
    value = torch.randn_like(key)
    slots = torch.randperm(num_blocks * BLOCK_SIZE, device=device)[:n_tokens]
    args = (key, value, kv[:, 1, 0], kv[:, 1, 1], slots)
    nbytes = 2 * 2 * key.numel() * DTYPE.itemsize  # K and V, read and written
    fns = {"reference": lambda: reference.cache_write(CacheWriteArgs(*args))}
    if "triton" in impls:
        fns = {"triton": lambda: kernels.cache_write(*args, validate=False), **fns}
    return [dict(case="cache_write", impl=i, ms=median_seconds(f, device, repeat) * 1e3,
                 bytes=nbytes) for i, f in fns.items()]


def copy_cases(n_blocks, num_layers, device, impls, repeat) -> list[dict]:
    kv = torch.zeros(2 * n_blocks + 8, num_layers, 2, BLOCK_SIZE, KV_HEADS, HEAD_DIM,
                     device=device, dtype=DTYPE)
    perm = torch.randperm(kv.shape[0], device=device)
    src, dst = perm[:n_blocks], perm[n_blocks : 2 * n_blocks]
    staging = torch.empty(n_blocks, *kv.shape[1:], device=device, dtype=DTYPE)
    nbytes = 2 * staging.numel() * DTYPE.itemsize  # read and write each byte
    ops = {
        "block_copy": (lambda m: lambda: m.block_copy(kv, src, dst)),
        "gather_blocks": (lambda m: lambda: m.gather_blocks(kv, src, staging)),
        "scatter_blocks": (lambda m: lambda: m.scatter_blocks(staging, kv, dst)),
    }
    rows = []
    for name, make in ops.items():
        impl_fns = {"reference": make(reference)}
        if "triton" in impls:
            impl_fns = {"triton": make(_Unchecked), **impl_fns}
        for impl, fn in impl_fns.items():
            s = median_seconds(fn, device, repeat)
            rows.append(dict(case=name, impl=impl, ms=s * 1e3, bytes=nbytes))
    return rows


class _Unchecked:
    """kvsaga.kernels' block copies without the value checks (no host sync)."""

    @staticmethod
    def block_copy(kv, src, dst):
        kernels.block_copy(kv, src, dst, validate=False)

    @staticmethod
    def gather_blocks(kv, ids, out):
        return kernels.gather_blocks(kv, ids, out, validate=False)

    @staticmethod
    def scatter_blocks(staging, kv, ids):
        kernels.scatter_blocks(staging, kv, ids, validate=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--small", action="store_true", help="scaled-down shapes (CPU default)")
    parser.add_argument("--repeat", type=int_arg, default=None, help="timed runs per row")
    parser.add_argument("--only", default="", help="only cases whose name contains this")
    parser.add_argument("--interpret", action="store_true",
                        help="on CPU, also run the Triton kernels under the interpreter")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    small = args.small or device.type == "cpu"
    shapes = SMALL if small else FULL
    repeat = args.repeat or (20 if device.type == "cuda" else 3)
    impls = {"reference", "sdpa_dense"}
    if device.type == "cuda" or args.interpret:
        impls.add("triton")
        if device.type == "cpu":
            import os

            os.environ["KVSAGA_KERNELS"] = "triton"
    name, peak = peak_gbps(device)
    torch.manual_seed(0)

    def wanted(case: str) -> bool:
        return args.only in case

    rows: list[dict] = []
    sh = shapes
    if wanted(f"decode_b{sh.decode_batch}_{sh.decode_len}"):
        rows += attention_case(f"decode_b{sh.decode_batch}_{sh.decode_len}", sh.decode_batch,
                               sh.decode_len, 1, device, impls, repeat)
    if wanted(f"decode_b1_{sh.long_len}"):
        rows += attention_case(f"decode_b1_{sh.long_len}", 1, sh.long_len, 1, device, impls,
                               repeat)
    ext = f"extend_{sh.extend_new}_{sh.extend_cached}"
    if wanted(ext):
        rows += attention_case(ext, 1, sh.extend_cached + sh.extend_new, sh.extend_new, device,
                               impls, repeat)
    if wanted("cache_write"):
        rows += cache_write_case(sh.write_tokens, device, impls, repeat)
    if any(wanted(c) for c in ("block_copy", "gather_blocks", "scatter_blocks")):
        rows += [r for r in copy_cases(sh.copy_blocks, sh.copy_layers, device, impls, repeat)
                 if wanted(r["case"])]

    for r in rows:
        r["gbps"] = r["bytes"] / (r["ms"] / 1e3) / 1e9
        r["pct_peak"] = 100 * r["gbps"] / peak if peak else None
    print(f"device: {name}; peak {peak or '?'} GB/s; shapes: {'small' if small else 'full'}"
          f" ({sh}); {torch.__version__}; median of {repeat}")
    print(f"{'case':<22}{'impl':<12}{'ms':>10}{'MB':>10}{'GB/s':>10}{'% peak':>8}{'TFLOP/s':>9}")
    for r in rows:
        pct = f"{r['pct_peak']:.1f}" if r["pct_peak"] is not None else "-"
        tf = f"{r['tflops']:.2f}" if "tflops" in r else ""
        print(f"{r['case']:<22}{r['impl']:<12}{r['ms']:>10.3f}{r['bytes'] / 1e6:>10.1f}"
              f"{r['gbps']:>10.2f}{pct:>8}{tf:>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=name, peak_gbps=peak, small=small, shapes=sh.__dict__,
                           torch=torch.__version__, repeat=repeat, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
