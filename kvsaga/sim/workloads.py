"""The calibrated workload families and `generate`, the one call that makes a trace.

Every constant cites its source as [name]; docs/workloads.md gives the figures and the full
references:
[SAGA] SAGA's synthetic SWE-bench / WebArena generator and its tool-latency defaults;
[Continuum] Continuum's mini-swe-agent (SWE-bench) and BFCL v4 traces; [Exgentic] Exgentic's
10,056 agent sessions; [TraceLab] TraceLab's Claude Code + Codex sessions; [Manus] Manus's
context-engineering blog; [Mooncake] Mooncake's tool-agent trace; [Alibaba] Alibaba's ATC'25
KV-reuse study; [vLLM-router] the vLLM router discussion of agent turn gaps.
Where no source gives a figure, the constant says "assumed" and why.

Observation sizes: SAGA's synthetic generator returns 350 tokens per SWE step and 800 per web
step, which grows a 37-step SWE context to only ~20K tokens, while measured SWE agents reach
70K +- 20K per task [Continuum] and average 49.1K input tokens per call [Exgentic]. We keep
SAGA's per-family ratio (web observations ~2.3x SWE's) and scale both by OBSERVATION_SCALE so
that SWE contexts land in the measured range.
"""

from __future__ import annotations

import dataclasses
import math

from kvsaga.sim.family import ToolSpec, WorkloadSpec
from kvsaga.sim.registry import Registry
from kvsaga.sim.trace import Session, check_prefix_groups

# Fits SWE final contexts to [Continuum] 70K +- 20K and [Exgentic] 49.1K mean per call.
OBSERVATION_SCALE = 4.5
# The model's window: Llama-3.1 serves 128K tokens; keep room for the last output.
MAX_CONTEXT = 120_000

# SAGA tool-latency defaults, (p50, p95) in seconds, log-normal [SAGA].
SAGA_FILE = (0.045, 0.320)
SAGA_CODE = (0.180, 2.400)
SAGA_WEB = (0.850, 4.500)


def _obs(saga_family_mean: float, relative: float) -> float:
    # A tool's mean observation: SAGA's family mean x OBSERVATION_SCALE x the tool's share.
    return saga_family_mean * OBSERVATION_SCALE * relative


SWE = WorkloadSpec(
    name="swe",
    description="SWE-bench-style coding agent: read, search, edit, run tests",
    # System prompt + tool schemas; first prompt 2-4K with the task [SAGA].
    prefix_tokens=2_100,
    task_tokens=(300, 1_800),
    # Gamma k=2 and max 150 as [SAGA] (its mean 37); mean 30 sits between [SAGA] 37 and
    # [Exgentic] 21.9 (sd 23.4; gamma k=2 gives sd 21).
    steps_mean=30.0,
    steps_shape=2.0,
    steps_min=2,
    steps_max=150,
    final_tokens=300.0,  # the closing patch summary; outputs 100-500 [SAGA]
    output_sigma=0.6,  # assumed: spreads outputs over SAGA's 100-500 range
    max_context_tokens=MAX_CONTEXT,
    tools=(
        # name, p50, p95, observation, call tokens
        ToolSpec("read_file", *SAGA_FILE, _obs(350, 1.25), 150),
        # grep: tens to hundreds of ms [TraceLab]
        ToolSpec("search", 0.080, 0.600, _obs(350, 0.6), 120),
        ToolSpec("list_dir", *SAGA_FILE, _obs(350, 0.3), 80),
        # The edit's own text is the call; the observation is a short diff confirmation.
        ToolSpec("edit_file", *SAGA_FILE, _obs(350, 0.2), 600),
        # Test runs: tens of seconds at the tail (issue 7); p99 of SAGA's code tool is 28 s.
        ToolSpec("run_tests", 2.5, 25.0, _obs(350, 1.8), 120),
        ToolSpec("bash", *SAGA_CODE, _obs(350, 0.6), 150),
    ),
    # The chain: explore (list, search, read), edit, test, repeat. Assumed, from the
    # mini-swe-agent loop that [Continuum] traces: locate -> read -> edit -> run tests.
    start={"search": 0.35, "list_dir": 0.25, "read_file": 0.30, "bash": 0.10},
    transitions={
        "search": {"read_file": 0.60, "search": 0.20, "edit_file": 0.10, "bash": 0.10},
        "list_dir": {"read_file": 0.50, "search": 0.30, "list_dir": 0.20},
        "read_file": {"read_file": 0.25, "edit_file": 0.35, "search": 0.20, "bash": 0.10,
                      "run_tests": 0.10},
        "edit_file": {"run_tests": 0.35, "edit_file": 0.25, "read_file": 0.25, "bash": 0.15},
        "run_tests": {"edit_file": 0.45, "read_file": 0.30, "search": 0.10, "bash": 0.15},
        "bash": {"edit_file": 0.30, "read_file": 0.30, "run_tests": 0.20, "search": 0.20},
    },
    arrival_rate=0.01,  # assumed: see "Arrival rates" in docs/workloads.md
)

