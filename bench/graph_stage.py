"""Host time of staging a step into the CUDA-graph buffers (kvsaga/engine/cuda_graphs.py).

    python bench/graph_stage.py [--iters 2000]

Runs on CPU (the staging is host work; on CUDA its copies go to the device). Two readings,
each arm timed twice in alternation and the second reading kept:
  tables  the block tables of `rows` sequences of `blocks` blocks each, unchanged since the
          last step (a decode step's usual case): `before` rebuilds every row as a tensor
          (the staging up to session 30), `after` is `_Tables.stage` (rewrites changed rows
          only);
  step    a whole `DecodeGraphs._stage` (`before`: its code up to session 30, with
          `torch.tensor` on the packed list) and `MixedGraphs._stage` (ids, positions,
          slots, lengths, query starts, logits rows and tables; new, so no `before`: such
          steps ran eagerly): `rows` decode rows, plus one `chunk`-token prefill chunk for
          the mixed step.
Microseconds a call; no GPU figures.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
from ascii_args import int_arg

from kvsaga.engine.cuda_graphs import _Tables


def _before(host: torch.Tensor, dev: torch.Tensor, tables: list[list[int]]) -> None:
    """The staging of block tables before session 31: one tensor per row, every step."""
    width = max(len(t) for t in tables)
    for i, table in enumerate(tables):
        host[i, : len(table)] = torch.tensor(table, dtype=torch.int32)
    dev[: len(tables), :width].copy_(host[: len(tables), :width])


def _decode_before(g, input_ids, positions, slots, tables, seq_lens) -> None:
    """`DecodeGraphs._stage` up to session 30: `torch.tensor` on the packed list, `_before`
    for the tables."""
    n, b = g.max_batch, len(input_ids)
    pad = [0] * (n - b)
    packed = (list(input_ids) + pad + list(positions) + pad + list(slots) + [-1] * (n - b)
              + list(seq_lens) + pad + list(range(b + 1)) + [b] * (n - b))
    g._packed.copy_(torch.tensor(packed, dtype=torch.int64))
    _before(g._tables.host, g.block_tables, tables)


def _time(fn, iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return 1e6 * (time.perf_counter() - t0) / iters


def _pair(a, b, iters: int) -> tuple[float, float]:
    for _ in range(2):  # the second reading of each, alternated
        ta, tb = _time(a, iters), _time(b, iters)
    return ta, tb


class _Model(torch.nn.Module):
    """Stands in for the decoder: `_stage` reads only `config.vocab_size`."""

    class config:  # noqa: N801
        vocab_size = 8


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int_arg, default=2000, help="calls timed in each reading")
    args = ap.parse_args()
    torch.set_num_threads(1)
    from kvsaga.engine.cuda_graphs import DecodeGraphs, MixedGraphs

    print("| reading | rows | blocks a row | before us | after us |\n|---|---:|---:|---:|---:|")
    for rows, blocks in ((1, 8), (16, 20), (64, 20), (64, 128)):
        tables = [list(range(1000 * i, 1000 * i + blocks)) for i in range(rows)]
        host = torch.zeros(64, 256, dtype=torch.int32)
        dev = torch.zeros(64, 256, dtype=torch.int32)
        staged = _Tables(64, 256, torch.device("cpu"), pin=False)
        before, after = _pair(functools.partial(_before, host, dev, tables),
                              functools.partial(staged.stage, tables), args.iters)
        print(f"| tables | {rows} | {blocks} | {before:.1f} | {after:.1f} |")

    kv = torch.zeros(1, 1, 2, 16, 1, 8)
    decode = DecodeGraphs(_Model(), kv, 16, 4096, 64, capture=False)
    mixed = MixedGraphs(_Model(), kv, 16, 4096, 64, 512, capture=False)
    print("\n| reading | decode rows | chunk tokens | before us | after us |\n"
          "|---|---:|---:|---:|---:|")
    for rows, chunk in ((1, 0), (16, 0), (64, 0), (1, 256), (16, 256), (63, 256), (1, 511)):
        tables = [list(range(1000 * i, 1000 * i + 20)) for i in range(rows + (chunk > 0))]
        ids = list(range(rows + chunk))
        lens = [300] * rows + ([chunk] if chunk else [])
        if chunk:
            q = [1] * rows + [chunk]
            call = functools.partial(mixed._stage, ids, ids, ids, tables, lens, q,
                                     list(range(rows + 1)))
            us = _time(call, args.iters)
            print(f"| MixedGraphs._stage | {rows} | {chunk} | (eager) | {us:.1f} |")
        else:
            before, after = _pair(
                functools.partial(_decode_before, decode, ids, ids, ids, tables, lens),
                functools.partial(decode._stage, ids, ids, ids, tables, lens), args.iters)
            print(f"| DecodeGraphs._stage | {rows} | 0 | {before:.1f} | {after:.1f} |")


if __name__ == "__main__":
    main()
