"""The last layer keeps only the rows whose hidden states are asked for (`KeptRows`): the
same K/V in the cache, and those rows' hidden states as the full batch gives them."""

from __future__ import annotations

import pytest
import torch

from kvsaga.engine.attn_metadata import AttentionMetadata
from kvsaga.engine.model import LlamaForCausalLM
from kvsaga.engine.model_config import ModelConfig

from .helpers import kv_cache, scale_init


def _model(head_dim: int, num_layers: int) -> LlamaForCausalLM:
    cfg = ModelConfig(architecture="llama", vocab_size=97, hidden_size=2 * head_dim,
                      intermediate_size=96, num_layers=num_layers, num_heads=6,
                      num_kv_heads=2, head_dim=head_dim)
    model = LlamaForCausalLM(cfg)
    scale_init(model, seed=head_dim + num_layers)
    model.pack_weights()
    return model


def _batch() -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
    """Two sequences extending cached context (8 and 3 new tokens) and one decode row."""
    tables = [[7, 2, 5, 0], [1, 6], [3, 4]]
    seq_lens, q_lens = [14, 7, 6], [8, 3, 1]
    meta = AttentionMetadata.build(tables, seq_lens, q_lens, 4)
    ids = torch.randint(0, 97, (sum(q_lens),), generator=torch.Generator().manual_seed(3))
    return ids, meta.positions(), meta


@pytest.mark.parametrize("head_dim,num_layers", [(64, 3), (16, 3), (64, 1)])
def test_kept_rows_match_the_full_batch(head_dim, num_layers):
    model = _model(head_dim, num_layers)
    ids, pos, meta = _batch()
    warm = kv_cache(model, 8, 4).normal_(generator=torch.Generator().manual_seed(1))
    full_kv, kept_kv, none_kv = warm.clone(), warm.clone(), warm.clone()
    full = model.hidden_states(ids, pos, full_kv, meta)
    rows = torch.tensor([11, 2, 7, 0])  # any rows, any order: last, middle and first ones
    kept = model.hidden_states(ids, pos, kept_kv, meta, rows)
    assert kept.shape == (4, model.config.hidden_size)
    torch.testing.assert_close(kept, full[rows], rtol=1e-5, atol=1e-5)
    assert torch.equal(kept_kv, full_kv)  # every row's K/V written, nothing else
    empty = model.hidden_states(ids, pos, none_kv, meta, rows[:0])
    assert empty.shape == (0, model.config.hidden_size)
    assert torch.equal(none_kv, full_kv)


def test_forward_gives_the_logits_rows():
    model = _model(64, 3)
    ids, pos, meta = _batch()
    kv = kv_cache(model, 8, 4)
    logits = model(ids, pos, kv.clone(), meta)
    want = model.compute_logits(model.hidden_states(ids, pos, kv.clone(), meta))
    assert logits.shape == (3, 97)
    torch.testing.assert_close(logits, want[meta.logits_indices], rtol=1e-5, atol=1e-5)
