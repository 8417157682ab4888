"""The cost protocol that eviction policies price their decisions with.

A policy compares two ways of getting an evicted block back, and prices the memory a kept
block holds, in one unit: GPU seconds.

- `recompute_s(num_tokens, context_tokens)`: prefill time to rebuild `num_tokens` tokens of
  KV that follow `context_tokens` tokens still cached (rebuilding a context's tail attends to
  its head, so deeper blocks cost more).
- `reload_s(num_blocks)`: time to copy `num_blocks` KV blocks from the host tier back to the
  GPU (one way, over PCIe).

That is the whole protocol: any object with these two methods will do (`kvsaga.sim.cost`
adapts its per-GPU, per-model presets to it). Both return seconds >= 0 and must be cheap
(policies call them per victim).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kvsaga._validate import check_positive_int, is_number


@runtime_checkable
class CostModel(Protocol):
    """What rebuilding and reloading KV cost, in seconds: pure functions of their arguments
    (ttl memoizes a group's price by its size and position until the policy is bound again,
    so a model whose answers drift would be priced from stale memos)."""

    def recompute_s(self, num_tokens: int, context_tokens: int) -> float:
        """Prefill seconds to rebuild `num_tokens` tokens after `context_tokens` cached ones."""
        ...

    def reload_s(self, num_blocks: int) -> float:
        """Seconds to copy `num_blocks` blocks from the host tier to the GPU."""
        ...


@dataclass(frozen=True, slots=True)
class PrefillCost:
    """The default cost model: Llama-3.1-8B in bf16 on one A100-80GB, prefill-bound.

    recompute_s(n, c) = s_per_token * n + s_per_token_pair * (n * c + n * (n + 1) / 2)
    reload_s(k)       = k * block_bytes / host_bandwidth + transfer_latency_s   (k > 0)

    Constants (their sources: docs/workloads.md, "Cost model"):
    - s_per_token = 1.0e-4 s: 2 FLOPs per parameter per token (16 GFLOP for 8B) at 160 TFLOP/s,
      about half of the A100's 312 TFLOP/s bf16 peak (a typical prefill MFU).
    - s_per_token_pair = 3.3e-9 s: causal attention costs 4 * num_heads * head_dim * num_layers
      = 4 * 4096 * 32 = 524,288 FLOPs per (query, key) pair, at the same 160 TFLOP/s.
    - block_bytes = 2 MiB: 128 KiB of KV per token (32 layers x 8 KV heads x 128 x 2 x 2 B)
      times 16 tokens per block.
    - host_bandwidth = 25 GB/s: sustained pinned PCIe Gen4 x16 on an A100.
    - transfer_latency_s = 10 us: launch and synchronisation of one batched copy.

    With these, reloading one block (~94 us) is ~17x cheaper than recomputing it (1.6 ms at
    context 0), so a policy offloads rather than discards whenever a host tier has room.
    """

    s_per_token: float = 1.0e-4
    s_per_token_pair: float = 3.3e-9
    block_bytes: int = 2 * 1024 * 1024
    host_bandwidth: float = 25e9
    transfer_latency_s: float = 10e-6

    def __post_init__(self) -> None:
        for name in ("s_per_token", "s_per_token_pair", "host_bandwidth", "transfer_latency_s"):
            v = getattr(self, name)
            if not is_number(v) or not v >= 0:
                raise ValueError(f"PrefillCost.{name} must be a number >= 0, got {v!r}")
        if self.host_bandwidth == 0:
            raise ValueError("PrefillCost.host_bandwidth must be > 0")
        check_positive_int("PrefillCost.block_bytes", self.block_bytes)

    @classmethod
    def for_model(
        cls,
        *,
        linear_params: float,
        attention_flops_per_pair: float,
        block_bytes: int,
        prefill_flops: float,
        host_bandwidth: float,
        transfer_latency_s: float = 10e-6,
    ) -> PrefillCost:
        """Price one model on one device (the default above is this for Llama-3.1-8B on an
        A100 at 160 TFLOP/s and 25 GB/s).

        Args:
            linear_params: weights every prompt token passes through (2 FLOPs each).
            attention_flops_per_pair: FLOPs of one causal (query, key) pair over all layers
                (QK^T and PV: 4 x query heads x head dim x layers).
            block_bytes: bytes of one KV block.
            prefill_flops: FLOP/s a prefill achieves on the device (not its peak).
            host_bandwidth: host <-> device bytes/s of block copies, one way.
            transfer_latency_s: fixed cost of one batched copy.
        Raises:
            ValueError: a figure is not a positive number.
        """
        for name, v in (("linear_params", linear_params),
                        ("attention_flops_per_pair", attention_flops_per_pair),
                        ("prefill_flops", prefill_flops)):
            if not is_number(v) or not v > 0:
                raise ValueError(f"PrefillCost.for_model: {name} must be a number > 0, got {v!r}")
        return cls(
            s_per_token=2 * linear_params / prefill_flops,
            s_per_token_pair=attention_flops_per_pair / prefill_flops,
            block_bytes=block_bytes,
            host_bandwidth=host_bandwidth,
            transfer_latency_s=transfer_latency_s,
        )

    def recompute_s(self, num_tokens: int, context_tokens: int) -> float:
        """Linear (weights) plus quadratic (causal attention) prefill time.

        Args:
            num_tokens: tokens to prefill again (>= 0).
            context_tokens: cached tokens before them (>= 0).
        Returns:
            Seconds.
        """
        n, c = max(num_tokens, 0), max(context_tokens, 0)
        return self.s_per_token * n + self.s_per_token_pair * (n * c + n * (n + 1) / 2)

    def reload_s(self, num_blocks: int) -> float:
        """One batched host-to-GPU copy of `num_blocks` blocks; 0 for none."""
        if num_blocks <= 0:
            return 0.0
        return num_blocks * self.block_bytes / self.host_bandwidth + self.transfer_latency_s
