"""The rows a forward pass keeps past the last layer's attention, and the checks of the
inputs that name them.

Owns `KeptRows` (the logits rows as one-token attention queries, their context lengths
taken from the metadata) and `check_inputs` (positions [T], rows 1-d and, where values
are checked, in [0, T)), which `LlamaForCausalLM` runs once per forward, before any layer.
Neither reads a device value off CPU, so a CUDA graph can capture the pass
(tests/engine/test_cuda_graphs.py runs it on the meta device, where such a read raises).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from kvsaga.engine.attn_metadata import AttentionMetadata


@dataclass(frozen=True, slots=True)
class KeptRows:
    """Rows of a flat batch whose hidden states the caller needs (its logits rows), as the
    one-token attention queries the last layer runs for them.

    Why: after the last layer's attention, rows nobody reads (the prompt rows of a prefill
    chunk) need no output projection, MLP or final norm; in a 1,024-token prefill step
    that sampled 3 rows this skips a thirtieth of the step's projections. Each kept row
    attends as the last token of its sequence cut at its own position, which is what the
    causal mask gives it in the full batch.
    """

    index: torch.Tensor  # int64 [R]: the rows, in the order the caller wants them
    block_tables: torch.Tensor  # int32 [R, max_blocks]: each row's sequence's blocks
    seq_lens: torch.Tensor  # int32 [R]: each row's context length (its position + 1)
    query_start_loc: torch.Tensor  # int32 [R + 1]: 0, 1, ..., R
    max_seq_len: int  # a host upper bound of seq_lens

    @classmethod
    def build(cls, rows: torch.Tensor, meta: AttentionMetadata) -> KeptRows:
        """For `rows` (int64 [R], each in [0, T)) of the batch `meta` describes.

        Each row's context length comes from the metadata (its sequence's length less the
        rows after it in its query), not from the caller's positions: layers after the
        first run the kernels unchecked, and layer 0 checked the metadata alone, so a
        length the metadata does not bound could read past the row's block table."""
        ends = meta.query_start_loc[1:].to(torch.int64)
        seq = torch.searchsorted(ends, rows, right=True)  # sequence of each row
        after = ends[seq] - 1 - rows  # the sequence's query rows after this one
        return cls(
            index=rows,
            block_tables=meta.block_tables[seq],
            seq_lens=(meta.seq_lens[seq] - after).to(torch.int32),
            query_start_loc=torch.arange(rows.shape[0] + 1, dtype=torch.int32,
                                         device=rows.device),
            max_seq_len=meta.max_seq_len,
        )


def check_inputs(input_ids: torch.Tensor, positions: torch.Tensor,
                 rows: torch.Tensor | None, rows_name: str, validate: bool | None) -> None:
    """ValueError unless positions is [T] and every row is in [0, T); `rows_name` is what
    the errors call `rows`, `validate` layer 0's kernel checks (None: the kernels' default).

    Why: a positions tensor of another length would broadcast through RoPE with no
    error, and a negative row is the last row to torch indexing but sequence 0 to the
    kept rows' block lookup (`KeptRows`): wrong logits, no error. Shapes are checked
    everywhere; row
    values where the kernels check values (on CPU unless layer 0's `validate` says
    otherwise): on CUDA reading them costs a device sync and breaks graph capture, so
    there they go unchecked, as the kernels' own index values do."""
    t = input_ids.shape[0]
    if positions.shape != (t,):
        raise ValueError(f"positions must be [T] = [{t}] (one per input id), "
                         f"got {tuple(positions.shape)}")
    if rows is None:
        return
    if rows.dim() != 1:
        raise ValueError(f"{rows_name} must be a 1-d tensor of rows, "
                         f"got shape {tuple(rows.shape)}")
    if rows.numel() == 0 or not (rows.device.type == "cpu" if validate is None
                                 else validate):
        return
    low, high = (int(v) for v in torch.aminmax(rows))
    if low < 0 or high >= t:
        raise ValueError(f"{rows_name} must be rows of the batch, in [0, {t}), "
                         f"got values from {low} to {high}")
