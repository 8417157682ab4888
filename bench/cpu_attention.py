"""CPU time of one layer's decode-step KV work, each CPU path side by side in one run.

    python bench/cpu_attention.py [--repeat 300] [--block-size 32] [--layers 30]

The shapes of the 16-request chat batch's decode (issue 13; SmolLM2-135M: 3 KV heads, 3
query heads per KV head, head size 64, fp32): 16 sequences of 163 to 913 tokens, each
sequence's blocks shuffled in a tier of `--layers` layers, one layer's strided views. Rows:
- paged attention in the C++ kernel (kvsaga._paged_attn), its generic loops and its
  AVX-512 or AVX2 tiles (where the CPU has them), one thread: one layer called again and
  again (its K/V stay in the CPU's caches), and "every layer" (the calls go through the tier's
  layers in turn, as a decode step does, so K/V come from memory);
- cache_write of the step's 16 new tokens: the torch reference (indexed assignment) and
  the C++ row copy;
- one prefill chunk's attention (prompts of 881, 500 and 131 tokens, causal, like a
  1,024-token step of the engine), and one agent step's (384 new tokens of each of two
  sessions over cached prefixes of 1,024, two decoding sessions beside them): the SDPA
  path (each sequence's blocks copied out, one fused SDPA call per sequence), the in-place
  kernel's row tiles (AVX-512, else AVX2), and its extend GEMM;
- a long extend: one session's 256 new tokens over a cached prefix of 6,144 (past the
  AVX-512 GEMM's 4,096-position cap, where that GEMM leaves the task to the row tiles; the
  AVX2 one keeps a chunk of scores and has no cap), one decoding session beside it, in a
  tier of 2 layers (30 would take over 1 GB).
CPU milliseconds per call (process time, so other jobs on a shared machine disturb it
little), median of 5 rounds of `--repeat` calls, and each path's speed-up over the first
row of its kind. Every path's output is checked against the torch reference first.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch
from ascii_args import int_arg

from kvsaga.kernels import inplace, reference, sdpa
from kvsaga.kernels.args import CacheWriteArgs, PagedAttentionArgs

PROMPT_LENS = [131, 200, 300, 400, 500, 600, 700, 881, 150, 250, 350, 450, 550, 650, 750, 850]
NUM_KV_HEADS, GROUP, HEAD_DIM = 3, 3, 64


PREFILL_LENS = [881, 500, 131]
# An agent step (bench/extend_step.py's second case): two sessions' 384 new tokens over
# cached prefixes of 1,024, beside two decoding sessions.
EXTEND_LENS = [1408, 1408, 1041, 1041]
EXTEND_QUERY_LENS = [384, 384, 1, 1]
# A long session's step: 256 new tokens over 6,144 cached, past kGemmMaxContext (4,096).
LONG_LENS = [6400, 6145]
LONG_QUERY_LENS = [256, 1]


def _attention_case(lens: list[int], query_lens: list[int], block_size: int, num_layers: int,
                    gen: torch.Generator) -> PagedAttentionArgs:
    """Sequences of `lens` tokens (the last `query_lens` of each new), their blocks
    shuffled in a tier of `num_layers` layers; attention over one layer's views."""
    counts = [-(-n // block_size) for n in lens]
    num_blocks = sum(counts) + 4
    kv = torch.randn(num_blocks, num_layers, 2, block_size, NUM_KV_HEADS, HEAD_DIM,
                     generator=gen)
    k_cache, v_cache = kv[:, num_layers // 2, 0], kv[:, num_layers // 2, 1]
    perm = torch.randperm(num_blocks, generator=gen)
    tables = torch.zeros(len(lens), max(counts), dtype=torch.int32)
    start = 0
    for i, n in enumerate(counts):
        tables[i, :n] = perm[start:start + n]
        start += n
    query = torch.randn(sum(query_lens), NUM_KV_HEADS * GROUP, HEAD_DIM, generator=gen)
    starts = torch.tensor([0, *query_lens]).cumsum(0).to(torch.int32)
    return PagedAttentionArgs(
        query, k_cache, v_cache, tables, torch.tensor(lens, dtype=torch.int32), starts,
        HEAD_DIM**-0.5, max(query_lens), max(lens))


def _every_layer(attn: PagedAttentionArgs) -> list[PagedAttentionArgs]:
    """`attn` over each layer of its tier in turn (its caches are views of one layer)."""
    tier = attn.k_cache._base  # [num_blocks, num_layers, 2, block_size, heads, head_dim]
    return [dataclasses.replace(attn, k_cache=tier[:, i, 0], v_cache=tier[:, i, 1])
            for i in range(tier.shape[1])]


def _decode_case(block_size: int, num_layers: int,
                 new_tokens: int = 32) -> tuple[PagedAttentionArgs, CacheWriteArgs]:
    gen = torch.Generator().manual_seed(0)
    lens = [n + new_tokens for n in PROMPT_LENS]
    attn = _attention_case(lens, [1] * len(lens), block_size, num_layers, gen)
    k_cache, v_cache, tables = attn.k_cache, attn.v_cache, attn.block_tables
    last = [(n - 1) for n in lens]
    slots = torch.tensor([int(tables[i, p // block_size]) * block_size + p % block_size
                          for i, p in enumerate(last)])
    qkv = torch.randn(len(lens), 3 * NUM_KV_HEADS, HEAD_DIM, generator=gen)
    write = CacheWriteArgs(qkv[:, :NUM_KV_HEADS], qkv[:, NUM_KV_HEADS:2 * NUM_KV_HEADS],
                           k_cache, v_cache, slots)
    return attn, write


def _chunk_rows(op: str, case: PagedAttentionArgs, repeat: int) -> list[tuple[str, str, float]]:
    """A prefill or extend batch's attention on each path: the SDPA path (blocks copied
    out, one SDPA call per sequence), the in-place kernel's row tiles, and its
    extend GEMM (the dispatch's choice), each checked against the reference first."""
    want = reference.paged_attention(case)
    paths: list[tuple[str, Callable[[], torch.Tensor]]] = [
        ("SDPA path", lambda: sdpa.paged_attention(case, whole=False))]
    if inplace.has_tiles(HEAD_DIM):
        out = torch.empty_like(case.query)
        paths += [(label, lambda p=path: inplace.paged_attention(case, out, None, path=p) or out)
                  for label, path in ((_TILES, "rows"), ("extend GEMM", "auto"))]
    rows = []
    for label, fn in paths:
        torch.testing.assert_close(fn(), want, atol=2e-5, rtol=2e-5)
        rows.append((op, label, _cpu_ms(fn, max(1, repeat // 30))))
    return rows


# The tiled rows' label: the instruction set the kernel's tiles use on this CPU.
_TILES = {"avx512": "AVX-512 tiles", "avx2": "AVX2 tiles"}.get(inplace.tile_isa(), "tiles")


def _cpu_ms(fn: Callable[[], object], repeat: int) -> float:
    for _ in range(3):
        fn()
    rounds = []
    for _ in range(5):
        t = time.process_time()
        for _ in range(repeat):
            fn()
        rounds.append((time.process_time() - t) / repeat * 1e3)
    return statistics.median(rounds)


def main(argv: list[str] | None = None) -> list[tuple[str, str, float]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int_arg, default=300, help="calls per timed round")
    ap.add_argument("--block-size", type=int_arg, default=32, help="tokens per KV block")
    ap.add_argument("--layers", type=int_arg, default=30, help="layers of the tier (its strides)")
    args = ap.parse_args(argv)
    if not inplace.available():
        raise SystemExit("kvsaga._paged_attn is not built: nothing to time")
    torch.set_num_threads(1)
    attn, write = _decode_case(args.block_size, args.layers)
    prefill = _attention_case(PREFILL_LENS, PREFILL_LENS, args.block_size, args.layers,
                              torch.Generator().manual_seed(1))
    extend = _attention_case(EXTEND_LENS, EXTEND_QUERY_LENS, args.block_size, args.layers,
                             torch.Generator().manual_seed(2))
    long = _attention_case(LONG_LENS, LONG_QUERY_LENS, args.block_size, 2,
                           torch.Generator().manual_seed(3))
    want = reference.paged_attention(attn)
    layers = _every_layer(attn)
    other = torch.zeros_like(attn.query)  # the views of another layer: checked once too
    inplace.paged_attention(layers[0], other, None)
    torch.testing.assert_close(other, reference.paged_attention(layers[0]), atol=2e-5, rtol=2e-5)
    rows: list[tuple[str, str, float]] = []
    for label, path in (("generic loops", "generic"), (_TILES, "auto")):
        if path != "generic" and not inplace.tile_isa():
            continue
        out = torch.zeros_like(attn.query)
        inplace.paged_attention(attn, out, None, path=path)
        torch.testing.assert_close(out, want, atol=2e-5, rtol=2e-5)
        rows.append(("paged attention", label, _cpu_ms(
            lambda p=path, o=out: inplace.paged_attention(attn, o, None, path=p),
            args.repeat)))
        rows.append(("every layer", label, _cpu_ms(
            lambda p=path, o=out: [inplace.paged_attention(a, o, None, path=p)
                                   for a in layers],
            max(1, args.repeat // len(layers))) / len(layers)))
    for label, fn in (("torch reference", reference.cache_write),
                      ("C++ row copy", inplace.cache_write)):
        rows.append(("cache_write", label, _cpu_ms(lambda f=fn: f(write), args.repeat)))
    for op, case in (("prefill attention", prefill), ("extend attention", extend),
                     ("long extend", long)):
        rows += _chunk_rows(op, case, args.repeat)
    print(f"one layer of a 16-sequence decode step ({sum(PROMPT_LENS) + 16 * 32} context "
          f"tokens), of a {sum(PREFILL_LENS)}-token prefill and of an agent step's extend "
          f"({EXTEND_QUERY_LENS} new tokens over contexts of {EXTEND_LENS}) and a long one "
          f"({LONG_QUERY_LENS} over {LONG_LENS}), block "
          f"{args.block_size}, CPU ms per call, 1 thread")
    first: dict[str, float] = {}
    for op, label, ms in rows:
        base = first.setdefault(op, ms)
        print(f"  {op:<18} {label:<16} {ms:8.3f} ms  {base / ms:5.2f}x")
    return rows


if __name__ == "__main__":
    main()
