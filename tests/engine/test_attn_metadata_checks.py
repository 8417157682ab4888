"""`AttentionMetadata.build` refuses, with a ValueError naming what was wrong, the inputs the
kernels would take on CUDA unchecked (they skip value checks there: no device sync) and
write or read out of range with (review s51 kernels, LOW-1 and LOW-2)."""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.attn_metadata import AttentionMetadata


@pytest.mark.parametrize("table,seq_len,where", [
    ([3, -1], 32, r"block_tables\[0\]\[1\] = -1"),  # derived slots -16 .. -1: -1 would skip
    ([-1], 1, r"block_tables\[0\]\[0\] = -1"),
    ([5, 6, -7], 33, r"block_tables\[0\]\[2\] = -7"),  # one token in the last block
])
def test_a_negative_block_id_among_a_sequences_blocks_is_refused(table, seq_len, where):
    with pytest.raises(ValueError, match=where + r" is negative; the \d+ blocks holding"):
        AttentionMetadata.build([table], [seq_len], [seq_len], 16)
    with pytest.raises(ValueError, match=where):  # with the manager's slots too
        AttentionMetadata.build([table], [seq_len], [1], 16, slot_mapping=[40])


def test_ids_past_a_sequences_blocks_are_not_read_so_not_checked():
    meta = AttentionMetadata.build([[2, 4, -1, -1]], [17], [1], 16)  # blocks 0 and 1 used
    assert meta.slot_mapping.tolist() == [4 * 16 + 0]
    assert meta.block_tables.tolist() == [[2, 4, -1, -1]]


def test_the_error_names_the_sequence_of_a_batch():
    with pytest.raises(ValueError, match=r"sequence 1: block_tables\[1\]\[0\] = -2"):
        AttentionMetadata.build([[0], [-2], [1]], [4, 4, 4], [1, 1, 1], 4)


@pytest.mark.parametrize("slots", [[48, 49, 50], [48], []])
def test_a_slot_mapping_of_other_than_one_slot_per_new_token_is_refused(slots):
    with pytest.raises(ValueError, match=rf"slot_mapping has {len(slots)} slots for 2 new "
                                         r"tokens \(sum of query_lens\)"):
        AttentionMetadata.build([[3]], [4], [2], 16, slot_mapping=slots)
    meta = AttentionMetadata.build([[3]], [4], [2], 16, slot_mapping=[50, 51])
    assert meta.slot_mapping.tolist() == [50, 51] and meta.num_tokens == 2


@pytest.mark.parametrize("rows", [[3], [-1], [0, 5]])
def test_logits_indices_outside_the_batch_are_refused(rows):
    bad = next(r for r in rows if not 0 <= r < 3)
    with pytest.raises(ValueError, match=rf"logits_indices {bad} is outside the batch's 3 rows"):
        AttentionMetadata.build([[0], [1]], [2, 1], [2, 1], 4, logits_indices=rows)
    meta = AttentionMetadata.build([[0], [1]], [2, 1], [2, 1], 4, logits_indices=[0, 2])
    assert meta.logits_indices.tolist() == [0, 2]


@pytest.mark.parametrize("block_size", [0, -16, 16.0, True])
def test_block_size_must_be_a_positive_int(block_size):
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        AttentionMetadata.build([[0]], [1], [1], block_size)


def test_a_numpy_int_block_size_is_an_int():
    np = pytest.importorskip("numpy")
    meta = AttentionMetadata.build([[2]], [3], [1], np.int64(4))
    assert meta.slot_mapping.tolist() == [2 * 4 + 2]
    assert meta.block_tables.dtype == torch.int32
