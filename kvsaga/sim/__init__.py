"""Trace replay: the trace format, workload generators, the cost model and the simulator.

    from kvsaga.sim import generate, simulate, SimConfig
    sessions = generate("swe", 200, seed=1)
    result = simulate(sessions, SimConfig(preset="a100-llama3-8b", policy="lru"))

See docs/workloads.md (families, sources, cost model) and docs/simulator.md.
"""

from __future__ import annotations

from kvsaga.sim.cost import PRESETS, CostModel, GPUSpec, ModelSpec, attention_pairs, get_preset
from kvsaga.sim.family import ToolSpec, WorkloadSpec
from kvsaga.sim.metrics import SimResult
from kvsaga.sim.registry import UnknownNameError
from kvsaga.sim.simulator import SimConfig, Simulator, simulate
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
    "SimConfig",
    "SimResult",
    "Simulator",
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
    "simulate",
    "write_trace",
]
