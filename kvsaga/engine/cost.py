"""The eviction cost model of the model being served, on the device serving it.

Policies price a victim by what getting it back costs (`kvsaga.policy.CostModel`): prefill
seconds to recompute it, or copy seconds to reload it from the host tier. Those depend on
the model (weights per token, attention FLOPs per token pair, KV bytes per block) and on the
device (achieved prefill FLOP/s, host <-> device bandwidth), so the engine builds a
`PrefillCost` from both instead of using the A100 / Llama-3.1-8B default:

    s_per_token      = 2 * linear_params / prefill_flops
    s_per_token_pair = 4 * num_heads * head_dim * num_layers / prefill_flops
    block_bytes      = KVSpec.bytes_per_block
    reload_s(k)      = k * block_bytes / host_bandwidth + transfer_latency_s

The device figures come from `CUDA_TABLE` for the cards it names, in bf16/fp16 (peak dense
tensor FLOP/s x `PREFILL_MFU`, and sustained pinned PCIe bandwidth, NVLink-C2C on a GH200),
and are measured otherwise (CPU, other cards, fp32): a few matmuls of the model's own shape
and a few block copies (~16 MiB), well under a second once per process and shape. Measured figures
move with the machine's load: they price decisions, they are not benchmarks.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass

import torch

from kvsaga.config import KVSpec
from kvsaga.engine.model_config import ModelConfig
from kvsaga.policy.cost import PrefillCost

log = logging.getLogger("kvsaga.engine")

# Share of peak dense FLOP/s a prefill reaches: the assumption behind `PrefillCost`'s
# default (160 of the A100's 312 TFLOP/s); the simulator's presets assume 0.55-0.65.
PREFILL_MFU = 0.5
# Launch and synchronisation of one batched copy (assumed, as in `PrefillCost`).
TRANSFER_LATENCY_S = 10e-6
# (name fragment of torch.cuda.get_device_name, bf16 dense peak FLOP/s, pinned PCIe B/s one
# way), first match wins. Peaks from NVIDIA's datasheets; PCIe: ~80% of Gen4 / Gen5 x16's
# 31.5 / 63 GB/s, the sustained figures the simulator's presets use. "GH200" contains "H200",
# so it comes first: its host link is NVLink-C2C, 900 GB/s both ways together (GH200
# datasheet), taken at the same ~80% of one direction's 450 GB/s.
CUDA_TABLE: tuple[tuple[str, float, float], ...] = (
    ("GH200", 989e12, 360e9),
    ("H200", 989e12, 50e9),
    ("H100 PCIe", 756e12, 50e9),
    ("H100", 989e12, 50e9),
    ("A100", 312e12, 25e9),
)
_TABLE_DTYPES = (torch.bfloat16, torch.float16)
_TOKENS = 128  # rows of the measured matmul: one prefill chunk


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What the cost model needs to know about a device.

    Attributes:
        name: e.g. "NVIDIA H200" or "cpu".
        prefill_flops: FLOP/s the model's prefill matmuls achieve.
        host_bandwidth: bytes/s of KV block copies between host and device tiers.
        source: "table" (`CUDA_TABLE`) or "measured".
    """

    name: str
    prefill_flops: float
    host_bandwidth: float
    source: str


def device_profile(
    device: torch.device, dtype: torch.dtype, config: ModelConfig, block_bytes: int
) -> DeviceProfile:
    """The table's figures for a known card in bf16/fp16; measured ones otherwise."""
    if device.type == "cuda" and dtype in _TABLE_DTYPES:
        profile = table_profile(torch.cuda.get_device_name(device))
        if profile is not None:
            return profile
    return measure_device(
        str(device), dtype, config.hidden_size, config.intermediate_size, block_bytes
    )


def table_profile(device_name: str) -> DeviceProfile | None:
    """`CUDA_TABLE`'s entry for a CUDA device name, or None if it names no listed card."""
    for fragment, peak, pcie in CUDA_TABLE:
        if fragment in device_name:
            return DeviceProfile(device_name, peak * PREFILL_MFU, pcie, "table")
    return None


@functools.lru_cache(maxsize=8)
def measure_device(
    device: str, dtype: torch.dtype, hidden: int, intermediate: int, block_bytes: int
) -> DeviceProfile:
    """Time `[128, hidden] @ [hidden, intermediate]` matmuls and block-sized copies.

    Copies go host -> device from pinned memory on CUDA, and memory to memory on CPU (where
    both tiers live in host memory).
    """
    dev = torch.device(device)
    a = torch.randn(_TOKENS, hidden, dtype=dtype, device=dev)
    b = torch.randn(hidden, intermediate, dtype=dtype, device=dev)
    flops = 2 * _TOKENS * hidden * intermediate / _best_time(dev, lambda: a @ b)
    n = max(block_bytes, (16 * 2**20) // block_bytes * block_bytes)  # whole blocks, ~16 MiB
    src = torch.empty(n, dtype=torch.uint8, pin_memory=dev.type == "cuda")
    dst = torch.empty(n, dtype=torch.uint8, device=dev)
    bandwidth = n / _best_time(dev, lambda: dst.copy_(src, non_blocking=True))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else dev.type
    profile = DeviceProfile(name, flops, bandwidth, "measured")
    log.info("measured %s in %s: %.3g FLOP/s prefill, %.3g B/s block copies",
             name, dtype, flops, bandwidth)
    return profile


def _best_time(device: torch.device, fn, reps: int = 5) -> float:
    """Fastest of `reps` timed runs after one warm-up, in seconds (never 0)."""
    best = float("inf")
    for i in range(reps + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i:
            best = min(best, time.perf_counter() - start)
    return max(best, 1e-9)


def model_cost(config: ModelConfig, spec: KVSpec, profile: DeviceProfile) -> PrefillCost:
    """The `PrefillCost` of serving `config` (blocks shaped by `spec`) on `profile`."""
    h, q, kv = config.hidden_size, config.q_size, config.kv_size
    per_layer = h * (q + 2 * kv) + q * h + 3 * h * config.intermediate_size
    return PrefillCost.for_model(
        linear_params=config.num_layers * per_layer,
        attention_flops_per_pair=4 * q * config.num_layers,
        block_bytes=spec.bytes_per_block,
        prefill_flops=profile.prefill_flops,
        host_bandwidth=profile.host_bandwidth,
        transfer_latency_s=TRANSFER_LATENCY_S,
    )