WEB = WorkloadSpec(
    name="web",
    description="WebArena-like browsing agent: accessibility-tree observations, page actions",
    # System prompt + action space + in-context examples; first prompt 4-8K [SAGA].
    prefix_tokens=3_000,
    task_tokens=(1_000, 5_000),  # the task and the first page's tree
    steps_mean=18.0,  # [SAGA] WebArena: mean 18, max 80
    steps_shape=2.0,  # as [SAGA]'s SWE-bench generator
    steps_min=2,
    steps_max=80,
    final_tokens=120.0,  # outputs 50-200 [SAGA]
    output_sigma=0.5,  # assumed: spreads outputs over SAGA's 50-200
    max_context_tokens=MAX_CONTEXT,
    tools=(
        # Page actions: seconds-long, [SAGA] web tool 850/4,500 ms.
        ToolSpec("click", *SAGA_WEB, _obs(800, 0.75), 90),
        ToolSpec("type", 0.600, 3.000, _obs(800, 0.65), 100),
        # A navigation loads a whole page: slower, and a fresh, larger tree.
        ToolSpec("goto", 1.500, 6.000, _obs(800, 1.05), 70),
        ToolSpec("scroll", 0.300, 1.200, _obs(800, 0.6), 60),
        ToolSpec("go_back", *SAGA_WEB, _obs(800, 0.75), 60),
    ),
    # Assumed from WebArena's action space: navigate, then click and type through forms.
    start={"goto": 0.40, "click": 0.40, "type": 0.20},
    transitions={
        "click": {"click": 0.40, "type": 0.25, "scroll": 0.15, "go_back": 0.10, "goto": 0.10},
        "type": {"click": 0.70, "type": 0.15, "scroll": 0.15},
        "goto": {"click": 0.50, "type": 0.25, "scroll": 0.25},
        "scroll": {"click": 0.60, "scroll": 0.30, "go_back": 0.10},
        "go_back": {"click": 0.60, "goto": 0.20, "scroll": 0.20},
    },
    arrival_rate=0.04,  # assumed, as for swe
)

BFCL = WorkloadSpec(
    name="bfcl",
    description="BFCL-v4-like function-calling chat (web search): a few tool turns",
    prefix_tokens=1_200,  # assumed: system prompt + two function schemas
    task_tokens=(50, 300),  # a user question
    # [Continuum] BFCL v4 web search: 6.3 +- 2.3 turns -> gamma k = (6.3 / 2.3)^2 = 7.5.
    steps_mean=6.3,
    steps_shape=7.5,
    steps_min=2,
    steps_max=20,
    final_tokens=150.0,  # assumed: a short answer
    output_sigma=0.5,
    max_context_tokens=MAX_CONTEXT,
    tools=(
        # [Continuum] BFCL tool calls 1,923 +- 2,133 ms: these give mean 1.8-2.2 s, sd ~2 s.
        # Observations: ~8.6K input / 182 output tokens per request [Mooncake] tool agents.
        ToolSpec("web_search", 1.300, 5.000, 500, 40),
        ToolSpec("fetch_url", 1.500, 6.000, 2_500, 40),
    ),
    start={"web_search": 1.0},
    transitions={
        "web_search": {"fetch_url": 0.60, "web_search": 0.40},
        "fetch_url": {"web_search": 0.40, "fetch_url": 0.60},
    },
    arrival_rate=0.4,  # assumed, as for swe
)

ASSISTANT = WorkloadSpec(
    name="assistant",
    description="interactive coding assistant (Claude Code / Codex-like) with a human in the loop",
    prefix_tokens=5_000,  # assumed: a long system prompt with many tool schemas
    task_tokens=(50, 600),  # a user message
    # [TraceLab] ~84 steps per session; [Exgentic] range 1-300. Shape 1.5 (assumed): a
    # heavier tail than SWE's, as sessions run from a quick fix to an afternoon's work.
    steps_mean=84.0,
    steps_shape=1.5,
    steps_min=3,
    steps_max=300,
    final_tokens=250.0,
    output_sigma=0.6,
    max_context_tokens=MAX_CONTEXT,
    tools=(
        # [TraceLab] median tool call ~125 ms (Claude Code); file/edit/grep tens to hundreds
        # of ms; shell, sub-agents and human input seconds to minutes.
        ToolSpec("read", *SAGA_FILE, 900, 60),
        ToolSpec("edit", 0.060, 0.400, 150, 300),
        ToolSpec("grep", 0.100, 0.800, 400, 50),
        # [TraceLab] Codex median ~626 ms is mostly shell.
        ToolSpec("bash", 0.600, 15.0, 600, 70),
        ToolSpec("subagent", 20.0, 120.0, 1_200, 150),
        # The human: [Alibaba] chat reuses within 10 min; [Exgentic] gaps sd 176 s, max 7,200.
        ToolSpec("user", 30.0, 600.0, 150, 250),
    ),
    # Assumed: explore, edit, verify, hand back to the human, who asks for the next change.
    start={"read": 0.35, "grep": 0.35, "bash": 0.20, "subagent": 0.10},
    transitions={
        "read": {"read": 0.30, "edit": 0.35, "grep": 0.15, "bash": 0.15, "user": 0.05},
        "edit": {"edit": 0.25, "bash": 0.30, "read": 0.20, "user": 0.20, "grep": 0.05},
        "grep": {"read": 0.65, "grep": 0.20, "edit": 0.10, "bash": 0.05},
        "bash": {"edit": 0.35, "read": 0.25, "bash": 0.20, "user": 0.15, "grep": 0.05},
        "subagent": {"edit": 0.40, "read": 0.30, "user": 0.20, "bash": 0.10},
        "user": {"read": 0.35, "grep": 0.25, "edit": 0.20, "bash": 0.10, "subagent": 0.10},
    },
    arrival_rate=0.004,  # assumed, as for swe
)

