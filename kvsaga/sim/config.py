"""SimConfig: what one simulator run models (GPU and model preset, capacity, policy,
scheduler limits, hints, host tier)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from kvsaga.sim.cost import PRESETS, StepCostModel


@dataclass(frozen=True)
class SimConfig:
    """How to serve a trace.

    Args:
        preset: a `PRESETS` name or a `StepCostModel`; gives step times and the KV block shape.
        num_gpu_blocks: KV capacity in blocks; None sizes it from `kv_memory_bytes`.
        kv_memory_bytes: KV capacity in bytes (of one GPU); None uses the preset's default budget.
        policy: an eviction policy name (`kvsaga.policy.POLICIES`); policies that price
            their decisions get this preset as their cost model.
        max_num_batched_tokens: token budget of one batch step (chunked prefill).
        max_num_seqs: most requests running at once.
        hints: what `finish_step` tells the policy: "tool" (the tool's name), "oracle" (the
            name and the true pause, as `expected_s`), or "none".
        num_host_blocks: host-tier capacity in blocks; None sizes it from `host_memory_bytes`.
        host_memory_bytes: host-tier capacity in bytes; None (and no `num_host_blocks`): no host
            tier, every victim is discarded.
        resume_hints: the engine calls `resume_hint` when a paused session's tool returns
            (its next step is ready), as kvsaga-serve does when the next request arrives.
        admission: "reserve" (default): a waiting step is admitted only if its whole prompt
            plus `reserve_decode_tokens` fits in the free and evictable blocks left after
            every running step's own reserve (the rest of its prompt and its next
            `reserve_decode_tokens` decode tokens), and resumed steps whose context is still
            resident go before cold ones, within `max_bypass`. "fifo": vLLM's rule (the
            head of the queue is admitted when its first chunk fits). The same rule serves
            every policy.
        reserve_decode_tokens: decode tokens of headroom reserved per running step.
        max_bypass: how many later requests may be admitted ahead of the head of the queue
            (for being warm) before the head must go next.
        admission_window: how many waiting requests, from the head, are looked at for a warm
            one.
    """

    preset: str | StepCostModel = "a100-llama3-8b"
    num_gpu_blocks: int | None = None
    kv_memory_bytes: float | None = None
    policy: str = "lru"
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 256
    hints: str = "tool"
    num_host_blocks: int | None = None
    host_memory_bytes: float | None = None
    resume_hints: bool = True
    admission: str = "reserve"
    reserve_decode_tokens: int = 64
    max_bypass: int = 16
    admission_window: int = 16

    def __post_init__(self) -> None:
        if isinstance(self.preset, str):
            PRESETS[self.preset]  # raises UnknownNameError listing the presets
        elif not isinstance(self.preset, StepCostModel):
            raise ValueError(f"preset must be a preset name or a StepCostModel, got "
                             f"{self.preset!r}")
        if self.num_gpu_blocks is not None and self.kv_memory_bytes is not None:
            raise ValueError(f"give num_gpu_blocks or kv_memory_bytes, not both (got "
                             f"{self.num_gpu_blocks!r} and {self.kv_memory_bytes!r})")
        if self.num_host_blocks is not None and self.host_memory_bytes is not None:
            raise ValueError(f"give num_host_blocks or host_memory_bytes, not both (got "
                             f"{self.num_host_blocks!r} and {self.host_memory_bytes!r})")
        if self.num_host_blocks is not None and (
                isinstance(self.num_host_blocks, bool) or not isinstance(self.num_host_blocks, int)
                or self.num_host_blocks < 0):
            raise ValueError(f"SimConfig.num_host_blocks must be an integer >= 0, got "
                             f"{self.num_host_blocks!r}")
        if self.host_memory_bytes is not None and not (
                isinstance(self.host_memory_bytes, (int, float))
                and not isinstance(self.host_memory_bytes, bool)
                and math.isfinite(self.host_memory_bytes) and self.host_memory_bytes >= 0):
            raise ValueError(f"SimConfig.host_memory_bytes must be a finite number >= 0, got "
                             f"{self.host_memory_bytes!r}")
        if not isinstance(self.resume_hints, bool):
            raise ValueError(f"SimConfig.resume_hints must be a bool, got {self.resume_hints!r}")
        for name in ("num_gpu_blocks", "max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ValueError(f"SimConfig.{name} must be an integer >= 1, got {value!r}")
        if self.kv_memory_bytes is not None and not (
                isinstance(self.kv_memory_bytes, (int, float))
                and math.isfinite(self.kv_memory_bytes) and self.kv_memory_bytes > 0):
            raise ValueError(f"SimConfig.kv_memory_bytes must be a finite number > 0, got "
                             f"{self.kv_memory_bytes!r}")
        if self.admission not in ("reserve", "fifo"):
            raise ValueError(f"SimConfig.admission must be 'reserve' or 'fifo', got "
                             f"{self.admission!r}")
        for name in ("reserve_decode_tokens", "max_bypass", "admission_window"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"SimConfig.{name} must be an integer >= 0, got {value!r}")
        if self.hints not in ("tool", "oracle", "none"):
            raise ValueError(f"SimConfig.hints must be 'tool', 'oracle' or 'none', got "
                             f"{self.hints!r}")

    @property
    def cost(self) -> StepCostModel:
        return PRESETS[self.preset] if isinstance(self.preset, str) else self.preset

    def blocks(self) -> int:
        """The KV capacity in blocks."""
        if self.num_gpu_blocks is not None:
            return self.num_gpu_blocks
        cost = self.cost
        return cost.num_blocks(cost.default_kv_memory_bytes() if self.kv_memory_bytes is None
                               else self.kv_memory_bytes)

    def host_blocks(self) -> int:
        """The host-tier capacity in blocks (0: no host tier)."""
        if self.num_host_blocks is not None:
            return self.num_host_blocks
        return 0 if self.host_memory_bytes is None else self.cost.num_blocks(self.host_memory_bytes)
