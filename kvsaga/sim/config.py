"""SimConfig: what one simulator run models (GPU and model preset, capacity, policy,
scheduler limits, hints, host tier)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kvsaga._validate import is_int, is_number
from kvsaga.manager import KVCacheManager
from kvsaga.scheduler import DEFAULT_SCHEDULER, SCHEDULERS, make_scheduler
from kvsaga.sim.cost import PRESETS, StepCostModel

# The most blocks one simulation holds in each tier. Every block costs host memory whatever
# the trace, in each worker of a run: per-block lists and the core's pool (docs/simulator.md,
# `kvsaga sim`: 289 B a GPU block on the C++ core with lru, up to 694 B with adaptive on the
# Python core). 2**22 keeps one simulation under ~3 GB and is over 160x the presets' default
# capacity; before session 57 the GPU tier's cap was the C++ core's 2**30 (~300-700 GB), and
# a large --kv-memory ended in an out-of-memory kill.
MAX_GPU_BLOCKS = 2**22
# The host tier keeps Python lists of every block (about 1.3 GB and 9 s per simulation at
# 4M blocks). 8 TiB of 2 MiB blocks, as the GPU tier's.
MAX_HOST_BLOCKS = 2**22


def block_cap_error(what: str, blocks: int, most: int, cost: StepCostModel) -> ValueError:
    """The error for `what` (a flag or field with its value) holding `blocks` blocks of
    `cost`'s, more than `most`: it names the count, the cap and why there is one."""
    return ValueError(f"{what} is {blocks:,} blocks of {cost.block_bytes:,} B (preset "
                      f"{cost.name}): more than the simulator's {most:,} "
                      f"({most * cost.block_bytes / 2**40:g}T), whose per-block bookkeeping "
                      f"takes host memory (docs/simulator.md)")


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
        resume_hints: the simulator calls `manager.resume_hint` when a paused session's tool
            returns (its next step is ready). kvsaga-serve does the same when the session's
            next request arrives (`Serving.complete` -> `LLMEngine.resume_hint`); False
            models a front end that sends no such signal.
        scheduler: a `kvsaga.scheduler.SCHEDULERS` name: "workflow" (default; workflow-
            atomic session admission with Agent Fair Share) or "fcfs" (vLLM v1's rule). The
            engine runs the same scheduler; the same one serves every policy.
        scheduler_params: the scheduler's own parameters (`scheduler_params(name)`).
        slo_factor: a task meets its SLO when its TCT is at most slo_factor x its unloaded
            TCT (its tool time plus its steps alone on an idle GPU with unbounded KV).
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
    scheduler: str = DEFAULT_SCHEDULER
    scheduler_params: Mapping[str, Any] | None = None
    slo_factor: float = 3.0

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
                not is_int(self.num_host_blocks) or self.num_host_blocks < 0):
            raise ValueError(f"SimConfig.num_host_blocks must be an integer >= 0, got "
                             f"{self.num_host_blocks!r}")
        if self.host_memory_bytes is not None and not (
                is_number(self.host_memory_bytes)
                and math.isfinite(self.host_memory_bytes) and self.host_memory_bytes >= 0):
            raise ValueError(f"SimConfig.host_memory_bytes must be a finite number >= 0, got "
                             f"{self.host_memory_bytes!r}")
        if self.host_memory_bytes and not self.host_blocks():
            # As the engine's: 0 means no host tier; a size that rounds down to no block
            # ran without one, with nothing said (and compare's "+host" row so labelled).
            raise ValueError(f"SimConfig.host_memory_bytes={self.host_memory_bytes:,} B holds "
                             f"no host block ({self.cost.block_bytes:,} B each with preset "
                             f"{self.cost.name})")
        if not isinstance(self.resume_hints, bool):
            raise ValueError(f"SimConfig.resume_hints must be a bool, got {self.resume_hints!r}")
        for name in ("num_gpu_blocks", "max_num_batched_tokens", "max_num_seqs"):
            value = getattr(self, name)
            if value is not None and (not is_int(value) or value < 1):
                raise ValueError(f"SimConfig.{name} must be an integer >= 1, got {value!r}")
        if self.kv_memory_bytes is not None and not (
                is_number(self.kv_memory_bytes)
                and math.isfinite(self.kv_memory_bytes) and self.kv_memory_bytes > 0):
            raise ValueError(f"SimConfig.kv_memory_bytes must be a finite number > 0, got "
                             f"{self.kv_memory_bytes!r}")
        self._check_caps()
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"SimConfig.scheduler: unknown scheduler {self.scheduler!r}; "
                             f"choose one of {sorted(SCHEDULERS)}")
        if self.scheduler_params is not None:
            if not isinstance(self.scheduler_params, Mapping):
                raise ValueError(f"SimConfig.scheduler_params must be a mapping, got "
                                 f"{self.scheduler_params!r}")
            # The batch limits are fields of their own, which `Simulator` passes beside
            # these: given here too, they failed there with a TypeError naming neither.
            limits = sorted({"max_num_seqs", "max_num_batched_tokens"}
                            & set(self.scheduler_params))
            if limits:
                raise ValueError(f"SimConfig.scheduler_params: {limits[0]!r} is a field of "
                                 f"its own (SimConfig.{limits[0]}), not a scheduler parameter")
            # Build one over a one-block manager: bad names and values fail here, clearly.
            make_scheduler(self.scheduler, KVCacheManager(self.cost.kv_spec, 1),
                           **self.scheduler_params)
        if (not is_number(self.slo_factor)
                or not math.isfinite(self.slo_factor) or self.slo_factor <= 0):
            raise ValueError(f"SimConfig.slo_factor must be a finite number > 0, got "
                             f"{self.slo_factor!r}")
        if self.hints not in ("tool", "oracle", "none"):
            raise ValueError(f"SimConfig.hints must be 'tool', 'oracle' or 'none', got "
                             f"{self.hints!r}")

    def _check_caps(self) -> None:
        """ValueError naming the field whose tier holds more blocks than `MAX_GPU_BLOCKS` /
        `MAX_HOST_BLOCKS`: said here, before any simulator allocates them."""
        for field, blocks, most in (
                ("num_gpu_blocks" if self.num_gpu_blocks is not None else "kv_memory_bytes",
                 self.blocks(), MAX_GPU_BLOCKS),
                ("num_host_blocks" if self.num_host_blocks is not None
                 else "host_memory_bytes", self.host_blocks(), MAX_HOST_BLOCKS)):
            if blocks > most:
                value = getattr(self, field)
                shown = (f"SimConfig.{field}={value:,}" if field.startswith("num_") else
                         f"SimConfig.{field}={value:,.0f} B" if value is not None else
                         "the preset's default KV memory")
                raise block_cap_error(shown, blocks, most, self.cost)

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
