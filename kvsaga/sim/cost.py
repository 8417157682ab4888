"""Step-time cost model of one GPU serving with continuous batching (a roofline).

A batch step runs some prefill tokens (chunks of prompts, each over its cached context) and
one decode token for each of `decode_batch` requests. Its time is

    step = overhead + max(gpu, blocking_transfer)
    gpu  = max(compute, memory) + tp_comm
    compute = (2 * params * (prefill + decode)                      linear layers
               + 4 * hidden * layers * attention_pairs) / (peak_flops * flops_efficiency)
    memory  = (weight bytes + KV bytes read + KV bytes written) / (hbm_bw * hbm_efficiency)
    tp_comm = 2 all-reduces per layer of the step's tokens over NVLink (+ latency each)
    blocking_transfer = host<->GPU bytes the step must wait for / pcie_bw

where attention_pairs counts (query, key) pairs: a prefill of t tokens over c cached ones
has t*c + t*(t+1)/2, a decode token over c has c. Host transfers run on copy engines,
concurrent with compute, so only their excess over the GPU time adds to a step.

Every figure is per GPU: a tensor-parallel preset is one shard (params / tp, KV heads / tp).
Sources of the constants are given beside them, as [CAL] for the published figures that
docs/workloads.md lists with their references, or as a named datasheet; "assumed" marks the few
constants that no source pins down, with the reason. docs/workloads.md repeats the table.

The literature fits these curves instead (InferCept: batch time quadratic in batched tokens;
Continuum: prefill time quadratic in tokens per model and GPU [CAL]); the roofline has the
same shape (linear terms plus the quadratic attention term) with constants one can check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from kvsaga._validate import is_int, is_number
from kvsaga.config import KVSpec
from kvsaga.sim.registry import Registry

GB = 1e9
TFLOPS = 1e12
GIB = 2**30


def _check_positive(owner: str, name: str, value: float) -> None:
    if not is_number(value) or not (
            math.isfinite(value) and value > 0):
        raise ValueError(f"{owner}.{name} must be a finite number > 0, got {value!r}")


def _check_count(name: str, value: float) -> None:
    if not is_number(value) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class GPUSpec:
    """One accelerator.

    Args:
        name: e.g. "A100-80GB".
        hbm_bytes: device memory in bytes.
        hbm_bw: device-memory bandwidth, bytes/s.
        peak_flops: dense bf16 tensor throughput, FLOP/s.
        pcie_bw: sustained host<->device bandwidth one way, pinned memory, bytes/s.
        nvlink_bw: GPU<->GPU bandwidth one way, bytes/s (tensor parallelism).
    """

    name: str
    hbm_bytes: float
    hbm_bw: float
    peak_flops: float
    pcie_bw: float
    nvlink_bw: float

    def __post_init__(self) -> None:
        for attr in ("hbm_bytes", "hbm_bw", "peak_flops", "pcie_bw", "nvlink_bw"):
            _check_positive("GPUSpec", attr, getattr(self, attr))


@dataclass(frozen=True)
class ModelSpec:
    """The shapes of one (whole, unsharded) dense decoder.

    Args:
        name: e.g. "Llama-3.1-8B".
        params: parameter count.
        num_layers: decoder layers.
        hidden_size: model width (= query heads x head dim for Llama).
        num_kv_heads: key/value heads (GQA).
        head_dim: per-head width.
        dtype_bytes: bytes per weight and per KV element (2 for bf16).
    """

    name: str
    params: float
    num_layers: int
    hidden_size: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int = 2

    def __post_init__(self) -> None:
        for attr in ("params", "num_layers", "hidden_size", "num_kv_heads", "head_dim",
                     "dtype_bytes"):
            _check_positive("ModelSpec", attr, getattr(self, attr))

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of one token over all layers and KV heads."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


# --- GPUs -----------------------------------------------------------------------------------
A100_80GB = GPUSpec(
    name="A100-80GB",
    hbm_bytes=80 * GB,  # NVIDIA A100 datasheet: 80 GB HBM2e
    hbm_bw=2.0e12,  # [CAL] A100-80GB HBM ~2.0 TB/s (datasheet 2,039 GB/s)
    peak_flops=312 * TFLOPS,  # [CAL] bf16 dense 312 TFLOP/s
    pcie_bw=25 * GB,  # [CAL] PCIe Gen4 x16 ~25 GB/s sustained pinned (31.5 theoretical)
    nvlink_bw=300 * GB,  # NVIDIA A100 datasheet: NVLink 600 GB/s total, 300 GB/s each way
)
H100_SXM = GPUSpec(
    name="H100-SXM-80GB",
    hbm_bytes=80 * GB,  # NVIDIA H100 SXM datasheet: 80 GB HBM3
    hbm_bw=3.35e12,  # [CAL] H100 SXM 3.35 TB/s
    peak_flops=990 * TFLOPS,  # [CAL] bf16 dense ~990 TFLOP/s
    pcie_bw=50 * GB,  # [CAL] PCIe Gen5 ~50 GB/s one way (~83 GB/s both ways), 0.5-2 MB DMAs
    nvlink_bw=450 * GB,  # NVIDIA H100 SXM datasheet: NVLink 900 GB/s total, 450 each way
)

# --- Models ---------------------------------------------------------------------------------
# Shapes from the models' Hugging Face config.json files; [CAL] gives the KV bytes per token
# these imply: 8B 128 KiB (32 x 8 x 128 x 2 x 2 B), 70B 320 KiB.
LLAMA3_8B = ModelSpec(name="Llama-3.1-8B", params=8.03e9, num_layers=32, hidden_size=4096,
                      num_kv_heads=8, head_dim=128)
LLAMA3_70B = ModelSpec(name="Llama-3-70B", params=70.6e9, num_layers=80, hidden_size=8192,
                       num_kv_heads=8, head_dim=128)


@dataclass(frozen=True)
class StepCostModel:
    """Step times of one GPU (one tensor-parallel shard) serving one model.

    Args:
        name: the preset's name.
        gpu: the accelerator.
        model: the whole model; `tp` shards it.
        tp: tensor-parallel degree; each GPU holds params / tp and num_kv_heads / tp.
        block_size: tokens per KV block (kvsaga's default, 16).
        flops_efficiency: achievable share of peak FLOP/s in large matmuls.
        hbm_efficiency: achievable share of HBM bandwidth in memory-bound kernels.
        link_efficiency: achievable share of NVLink bandwidth in all-reduces.
        step_overhead_s: fixed cost of a batch step (scheduling, sampling, launches).
        allreduce_latency_s: fixed cost of one all-reduce (tp > 1 only).
        activation_reserve_bytes: device memory kept for activations, not KV.
    """

    name: str
    gpu: GPUSpec
    model: ModelSpec
    tp: int = 1
    block_size: int = 16
    # Assumed: prefill MFU of 50-70% is what well-tuned engines report for bf16 GEMMs;
    # H100s reach a smaller share of their larger peak.
    flops_efficiency: float = 0.65
    hbm_efficiency: float = 0.85  # assumed: decode attention/GEMV kernels reach 80-90% of peak
    link_efficiency: float = 0.7  # assumed: ring all-reduce bus bandwidth vs NVLink peak
    step_overhead_s: float = 2e-3  # assumed: vLLM-class CPU overhead per step with CUDA graphs
    allreduce_latency_s: float = 8e-6  # assumed: custom one-shot all-reduce on NVLink
    activation_reserve_bytes: float = 2 * GIB  # assumed: peak activations of a 8K-token chunk

    def __post_init__(self) -> None:
        if not is_int(self.tp) or self.tp < 1:
            raise ValueError(f"StepCostModel.tp must be an integer >= 1, got {self.tp!r}")
        if self.model.num_kv_heads % self.tp:
            raise ValueError(f"StepCostModel.tp={self.tp} must divide num_kv_heads="
                             f"{self.model.num_kv_heads} (KV heads are split across ranks)")
        if not is_int(self.block_size) or (
                self.block_size < 1):
            raise ValueError(f"StepCostModel.block_size must be an integer >= 1, got "
                             f"{self.block_size!r}")
        for attr in ("flops_efficiency", "hbm_efficiency", "link_efficiency"):
            value = getattr(self, attr)
            if not (isinstance(value, (int, float)) and 0 < value <= 1):
                raise ValueError(f"StepCostModel.{attr} must be in (0, 1], got {value!r}")
        _check_count("StepCostModel.step_overhead_s", self.step_overhead_s)
        _check_count("StepCostModel.allreduce_latency_s", self.allreduce_latency_s)
        _check_count("StepCostModel.activation_reserve_bytes", self.activation_reserve_bytes)
        if self.default_kv_memory_bytes() <= 0:
            raise ValueError(f"StepCostModel {self.name!r}: the weights "
                             f"({self.weight_bytes:.3g} B) leave no KV memory on {self.gpu.name}")

    # --- sizes ------------------------------------------------------------------------------
    @property
    def params_per_gpu(self) -> float:
        return self.model.params / self.tp

    @property
    def weight_bytes(self) -> float:
        """Weights one GPU reads every step."""
        return self.params_per_gpu * self.model.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes per token on one GPU (all layers, this rank's KV heads)."""
        return self.model.kv_bytes_per_token // self.tp

    @property
    def block_bytes(self) -> int:
        """Bytes of one KV block on one GPU."""
        return self.kv_bytes_per_token * self.block_size

    @property
    def kv_spec(self) -> KVSpec:
        """The per-GPU block shape, for sizing a `BlockPool` like this preset."""
        return KVSpec(num_layers=self.model.num_layers,
                      num_kv_heads=self.model.num_kv_heads // self.tp,
                      head_dim=self.model.head_dim, dtype="bfloat16",
                      block_size=self.block_size)

    def default_kv_memory_bytes(self, gpu_memory_utilization: float = 0.9) -> float:
        """KV budget as vLLM sizes it: a share of device memory less weights and activations.

        Args:
            gpu_memory_utilization: the share of device memory the engine may use.

        Returns:
            Bytes left for KV blocks on one GPU.
        """
        return (self.gpu.hbm_bytes * gpu_memory_utilization - self.weight_bytes
                - self.activation_reserve_bytes)

    def num_blocks(self, num_bytes: float) -> int:
        """KV blocks that fit in `num_bytes` of one GPU (or of host memory)."""
        _check_count("num_bytes", num_bytes)
        return int(num_bytes // self.block_bytes)

    # --- time -------------------------------------------------------------------------------
    @property
    def achievable_flops(self) -> float:
        return self.gpu.peak_flops * self.flops_efficiency

    @property
    def achievable_hbm_bw(self) -> float:
        return self.gpu.hbm_bw * self.hbm_efficiency

    def _flops(self, tokens: float, attention_pairs: float) -> float:
        two_params, attention = self._roofline[:2]
        return two_params * tokens + attention * attention_pairs

    def _comm_bytes_time(self, tokens: float) -> float:
        if self.tp == 1:
            return 0.0
        # Megatron TP: two all-reduces of [tokens, hidden] per layer; a ring moves 2(tp-1)/tp
        # of the buffer over each link.
        buffer = tokens * self.model.hidden_size * self.model.dtype_bytes
        moved = 2 * self.model.num_layers * buffer * 2 * (self.tp - 1) / self.tp
        return moved / (self.gpu.nvlink_bw * self.link_efficiency)

    def step_time(self, prefill_tokens: float = 0, prefill_attention_pairs: float = 0,
                  prefill_context_tokens: float = 0, decode_batch: float = 0,
                  decode_context_tokens: float = 0, transfer_bytes: float = 0) -> float:
        """Seconds of one batch step.

        Args:
            prefill_tokens: prompt tokens computed in this step (all chunks together).
            prefill_attention_pairs: sum over the chunks of `attention_pairs(new, cached)`.
            prefill_context_tokens: cached tokens the chunks attend to (KV read once each).
            decode_batch: requests that decode one token in this step.
            decode_context_tokens: sum of those requests' context lengths (KV read).
            transfer_bytes: host<->GPU bytes the step must wait for (loads it needs); they
                overlap with compute, so only their excess over the GPU time counts.

        Returns:
            The step's duration; 0 for an empty step.
        """
        for name, value in (("prefill_tokens", prefill_tokens),
                            ("prefill_attention_pairs", prefill_attention_pairs),
                            ("prefill_context_tokens", prefill_context_tokens),
                            ("decode_batch", decode_batch),
                            ("decode_context_tokens", decode_context_tokens),
                            ("transfer_bytes", transfer_bytes)):
            _check_count(name, value)
        return self._step_time(prefill_tokens, prefill_attention_pairs, prefill_context_tokens,
                               decode_batch, decode_context_tokens, transfer_bytes)

    def _step_time(self, prefill_tokens: float, prefill_attention_pairs: float,
                   prefill_context_tokens: float, decode_batch: float,
                   decode_context_tokens: float, transfer_bytes: float = 0) -> float:
        """`step_time` without the argument checks: the simulator's inner loop, whose
        figures are counts it made itself (the checks were a third of a decode step)."""
        tokens = prefill_tokens + decode_batch
        two_params, attention, flops, kv_bytes, weights, hbm_bw, pcie_bw = self._roofline
        if tokens == 0:
            return transfer_bytes / pcie_bw
        compute = two_params * tokens + attention * (prefill_attention_pairs
                                                     + decode_context_tokens)  # _flops
        compute /= flops
        kv_read = (prefill_context_tokens + decode_context_tokens) * kv_bytes
        kv_written = tokens * kv_bytes
        memory = (weights + kv_read + kv_written) / hbm_bw
        comm = self._comm_bytes_time(tokens)
        if self.tp > 1:
            comm += 2 * self.model.num_layers * self.allreduce_latency_s
        gpu = max(compute, memory) + comm
        return self.step_overhead_s + max(gpu, transfer_bytes / pcie_bw)

    def decode_step_times(self, batch: int, contexts: np.ndarray) -> np.ndarray:
        """`_step_time(0, 0, 0, batch, c)` for each decode context `c` of `contexts` (an int
        array), with the same float operations in the same order, so every element equals
        the scalar call exactly (a simulator's decode run times all its steps at once)."""
        two_params, attention, flops, kv_bytes, weights, hbm_bw, pcie_bw = self._roofline
        compute = two_params * batch + attention * contexts
        compute /= flops
        memory = (weights + contexts * kv_bytes + batch * kv_bytes) / hbm_bw
        comm = self._comm_bytes_time(batch)
        if self.tp > 1:
            comm += 2 * self.model.num_layers * self.allreduce_latency_s
        gpu = np.maximum(compute, memory) + comm
        return self.step_overhead_s + np.maximum(gpu, 0 / pcie_bw)

    @cached_property
    def _roofline(self) -> tuple[float, float, float, int, float, float, float]:
        """`_step_time`'s constants, computed once instead of every step: 2 x params
        (linear layers) and the attention FLOPs per (query, key) pair (QK^T and PV: 2 FLOPs
        per multiply-add each, over this rank's share of the heads), then the properties."""
        return (2 * self.params_per_gpu,
                4 * self.model.hidden_size / self.tp * self.model.num_layers,
                self.achievable_flops, self.kv_bytes_per_token, self.weight_bytes,
                self.achievable_hbm_bw, self.gpu.pcie_bw)

    def prefill_time(self, tokens: int, context: int = 0) -> float:
        """Seconds of a step that only prefills `tokens` new tokens over `context` cached ones.

        Args:
            tokens: new prompt tokens.
            context: tokens already in the cache before them.

        Returns:
            The step's duration.
        """
        return self.step_time(prefill_tokens=tokens,
                              prefill_attention_pairs=attention_pairs(tokens, context),
                              prefill_context_tokens=context)

    def decode_step_time(self, batch: int, context_tokens: int) -> float:
        """Seconds of a step that decodes one token for each of `batch` requests.

        Args:
            batch: requests in the decode batch.
            context_tokens: the sum of their context lengths.

        Returns:
            The step's duration.
        """
        return self.step_time(decode_batch=batch, decode_context_tokens=context_tokens)

    def transfer_time(self, num_bytes: float) -> float:
        """Seconds to move `num_bytes` between host and GPU, one way, over PCIe."""
        _check_count("num_bytes", num_bytes)
        return num_bytes / self.gpu.pcie_bw

    def recompute_cost(self, tokens: int, context: int = 0) -> float:
        """GPU seconds that rebuilding `tokens` discarded tokens adds to a busy batch.

        The marginal cost: compute (and TP traffic) of the tokens, not the step's fixed
        overhead or weight reads, which the batch pays anyway. Rebuilding a context's tail
        attends to its head, hence `context`.

        Args:
            tokens: tokens to prefill again.
            context: cached tokens before them.

        Returns:
            Seconds.
        """
        _check_count("tokens", tokens)
        _check_count("context", context)
        flops = self._flops(tokens, attention_pairs(tokens, context))
        return flops / self.achievable_flops + self._comm_bytes_time(tokens)

    def reload_cost(self, tokens: int) -> float:
        """Seconds to load `tokens` tokens of KV from host memory (PCIe, one way)."""
        _check_count("tokens", tokens)
        return self.transfer_time(tokens * self.kv_bytes_per_token)


    # -- kvsaga.policy.CostModel protocol: what the eviction policies price decisions with --
    def recompute_s(self, num_tokens: int, context_tokens: int) -> float:
        """Policy protocol: `recompute_cost(num_tokens, context_tokens)`."""
        return self.recompute_cost(num_tokens, context_tokens)

    def reload_s(self, num_blocks: int) -> float:
        """Policy protocol: seconds to copy `num_blocks` blocks host -> GPU over PCIe."""
        _check_count("num_blocks", num_blocks)
        return self.transfer_time(num_blocks * self.block_bytes)


def attention_pairs(new_tokens: int, cached_tokens: int) -> int:
    """(query, key) pairs of a causal prefill of `new_tokens` after `cached_tokens`."""
    return new_tokens * cached_tokens + new_tokens * (new_tokens + 1) // 2


PRESETS: Registry[StepCostModel] = Registry("preset", {
    "a100-llama3-8b": StepCostModel("a100-llama3-8b", A100_80GB, LLAMA3_8B, tp=1),
    # H100s reach a smaller share of their peak (assumed, as above).
    "h100-llama3-8b": StepCostModel("h100-llama3-8b", H100_SXM, LLAMA3_8B, tp=1,
                                flops_efficiency=0.55),
    # 70B in bf16 is 141 GB: TP=4 leaves each 80 GB GPU 35 GB of weights and ~35 GB of KV.
    "a100-llama3-70b": StepCostModel("a100-llama3-70b", A100_80GB, LLAMA3_70B, tp=4),
    "h100-llama3-70b": StepCostModel("h100-llama3-70b", H100_SXM, LLAMA3_70B, tp=4,
                                 flops_efficiency=0.55),
})


def get_preset(name: str) -> StepCostModel:
    """The preset called `name`; raises UnknownNameError (a ValueError) naming the known ones."""
    return PRESETS[name]
