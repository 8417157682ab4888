"""Cost model: presets, monotonicity, and magnitudes against published figures."""

from __future__ import annotations

import pytest

from kvsaga.policy import CostModel as PolicyCost
from kvsaga.policy import PrefillCost
from kvsaga.sim.cost import PRESETS, StepCostModel, attention_pairs, get_preset
from kvsaga.sim.registry import UnknownNameError

KIB = 1024


def test_presets_and_unknown_name():
    assert set(PRESETS) == {"a100-llama3-8b", "h100-llama3-8b", "a100-llama3-70b",
                            "h100-llama3-70b"}
    with pytest.raises(UnknownNameError, match="unknown preset 'tpu'; known: a100-llama3-70b"):
        get_preset("tpu")


def test_kv_sizes_match_calibration():
    # [CAL] Llama-3.1-8B 128 KiB per token; Llama-3-70B 320 KiB, split over TP=4 ranks.
    assert PRESETS["a100-llama3-8b"].kv_bytes_per_token == 128 * KIB
    assert PRESETS["a100-llama3-8b"].block_bytes == 2 * 1024 * KIB
    assert PRESETS["h100-llama3-70b"].model.kv_bytes_per_token == 320 * KIB
    assert PRESETS["h100-llama3-70b"].kv_bytes_per_token == 80 * KIB
    spec = PRESETS["a100-llama3-70b"].kv_spec
    assert spec.bytes_per_token == 80 * KIB and spec.block_size == 16
    for model in PRESETS.values():
        assert 20e9 < model.default_kv_memory_bytes() < 70e9
        assert model.num_blocks(model.default_kv_memory_bytes()) > 10_000


def test_magnitudes():
    a100 = PRESETS["a100-llama3-8b"]
    assert 0.02 <= a100.prefill_time(1_000) <= 0.15  # tens of ms
    assert 0.006 <= a100.decode_step_time(1, 1_000) <= 0.02  # ~16 GB of weights at ~2 TB/s
    h100 = PRESETS["h100-llama3-8b"]
    assert h100.prefill_time(1_000) < a100.prefill_time(1_000) / 2
    big = PRESETS["a100-llama3-70b"]
    assert 0.1 <= big.prefill_time(1_000) <= 0.4
    # A 32K-token 70B context (~10 GiB over 4 GPUs [CAL]) reloads far faster than it prefills.
    assert big.reload_cost(32_000) < 0.2 < 5 < big.recompute_cost(32_000)
    assert a100.transfer_time(25e9) == pytest.approx(1.0)  # [CAL] 25 GB/s sustained


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_monotonic(name):
    m = PRESETS[name]
    for small, large in [(1, 16), (16, 512), (512, 8_192)]:
        assert m.prefill_time(small) < m.prefill_time(large)
        assert m.prefill_time(small, context=1_000) < m.prefill_time(small, context=100_000)
        assert m.recompute_cost(small) < m.recompute_cost(large)
        assert m.reload_cost(small) < m.reload_cost(large)
    for batch in (1, 8, 64):
        assert m.decode_step_time(batch, batch * 1_000) <= m.decode_step_time(
            batch + 1, (batch + 1) * 1_000)
        assert m.decode_step_time(batch, batch * 1_000) < m.decode_step_time(
            batch, batch * 50_000)
    base = m.step_time(prefill_tokens=256, prefill_attention_pairs=attention_pairs(256, 0),
                       decode_batch=16, decode_context_tokens=16_000)
    assert m.step_time(prefill_tokens=256, prefill_attention_pairs=attention_pairs(256, 0),
                       decode_batch=16, decode_context_tokens=16_000,
                       transfer_bytes=100e9) > base  # a load longer than the step shows
    assert m.step_time(prefill_tokens=256, prefill_attention_pairs=attention_pairs(256, 0),
                       decode_batch=16, decode_context_tokens=16_000,
                       transfer_bytes=1e6) == base  # a short one hides under compute


