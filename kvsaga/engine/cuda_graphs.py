"""Decode passes replayed from CUDA graphs: one launch for the whole forward pass.

A decode step of a small model on a fast GPU is bound by the host, not the GPU. SmolLM2-135M
launches about 840 kernels a step (30 layers of linears, norms, RoPE, the K/V write and two
attention kernels). On an H200 the GPU works about 2 ms of a 23-38 ms step; the rest is
Python and kernel launches (`python bench/engine_cuda_profile.py`). `DecodeGraphs` records
the forward pass, from the embedding to the logits, once per padded batch size. A decode
step then costs a few small host-to-device copies and one `replay`.

A graph replays the same kernels on the same addresses with the same host arguments, so:
  * Inputs live in static device buffers, sized for the largest batch; each step copies its
    ids, positions, slots, lengths and block tables into them. A batch of B rows runs the
    graph of the smallest captured size S >= B (`SIZES`).
  * Rows B..S-1 are padding. Their slot is -1 (the cache write skips it), their context
    length 0, and their query empty (`query_start_loc` stays at B), so the attention
    kernels skip them too. Their linears run on stale ids, and their logits are sliced off.
  * The host-side bounds the kernels take are those of the worst case: `max_query_len` 1
    and `max_seq_len` the engine's `max_model_len`. The decode kernel's split grid thus
    covers any context; a split past a sequence's end stores nothing.
  * Block tables are `max_model_len / block_size` wide; entries past a sequence's blocks
    are never read (its length bounds them), so rows are not cleared between steps.

Graphs are captured lazily, at the first decode step of each size: a warm-up pass (Triton
compiles), then the capture. Every size shares one memory pool.

Prefill and mixed steps, and batches above the largest size, run eagerly. The same padded
path runs eagerly off CUDA (`capture=False`), which is how the CPU tests check the padding.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from kvsaga.engine.attn_metadata import AttentionMetadata

SIZES = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128)


class DecodeGraphs:
    """Args:
    model: the decoder (`LlamaForCausalLM`); called as `model(ids, positions, kv_cache, meta)`.
    kv_cache: the GPU tier tensor the passes read and write (its address is recorded).
    block_size: tokens per KV block.
    max_model_len: the longest context a sequence may reach.
    max_batch: the most sequences a step holds; sizes above the smallest size that covers it
        are not kept.
    capture: record CUDA graphs (CUDA only); False runs the padded pass eagerly (tests, CPU).
    """

    def __init__(self, model: torch.nn.Module, kv_cache: torch.Tensor, block_size: int,
                 max_model_len: int, max_batch: int, capture: bool = True) -> None:
        if capture and kv_cache.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA KV cache, got {kv_cache.device}")
        if max_batch < 1 or max_model_len < 1:
            raise ValueError(f"need max_batch >= 1 and max_model_len >= 1, got {max_batch}, "
                             f"{max_model_len}")
        cover = bisect.bisect_left(SIZES, max_batch)
        self.sizes = SIZES[: cover + 1]
        self.model = model
        self.kv_cache = kv_cache
        self.block_size = block_size
        self.max_model_len = max_model_len
        self.capture = capture
        device = kv_cache.device
        n = self.sizes[-1]
        self.width = -(-max_model_len // block_size)
        # One int64 buffer that a step fills with one copy: ids, positions, slots, context
        # lengths (n each) and query starts (n + 1). The kernels take the last two as int32:
        # the pass converts them (inside the graph, so a replay does too).
        self._packed = torch.zeros(5 * n + 1, dtype=torch.int64, device=device)
        self.input_ids, self.positions, self.slots = (self._packed[i * n:(i + 1) * n]
                                                      for i in range(3))
        self._seq_lens64 = self._packed[3 * n:4 * n]
        self._starts64 = self._packed[4 * n:]
        self.seq_lens = torch.zeros(n, dtype=torch.int32, device=device)
        self.query_start_loc = torch.zeros(n + 1, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros((n, self.width), dtype=torch.int32, device=device)
        self._host_tables = torch.zeros((n, self.width), dtype=torch.int32,
                                        pin_memory=capture)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if capture else None
        self.replays = 0  # decode passes that ran from a graph (or the padded eager path)

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def size_for(self, batch: int) -> int | None:
        """The padded size a batch of `batch` rows runs at, None above the largest."""
        i = bisect.bisect_left(self.sizes, batch)
        return self.sizes[i] if batch >= 1 and i < len(self.sizes) else None

    def captured_sizes(self) -> list[int]:
        return sorted(self._graphs)

    def _meta(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            slot_mapping=self.slots[:size], block_tables=self.block_tables[:size],
            seq_lens=self.seq_lens[:size], query_start_loc=self.query_start_loc[: size + 1],
            max_query_len=1, max_seq_len=self.max_model_len, logits_indices=None,
        )

    def _forward(self, size: int) -> torch.Tensor:
        self.seq_lens[:size].copy_(self._seq_lens64[:size])
        self.query_start_loc[: size + 1].copy_(self._starts64[: size + 1])
        return self.model(self.input_ids[:size], self.positions[:size], self.kv_cache,
                          self._meta(size))

    def _stage(self, input_ids: Sequence[int], positions: Sequence[int], slots: Sequence[int],
               tables: Sequence[Sequence[int]], seq_lens: Sequence[int]) -> None:
        """Copy one batch into the static buffers (two copies); rows past it are padding."""
        n, b = self.max_batch, len(input_ids)
        pad = [0] * (n - b)
        packed = (list(input_ids) + pad + list(positions) + pad + list(slots) + [-1] * (n - b)
                  + list(seq_lens) + pad + list(range(b + 1)) + [b] * (n - b))
        self._packed.copy_(torch.tensor(packed, dtype=torch.int64))
        host, width = self._host_tables, max((len(t) for t in tables), default=0)
        for i, table in enumerate(tables):
            host[i, : len(table)] = torch.tensor(table, dtype=torch.int32)
        if b and width:
            self.block_tables[:b, :width].copy_(host[:b, :width])

    def run(self, input_ids: Sequence[int], positions: Sequence[int], slots: Sequence[int],
            tables: Sequence[Sequence[int]], seq_lens: Sequence[int]) -> torch.Tensor:
        """One decode pass: each row is one sequence's newest token.

        Args:
            input_ids / positions / slots: per row, its token, its position and its K/V slot.
            tables / seq_lens: per row, its block table and its context length (position + 1).

        Returns:
            fp32 [B, vocab] logits, a view of the graph's output: read it before the next run.

        Raises:
            ValueError: mismatched lengths, a batch above `max_batch`, or a block table
                wider than `max_model_len` allows; the buffers are then unchanged.
        """
        b = len(input_ids)
        if not (b == len(positions) == len(slots) == len(tables) == len(seq_lens)):
            raise ValueError("input_ids, positions, slots, tables and seq_lens need one entry "
                             "per row")
        size = self.size_for(b)
        if size is None:
            raise ValueError(f"a decode batch of {b} rows exceeds the largest graph "
                             f"({self.max_batch})")
        too_wide = [len(t) for t in tables if len(t) > self.width]
        if too_wide:
            raise ValueError(f"block table of {too_wide[0]} blocks exceeds the {self.width} "
                             f"of max_model_len {self.max_model_len}")
        self._stage(input_ids, positions, slots, tables, seq_lens)
        self.replays += 1
        if not self.capture:
            return self._forward(size)[:b]
        if size not in self._graphs:
            self._graphs[size] = self._record(size)
        graph, out = self._graphs[size]
        graph.replay()
        return out[:b]

    def _record(self, size: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        """Capture the pass at `size`. The staged batch is written twice (warm-up, then
        capture) with the same K/V; the replay that follows writes it a third time."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._forward(size)  # warm-up: Triton compiles, the allocator's blocks
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        # thread_local: a host-tier copy on another thread (kvsaga.offload) during the capture
        # must not invalidate it; only this thread's calls are restricted.
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            out = self._forward(size)
        return graph, out
