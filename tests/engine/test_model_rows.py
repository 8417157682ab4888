"""The last layer keeps only the rows whose hidden states are asked for (`KeptRows`): the
same K/V in the cache, and those rows' hidden states as the full batch gives them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


# Inputs that disagree with the metadata. Layers after the first run the kernels unchecked,
# so a kept row's context once taken from `positions` could read past its block table (a
# segfault in the C++ kernel): these run in a child process, which a crash cannot take
# pytest down with.
_CHILD = """
import sys, torch
from kvsaga.engine.attn_metadata import AttentionMetadata
from tests.engine.test_model_rows import _model
from tests.engine.helpers import kv_cache
model = _model(64, int(sys.argv[1]))
meta = AttentionMetadata.build([[3]], [2], [2], 4)  # one sequence of 2 tokens in block 3
ids, pos = torch.tensor([5, 6]), torch.tensor([0, 9])  # the second position: bogus
warm = kv_cache(model, 4, 4).normal_(generator=torch.Generator().manual_seed(1))
full = model.hidden_states(ids, pos, warm.clone(), meta)
kept = model.hidden_states(ids, pos, warm.clone(), meta, torch.tensor([1, 0]))
torch.testing.assert_close(kept, full[[1, 0]], rtol=1e-5, atol=1e-5)
print("ok")
"""


@pytest.mark.parametrize("num_layers", [1, 3])
def test_kept_rows_take_their_context_from_the_metadata(num_layers):
    """Positions drive RoPE only: the kept rows attend over the context the metadata gives
    them, as the full batch's rows do, whatever `positions` says."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _CHILD, str(num_layers)], cwd=root, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("rows", [[-1], [0, 12], [3, -12]])
def test_rows_outside_the_batch_are_refused(rows):
    """A negative row is the last one to torch indexing but sequence 0 to the block lookup;
    one past T is no row. Both are refused, naming the argument, before any K/V is written."""
    model = _model(64, 3)
    ids, pos, meta = _batch()
    kv = kv_cache(model, 8, 4)
    with pytest.raises(ValueError, match=r"^rows must be rows of the batch, in \[0, 12\)"):
        model.hidden_states(ids, pos, kv, meta, torch.tensor(rows))
    meta.logits_indices = torch.tensor(rows)
    with pytest.raises(ValueError, match=r"^attn_metadata.logits_indices must be rows"):
        model(ids, pos, kv, meta)
    assert not kv.any()


@pytest.mark.parametrize("bad", [lambda p: p[:1], lambda p: p[:, None], lambda p: p[:-1]])
def test_positions_not_one_per_token_are_refused(bad):
    """Positions of another shape would broadcast through RoPE with no error."""
    model = _model(64, 3)
    ids, pos, meta = _batch()
    kv = kv_cache(model, 8, 4)
    with pytest.raises(ValueError, match=r"^positions must be \[T\] = \[12\]"):
        model(ids, bad(pos), kv, meta)
    with pytest.raises(ValueError, match=r"^positions must be \[T\] = \[12\]"):
        model.hidden_states(ids, bad(pos), kv, meta)  # every row: nothing else indexes it
    assert not kv.any()
