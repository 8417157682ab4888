"""The argument bundles of `cache_write` and `paged_attention`, written down once.

`kvsaga.kernels.cache_write` and `kvsaga.kernels.paged_attention` keep the flat signatures a
model calls (documented there). They bundle their inputs once, check the bundle
(`checks.py`) and hand it to the implementation they pick: the torch reference
(`reference.py`), the batched SDPA path on CPU (`sdpa.py`) or the Triton launcher
(`kv_write.py`, `attention.py`). Each implementation reads the fields it needs, so a new
input is added here and in the dispatcher, not in four signatures that must agree.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True, slots=True)
class CacheWriteArgs:
    """The inputs of `kvsaga.kernels.cache_write`: new K/V rows and the slots they go to."""

    key: torch.Tensor
    value: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    slot_mapping: torch.Tensor


@dataclass(frozen=True, slots=True)
class PagedAttentionArgs:
    """The inputs of `kvsaga.kernels.paged_attention` (its output buffer apart)."""

    query: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    scale: float
    # Host-side upper bounds that spare the Triton launcher a device sync; the CPU paths
    # loop over the sequences and ignore them.
    max_query_len: int | None = None
    max_seq_len: int | None = None

    def sequences(self) -> Iterator[tuple[slice, int, torch.Tensor]]:
        """What the CPU paths loop over: for each sequence with query tokens, its query rows,
        its context length and the int64 ids of the blocks that hold that context. Reads
        the lengths on the host (a device sync on CUDA)."""
        block_size = self.k_cache.shape[1]
        starts = self.query_start_loc.tolist()
        tables = self.block_tables.long()
        for i, seq_len in enumerate(self.seq_lens.tolist()):
            if starts[i + 1] > starts[i]:
                num_blocks = -(-seq_len // block_size)
                yield slice(starts[i], starts[i + 1]), seq_len, tables[i, :num_blocks]
