"""The engine prices evictions for the model it serves on the device it runs on."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from kvsaga.config import KVSpec
from kvsaga.engine.cost import CUDA_TABLE, PREFILL_MFU, model_cost, table_profile
from kvsaga.engine.engine import LLMEngine
from kvsaga.policy import GraphPolicy, PrefillCost


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir("llama_gqa4_untied")


def make_engine(model_dir, **kw) -> LLMEngine:
    return LLMEngine(str(model_dir), device="cpu", progress=False, kv_memory_bytes=2**20, **kw)


@pytest.mark.parametrize(("name", "peak", "pcie"), [
    ("NVIDIA H200", 989e12, 50e9),
    ("NVIDIA GH200 480GB", 989e12, 360e9),  # contains "H200": NVLink-C2C, not PCIe
    ("NVIDIA H100 80GB HBM3", 989e12, 50e9),
    ("NVIDIA H100 PCIe", 756e12, 50e9),
    ("NVIDIA A100-SXM4-80GB", 312e12, 25e9),
])
def test_known_cards_come_from_the_table(name, peak, pcie):
    p = table_profile(name)
    assert p is not None and p.source == "table" and p.name == name
    assert (p.prefill_flops, p.host_bandwidth) == (peak * PREFILL_MFU, pcie)


def test_other_cards_are_not_guessed():
    assert table_profile("NVIDIA GeForce GTX 1080") is None
    assert all(frag and peak > 0 and bw > 0 for frag, peak, bw in CUDA_TABLE)


def test_cost_follows_the_model_shapes(model_dir):
    engine = make_engine(model_dir)
    cfg, p, cost = engine.config, engine.device_profile, engine.cost
    assert p.source == "measured" and p.name == "cpu"
    assert math.isfinite(p.prefill_flops) and p.prefill_flops > 0
    assert math.isfinite(p.host_bandwidth) and p.host_bandwidth > 0
    assert cost.block_bytes == engine.spec.bytes_per_block
    assert cost.host_bandwidth == p.host_bandwidth
    # Whatever the measured speed, the weights-vs-attention split is the model's own.
    h, q, kv, inter = cfg.hidden_size, cfg.q_size, cfg.kv_size, cfg.intermediate_size
    linear = cfg.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * inter)
    assert cost.s_per_token / cost.s_per_token_pair == pytest.approx(
        2 * linear / (4 * q * cfg.num_layers))
    assert cost.s_per_token == pytest.approx(2 * linear / p.prefill_flops)


def test_a_bigger_model_on_the_same_device_costs_more(model_dir):
    engine = make_engine(model_dir)
    cfg, p = engine.config, engine.device_profile
    wide = dataclasses.replace(cfg, num_layers=2 * cfg.num_layers)
    spec = KVSpec(wide.num_layers, wide.num_kv_heads, wide.head_dim, "float32", 16)
    big = model_cost(wide, spec, p)
    assert big.recompute_s(16, 0) == pytest.approx(2 * engine.cost.recompute_s(16, 0))
    assert big.reload_s(4) > engine.cost.reload_s(4)


@pytest.mark.parametrize("policy", ["ttl", "graph", "saga"])
def test_pricing_policies_get_the_engines_cost_model(model_dir, policy):
    engine = make_engine(model_dir, policy=policy)
    assert engine.manager.policy.cost is engine.cost
    assert engine.cost != PrefillCost()  # not the A100 / Llama-3.1-8B default


def test_a_policy_instance_keeps_its_own_cost(model_dir):
    mine = PrefillCost(host_bandwidth=1e6)
    engine = make_engine(model_dir, policy=GraphPolicy(cost=mine))
    assert engine.manager.policy.cost is mine


def test_unknown_policy_names_the_known_ones(model_dir):
    with pytest.raises(ValueError, match="unknown policy 'fastest'.*graph"):
        make_engine(model_dir, policy="fastest")


@pytest.mark.gpu
def test_cuda_profile_is_the_tables_or_measured(model_dir):
    engine = LLMEngine(str(model_dir), device="cuda", progress=False, kv_memory_bytes=2**22)
    p = engine.device_profile
    assert p.source in ("table", "measured") and p.prefill_flops > 0 and p.host_bandwidth > 0
    assert (p.source == "table") == (table_profile(torch.cuda.get_device_name()) is not None)
