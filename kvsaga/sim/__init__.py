"""Trace replay: the trace format, workload generators, the cost model and the simulator.

    from kvsaga.sim import generate, simulate, SimConfig
    sessions = generate("swe", 200, seed=1)
    result = simulate(sessions, SimConfig(preset="a100-llama3-8b", policy="lru"))

See docs/workloads.md (families, sources, cost model) and docs/simulator.md.
"""

from __future__ import annotations

from kvsaga.sim.compare import compare, peak_prompt_working_set, peak_working_set
from kvsaga.sim.cost import PRESETS, GPUSpec, ModelSpec, StepCostModel, attention_pairs, get_preset
from kvsaga.sim.exhaustive import Optimum, ScriptedPolicy, exhaustive_optimum
from kvsaga.sim.family import ToolSpec, WorkloadSpec
from kvsaga.sim.metrics import SimResult
from kvsaga.sim.oracle import TraceOracle
from kvsaga.sim.registry import UnknownNameError
from kvsaga.sim.simulator import SimConfig, Simulator, simulate
from kvsaga.sim.tokens import TokenSynthesizer, output_token_ids, prompt_token_ids
from kvsaga.sim.trace import Session, SharedPrefix, Step, TraceError, load_trace, write_trace
from kvsaga.sim.workloads import WORKLOADS, generate

__all__ = [
    "PRESETS",
    "WORKLOADS",
    "GPUSpec",
    "ModelSpec",
    "Optimum",
    "ScriptedPolicy",
    "Session",
    "SharedPrefix",
    "SimConfig",
    "SimResult",
    "Simulator",
    "Step",
    "StepCostModel",
    "TokenSynthesizer",
    "ToolSpec",
    "TraceOracle",
    "TraceError",
    "UnknownNameError",
    "WorkloadSpec",
    "attention_pairs",
    "compare",
    "exhaustive_optimum",
    "generate",
    "get_preset",
    "load_trace",
    "output_token_ids",
    "peak_prompt_working_set",
    "peak_working_set",
    "prompt_token_ids",
    "simulate",
    "write_trace",
]
