"""AttentionMetadata: where one flat batch of tokens reads and writes its K/V.

The runner builds one per forward pass from the block tables the KV cache manager hands out;
the model passes it unchanged to every layer's `cache_write` and `paged_attention`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(slots=True)
class AttentionMetadata:
    """The tensors the KV kernels need for one forward pass over a flat batch.

    The batch holds B sequences; sequence i contributes `q_len_i` new tokens (its query) whose
    positions are `seq_len_i - q_len_i .. seq_len_i - 1`, back to back in the flat token
    dimension T = sum(q_len_i).

    Attributes:
        slot_mapping: int64 [T]; cache slot of each new token (block * block_size + offset),
            -1 to skip writing it.
        block_tables: int32 [B, max_blocks]; the blocks of each sequence, in order.
        seq_lens: int32 [B]; context length of each sequence including its new tokens.
        query_start_loc: int32 [B + 1]; cumulative query lengths (0, q_len_0, ...).
        max_query_len: max(q_len_i), a host int so the kernels need no device sync.
        max_seq_len: max(seq_len_i), a host int.
        logits_indices: int64 [N] or None; rows of the flat batch that need logits (usually
            the last token of each sequence whose prompt is complete); None: every row.
    """

    slot_mapping: torch.Tensor
    block_tables: torch.Tensor
    seq_lens: torch.Tensor
    query_start_loc: torch.Tensor
    max_query_len: int
    max_seq_len: int
    logits_indices: torch.Tensor | None = None

    @property
    def num_seqs(self) -> int:
        return int(self.seq_lens.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.slot_mapping.shape[0])

    @classmethod
    def build(
        cls,
        block_tables: Sequence[Sequence[int]],
        seq_lens: Sequence[int],
        query_lens: Sequence[int],
        block_size: int,
        device: torch.device | str = "cpu",
        logits_indices: Sequence[int] | None = None,
        slot_mapping: Sequence[int] | None = None,
    ) -> AttentionMetadata:
        """Build from per-sequence host lists.

        Args:
            block_tables: block ids of each sequence, covering at least `seq_lens[i]` tokens.
            seq_lens: context length of each sequence, new tokens included.
            query_lens: new tokens of each sequence (1 for decode); `<= seq_lens[i]`.
            block_size: tokens per block.
            device: where the tensors go.
            logits_indices: rows needing logits; default: the last new token of each sequence.
            slot_mapping: the new tokens' slots when the caller has them (the KV cache
                manager hands them out); default: derived from the block tables.

        Returns:
            The metadata, with positions implied as `seq_len - q_len + j`.

        Raises:
            ValueError: mismatched lengths, a block_size that is not a positive int, a
                block table too short for its sequence or with a negative id among the
                blocks its sequence uses (the kernels skip value checks on CUDA: such an id
                would be read, and its derived slots written, out of range), a
                slot_mapping not of one slot per new token, or a logits index outside
                the batch's rows.
        """
        if (isinstance(block_size, bool) or not isinstance(block_size, numbers.Integral)
                or block_size < 1):
            raise ValueError(f"block_size must be a positive int, got {block_size!r}")
        if not (len(block_tables) == len(seq_lens) == len(query_lens)):
            raise ValueError(
                f"block_tables ({len(block_tables)}), seq_lens ({len(seq_lens)}) and "
                f"query_lens ({len(query_lens)}) must have one entry per sequence"
            )
        slots: list[int] = []
        starts = [0]
        for i, (table, seq_len, q_len) in enumerate(
            zip(block_tables, seq_lens, query_lens, strict=True)
        ):
            if not 0 < q_len <= seq_len:
                raise ValueError(
                    f"sequence {i}: need 0 < query_len <= seq_len, got {q_len}, {seq_len}"
                )
            if len(table) * block_size < seq_len:
                raise ValueError(
                    f"sequence {i}: {len(table)} blocks of {block_size} tokens "
                    f"cannot hold {seq_len} tokens"
                )
            used = -(-seq_len // block_size)  # >= 1: seq_len >= q_len > 0
            if min(table[:used]) < 0:
                j = next(j for j in range(used) if table[j] < 0)
                raise ValueError(
                    f"sequence {i}: block_tables[{i}][{j}] = {table[j]} is negative; the "
                    f"{used} blocks holding its {seq_len} tokens must be real block ids"
                )
            if slot_mapping is None:
                for pos in range(seq_len - q_len, seq_len):
                    slots.append(table[pos // block_size] * block_size + pos % block_size)
            starts.append(starts[-1] + q_len)
        # One tensor from one padded list of rows (not one small tensor per sequence).
        width = max(max((len(t) for t in block_tables), default=0), 1)
        if block_tables:
            tables = torch.tensor([[*t] + [0] * (width - len(t)) for t in block_tables],
                                  dtype=torch.int32)
        else:
            tables = torch.zeros((0, width), dtype=torch.int32)
        num_tokens = starts[-1]
        if slot_mapping is not None and len(slot_mapping) != num_tokens:
            raise ValueError(
                f"slot_mapping has {len(slot_mapping)} slots for {num_tokens} new tokens "
                f"(sum of query_lens): one slot per new token"
            )
        if logits_indices is None:
            logits_indices = [s - 1 for s in starts[1:]]
        else:
            bad = [r for r in logits_indices if not 0 <= r < num_tokens]
            if bad:
                raise ValueError(
                    f"logits_indices {bad[0]} is outside the batch's {num_tokens} rows"
                )
        return cls(
            slot_mapping=torch.tensor(
                slots if slot_mapping is None else list(slot_mapping),
                dtype=torch.int64,
                device=device,
            ),
            block_tables=tables.to(device),
            seq_lens=torch.tensor(list(seq_lens), dtype=torch.int32, device=device),
            query_start_loc=torch.tensor(starts, dtype=torch.int32, device=device),
            max_query_len=max(query_lens, default=0),
            max_seq_len=max(seq_lens, default=0),
            logits_indices=torch.tensor(list(logits_indices), dtype=torch.int64, device=device),
        )

    def positions(self) -> torch.Tensor:
        """int64 [T]: the position of each new token, derived from seq_lens and query lens."""
        q_lens = self.query_start_loc[1:] - self.query_start_loc[:-1]
        first = (self.seq_lens - q_lens).long()  # [B]
        seq_of_token = torch.repeat_interleave(
            torch.arange(self.num_seqs, device=first.device), q_lens.long()
        )
        offset = (
            torch.arange(self.num_tokens, device=first.device)
            - self.query_start_loc[seq_of_token].long()
        )
        return first[seq_of_token] + offset