def test_batching_amortizes_weights():
    m = PRESETS["a100-llama3-8b"]
    assert m.decode_step_time(64, 64_000) < 2 * m.decode_step_time(1, 1_000)


def test_attention_pairs():
    assert attention_pairs(1, 0) == 1
    assert attention_pairs(3, 0) == 6
    assert attention_pairs(2, 10) == 23


def test_bad_arguments():
    m = PRESETS["a100-llama3-8b"]
    with pytest.raises(ValueError, match="prefill_tokens must be a finite number >= 0, got -1"):
        m.step_time(prefill_tokens=-1)
    with pytest.raises(ValueError, match="num_bytes"):
        m.transfer_time(float("inf"))
    with pytest.raises(ValueError, match="tp=3 must divide num_kv_heads=8"):
        StepCostModel("x", m.gpu, m.model, tp=3)
    with pytest.raises(ValueError, match="flops_efficiency must be in"):
        StepCostModel("x", m.gpu, m.model, flops_efficiency=1.5)
    assert m.step_time() == 0.0


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_policy_cost_protocol(name):
    m = PRESETS[name]
    assert isinstance(m, PolicyCost)
    assert m.recompute_s(100, 1_000) == m.recompute_cost(100, 1_000)
    assert m.reload_s(4) == pytest.approx(m.reload_cost(4 * m.block_size))
    assert m.reload_s(0) == 0.0


def test_agrees_with_the_policies_default_cost():
    # The policies' default (A100, 8B) and the preset: same order of magnitude.
    m, p = PRESETS["a100-llama3-8b"], PrefillCost()
    for n, c in [(16, 0), (1_000, 0), (512, 50_000)]:
        assert 0.5 < m.recompute_s(n, c) / p.recompute_s(n, c) < 2
    assert 0.5 < m.reload_s(64) / p.reload_s(64) < 2


# Step times of the cost model as written before `_step_time` cached its constants
# (commit 511da20), to the bit: the fast path must not move any simulated time.
PINNED_STEP_TIMES = [
    ("a100-llama3-8b", (0, 0, 0, 1, 5000, 0), 0.011832641807058824),
    ("a100-llama3-8b", (3000, 4500000, 1000, 5, 20000, 0), 0.25165523550295854),
    ("a100-llama3-8b", (0, 0, 0, 64, 900000, 0), 0.08084305212235295),
    ("a100-llama3-8b", (0, 0, 0, 0, 0, 2000000), 8e-05),
    ("a100-llama3-8b", (8192, 33558528, 0, 0, 0, 5e8), 0.7374923743987377),
    ("h100-llama3-70b", (0, 0, 0, 1, 5000, 0), 0.015833196627952677),
    ("h100-llama3-70b", (3000, 4500000, 1000, 5, 20000, 0), 0.24104633715859897),
    ("h100-llama3-70b", (0, 0, 0, 64, 900000, 0), 0.042369781730674363),
    ("h100-llama3-70b", (8192, 33558528, 0, 0, 0, 5e8), 0.6770204959943749),
]


@pytest.mark.parametrize("preset,args,expected", PINNED_STEP_TIMES)
def test_step_time_pinned_to_the_bit(preset, args, expected):
    cost = PRESETS[preset]
    assert cost.step_time(*args) == cost._step_time(*args) == expected


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_decode_step_times_equal_the_scalar_step_time_exactly(name):
    """A decode run times its steps with one array call; each must be the very float the
    per-step call gives (runs and the per-step reference must agree to the bit)."""
    import numpy as np

    cost = get_preset(name)
    for batch in (1, 3, 64):
        contexts = np.array([batch, 17 * batch, 4097 * batch, 131_071 * batch, 10**6],
                            dtype=np.int64)
        got = cost.decode_step_times(batch, contexts).tolist()
        assert got == [cost._step_time(0, 0, 0, batch, int(c)) for c in contexts]
