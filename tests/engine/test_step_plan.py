"""The model's per-pass kernel plan (`kvsaga.kernels.step_plan`): the same bits as the
checked per-layer kernel calls, and taken only where those would run the in-place kernels."""

from __future__ import annotations

import pytest
import torch

from kvsaga import kernels
from kvsaga.engine.model import LlamaForCausalLM
from kvsaga.engine.model_config import ModelConfig
from kvsaga.kernels import inplace

from .helpers import run_greedy, scale_init

pytestmark = pytest.mark.skipif(not inplace.available(), reason="kvsaga._paged_attn not built")


def _model(head_dim: int) -> LlamaForCausalLM:
    cfg = ModelConfig(architecture="llama", vocab_size=97, hidden_size=2 * head_dim,
                      intermediate_size=96, num_layers=3, num_heads=6, num_kv_heads=2,
                      head_dim=head_dim)
    model = LlamaForCausalLM(cfg)
    scale_init(model, seed=head_dim)
    model.pack_weights()
    return model


@pytest.mark.parametrize("head_dim", [64, 16])  # with the kernel's AVX-512 tiles, without
def test_plan_gives_the_bits_of_the_checked_calls(head_dim, monkeypatch):
    """Chunked prefill then decode of a batch: logits with the plan (bound to every layer,
    `LayerAttention`) equal, bit for bit, those of the checked per-layer calls; layers 1..
    take the plan, in decode steps at least (prefill too where the kernel has tiles for the
    head size)."""
    model = _model(head_dim)
    prompts = [[5, 9, 2, 40, 41, 7, 3, 11, 60], [8] * 20, [1, 2, 3]]
    attends = []
    real = inplace.LayerAttention.attend
    monkeypatch.setattr(inplace.LayerAttention, "attend",
                        lambda self, *a: attends.append(a[0].shape[0]) or real(self, *a))
    with_plan = run_greedy(model, prompts, 6, block_size=4, prefill_chunk=7)
    planned = list(attends)
    monkeypatch.setattr(kernels, "step_plan", lambda *a, **k: None)
    without = run_greedy(model, prompts, 6, block_size=4, prefill_chunk=7)
    assert with_plan[0] == without[0]
    for got, want in zip(with_plan[1], without[1], strict=True):
        assert torch.equal(got, want)
    # Layers 1..L-2: the last layer attends only its logits rows, outside the plan.
    decode_calls = 5 * (len(model.layers) - 2)
    assert planned.count(len(prompts)) >= decode_calls
    if inplace.has_tiles(head_dim):
        assert len(planned) > decode_calls  # the prefill chunks too


def _plan(kv: torch.Tensor, q_lens: list[int], pad: int = 0,
          dtype: torch.dtype = torch.float32) -> inplace.StepPlan | None:
    seq_lens = [8 * q for q in q_lens]
    tables = torch.arange(4 * len(q_lens), dtype=torch.int32).view(len(q_lens), 4)
    starts = torch.tensor([0, *q_lens]).cumsum(0).to(torch.int32)
    slots = torch.zeros(sum(q_lens), dtype=torch.int64)
    return kernels.step_plan(kv[:, 0, 0], kv[:, 0, 1], tables, torch.tensor(seq_lens),
                             starts, slots, 0.125, query_dtype=dtype,
                             num_query_tokens=sum(q_lens) + pad, max_query_len=max(q_lens))


def test_no_plan_where_the_kernels_would_not_take_every_row(monkeypatch):
    kv = torch.zeros(16, 3, 2, 8, 2, 64)
    assert _plan(kv, [1, 1]) is not None  # decode
    assert _plan(kv, [1, 1], pad=2) is None  # padding rows
    assert _plan(kv.half(), [1, 1], dtype=torch.float16) is None  # not fp32
    assert _plan(kv, [1, 1], dtype=torch.float16) is None  # queries not fp32
    monkeypatch.setattr(inplace, "has_tiles", lambda head_dim: False)
    assert _plan(kv, [1, 1]) is not None
    assert _plan(kv, [3, 1]) is None  # prefill rows go to SDPA without tiles
    monkeypatch.setenv("KVSAGA_KERNELS", "torch")
    assert _plan(kv, [1, 1]) is None


@pytest.mark.parametrize("head_dim", [64, 16])
def test_plan_per_layer_gives_the_bits_of_the_bound_plan(head_dim, monkeypatch):
    """Where `bind_layers` declines, layers 1.. call `StepPlan.attend` one by one: the
    same logits, bit for bit, as the bound plan's."""
    model = _model(head_dim)
    prompts = [[5, 9, 2, 40, 41, 7, 3, 11, 60], [8] * 20, [1, 2, 3]]
    bound = run_greedy(model, prompts, 6, block_size=4, prefill_chunk=7)
    calls = []
    real = inplace.StepPlan.attend
    monkeypatch.setattr(inplace.StepPlan, "bind_layers", lambda self, *a: None)
    monkeypatch.setattr(inplace.StepPlan, "attend",
                        lambda self, *a: calls.append(1) or real(self, *a))
    per_layer = run_greedy(model, prompts, 6, block_size=4, prefill_chunk=7)
    assert calls
    assert bound[0] == per_layer[0]
    for got, want in zip(bound[1], per_layer[1], strict=True):
        assert torch.equal(got, want)


def test_bound_plan_declines_and_refuses_what_it_cannot_take():
    """`bind_layers` gives None for RoPE tables or a cache it cannot address; the bound
    plan's `attend` raises ValueError, writing nothing, for a projection output that is not
    contiguous fp32 of its shape."""
    kv = torch.zeros(16, 3, 2, 8, 2, 64)
    plan = _plan(kv, [1, 1])
    cos, sin = torch.ones(2, 32), torch.zeros(2, 32)
    assert plan.bind_layers(kv, cos, sin, 6) is not None
    assert plan.bind_layers(kv, cos[:, :16], sin[:, :16], 6) is None  # not head_dim / 2
    assert plan.bind_layers(kv, cos.double(), sin.double(), 6) is None
    assert plan.bind_layers(kv, torch.ones(3, 32), torch.zeros(3, 32), 6) is None  # rows
    assert plan.bind_layers(kv, cos, sin, 5) is None  # heads not a multiple of kv heads
    assert plan.bind_layers(kv[:, :, :1], cos, sin, 6) is None
    bound = plan.bind_layers(kv, cos, sin, 6)
    width = (6 + 2 * 2) * 64
    for bad in (torch.zeros(2, width + 1), torch.zeros(width, 2).t(),
                torch.zeros(2, width, dtype=torch.float64)):
        with pytest.raises(ValueError, match="qkv must be"):
            bound.attend(bad, 1)
    assert not kv.any()


@pytest.mark.parametrize("layer", [-1, 3, 7])
def test_bound_plan_refuses_a_layer_out_of_range(layer):
    """A layer outside [0, layers) is refused before RoPE touches qkv or any cache is
    written (before: -1 wrote the last layer's K/V, 3 gave a bare IndexError)."""
    kv = torch.zeros(16, 3, 2, 8, 2, 64)
    bound = _plan(kv, [1, 1]).bind_layers(kv, torch.ones(2, 32), torch.zeros(2, 32), 6)
    qkv = torch.randn(2, (6 + 2 * 2) * 64)
    before = qkv.clone()
    with pytest.raises(ValueError, match=rf"layer {layer} is out of range for 3 layers"):
        bound.attend(qkv, layer)
    assert torch.equal(qkv, before)
    assert not kv.any()
