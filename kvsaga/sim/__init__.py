"""Trace replay: the trace format, workload generators and the step-time cost model.

    from kvsaga.sim import generate, write_trace, PRESETS
    sessions = generate("swe", 200, seed=1)
    write_trace(sessions, "swe.jsonl")

See docs/workloads.md for the workload families, their sources and the cost model.
"""

from __future__ import annotations

from kvsaga.sim.cost import PRESETS, CostModel, GPUSpec, ModelSpec, attention_pairs, get_preset
from kvsaga.sim.family import ToolSpec, WorkloadSpec
from kvsaga.sim.registry import UnknownNameError
from kvsaga.sim.tokens import TokenSynthesizer, output_token_ids, prompt_token_ids
from kvsaga.sim.trace import Session, SharedPrefix, Step, TraceError, load_trace, write_trace
from kvsaga.sim.workloads import WORKLOADS, generate

__all__ = [
    "PRESETS",
    "WORKLOADS",
    "CostModel",
    "GPUSpec",
    "ModelSpec",
    "Session",
    "SharedPrefix",
    "Step",
    "TokenSynthesizer",
    "ToolSpec",
    "TraceError",
    "UnknownNameError",
    "WorkloadSpec",
    "attention_pairs",
    "generate",
    "get_preset",
    "load_trace",
    "output_token_ids",
    "prompt_token_ids",
    "write_trace",
]