WORKLOADS: Registry[WorkloadSpec] = Registry(
    "workload", {spec.name: spec for spec in (SWE, WEB, BFCL, ASSISTANT)})


def generate(workload: str, num_sessions: int, seed: int, arrival_rate: float | None = None,
             scale: float = 1.0) -> list[Session]:
    """Sample a trace of one workload family.

    Args:
        workload: a name in `WORKLOADS` (swe, web, bfcl, assistant).
        num_sessions: how many sessions.
        seed: seeds every draw; the same arguments always give the same sessions.
        arrival_rate: Poisson arrivals per second; None for the family's default.
        scale: multiplies token counts and tool times (e.g. 0.05 for quick tests); the
            sampled structure (step counts, tool sequences) does not change with it.

    Returns:
        The sessions in arrival order.

    Raises:
        UnknownNameError: (a KeyError and a ValueError) for an unknown workload.
        ValueError: for a bad count, seed, rate or scale.
    """
    return WORKLOADS[workload].generate(num_sessions, seed, arrival_rate=arrival_rate,
                                        scale=scale)


def perturb(spec: WorkloadSpec, name: str, *, latency: float = 1.0, spread: float = 1.0,
            steps: float = 1.0, tokens: float = 1.0) -> WorkloadSpec:
    """A variant of a family, for evaluating on workloads that no tuning saw.

    Args:
        spec: the family to change.
        name: the variant's name (its sessions' workflow).
        latency: multiplies every tool's median latency.
        spread: multiplies every tool's log-latency sigma (> 1: heavier tails).
        steps: multiplies the mean and the largest number of steps per session.
        tokens: multiplies prompt sizes: the shared prefix, the task, the observations.
    """
    for what, x in (("latency", latency), ("spread", spread), ("steps", steps),
                    ("tokens", tokens)):
        if not (isinstance(x, (int, float)) and math.isfinite(x) and x > 0):
            raise ValueError(f"perturb: {what} must be a finite number > 0, got {x!r}")
    tools = tuple(
        dataclasses.replace(t, p50_s=t.p50_s * latency,
                            p95_s=t.p50_s * latency * _widened(t, spread),
                            observation_tokens=t.observation_tokens * tokens)
        for t in spec.tools)
    lo, hi = spec.task_tokens
    return dataclasses.replace(
        spec, name=name, tools=tools, steps_mean=spec.steps_mean * steps,
        steps_max=max(spec.steps_min, round(spec.steps_max * steps)),
        prefix_tokens=round(spec.prefix_tokens * tokens),
        task_tokens=(max(1, round(lo * tokens)), max(1, round(hi * tokens))))


def _widened(tool, spread: float) -> float:
    """The tool's p95 / p50 ratio with its log-sigma multiplied by `spread`; ValueError
    when it is past the float range (float ** raised OverflowError)."""
    try:
        return (tool.p95_s / tool.p50_s) ** spread
    except OverflowError:
        raise ValueError(f"perturb: spread {spread!r} puts {tool.name}'s p95 / p50 ratio "
                         f"({tool.p95_s / tool.p50_s:.4g} ** {spread!r}) past the float "
                         "range") from None


def mixed(*traces: list[Session]) -> list[Session]:
    """Several traces served together (workflows mixed), in arrival order.

    Raises:
        ValueError: a session id in two traces, or one prefix group with two lengths (a
            `TraceError`: e.g. one family at two scales; give one its own group).
    """
    out = [s for t in traces for s in t]
    ids = [s.id for s in out]
    if len(set(ids)) != len(ids):
        raise ValueError("mixed traces must have distinct session ids")
    check_prefix_groups(out)
    return sorted(out, key=lambda s: s.arrival_s)
