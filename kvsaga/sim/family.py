"""A workload family as distributions, and the sampler that turns it into sessions.

A family (`WorkloadSpec`) describes one kind of agent: its shared system prompt + tool
definitions, how many LLM calls a task takes, which tools it calls in what order (a Markov
chain over tool names, so that a learned Agent Execution Graph has real structure to find),
how long each tool takes (log-normal from a p50 and a p95), what each tool returns to the
model (gamma, k=2, as SAGA's generator) and what the model writes to call it (log-normal).

The calibrated families themselves are in `kvsaga.sim.workloads`; sources in docs/workloads.md.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from kvsaga._validate import is_int
from kvsaga.sim.trace import MAX_TRACE_SECONDS, Session, SharedPrefix, Step

# z of the 95th percentile of the standard normal: p95 = p50 * exp(Z95 * sigma).
Z95 = 1.6448536269514722


@dataclass(frozen=True)
class ToolSpec:
    """One tool of a workload family.

    Args:
        name: the tool's name, as it appears in traces.
        p50_s: median latency in seconds.
        p95_s: 95th-percentile latency in seconds (> p50_s: log-normal).
        observation_tokens: mean tokens the tool returns to the model (the next step's
            input), drawn from a gamma with shape 2.
        call_tokens: median tokens of the model output that calls this tool (log-normal).
        max_s: latencies are capped here (a harness timeout).
    """

    name: str
    p50_s: float
    p95_s: float
    observation_tokens: float
    call_tokens: float
    max_s: float = 7200.0  # [Exgentic] longest observed gap between turns: 7,200 s

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"tool name must be a non-empty string, got {self.name!r}")
        for attr in ("p50_s", "observation_tokens", "call_tokens", "max_s"):
            value = getattr(self, attr)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{self.name}: {attr} must be a finite number > 0, got "
                                 f"{value!r}")
        if not (math.isfinite(self.p95_s) and self.p95_s > self.p50_s):
            raise ValueError(f"{self.name}: p95_s must be finite and > p50_s={self.p50_s}, got "
                             f"{self.p95_s!r}")
        if not math.isfinite(self.p95_s / self.p50_s):  # sigma would be inf: latencies 0 or max
            raise ValueError(f"{self.name}: p95_s / p50_s must be a finite ratio, got "
                             f"{self.p95_s!r} / {self.p50_s!r}")

    @property
    def mu(self) -> float:
        """Mean of log latency."""
        return math.log(self.p50_s)

    @property
    def sigma(self) -> float:
        """Standard deviation of log latency."""
        return math.log(self.p95_s / self.p50_s) / Z95

    @property
    def mean_s(self) -> float:
        """Mean latency of the (uncapped) log-normal. ValueError when it is past the float
        range (a sigma over ~37.7)."""
        try:
            mean = self.p50_s * math.exp(self.sigma**2 / 2)
        except OverflowError:
            mean = math.inf
        if not math.isfinite(mean):
            raise ValueError(f"{self.name}: the mean of the log-normal latency (p50_s "
                             f"{self.p50_s!r}, sigma {self.sigma:.4g}) is past the float range")
        return mean


@dataclass(frozen=True)
class WorkloadSpec:
    """A workload family: what its sessions look like, as distributions.

    Args:
        name: the family's name; also each session's `workflow`.
        description: one line for humans.
        prefix_tokens: the shared system prompt + tool definitions, in tokens.
        task_tokens: (low, high) of the uniform first-step input (the task itself).
        steps_mean: mean LLM calls per session (gamma).
        steps_shape: gamma shape k of the step count (sd = mean / sqrt(k)).
        steps_min: fewest LLM calls per session.
        steps_max: most LLM calls per session.
        final_tokens: median output of the last step (the answer), log-normal.
        output_sigma: sigma of log output tokens, for every step.
        max_context_tokens: a session ends early rather than exceed this context (the model's
            window; harness-side compaction is not modelled).
        tools: the family's tools.
        start: probability of each tool being the first one called.
        transitions: for each tool, the probabilities of the next tool.
        arrival_rate: default Poisson arrival rate, sessions per second.
    """

    name: str
    description: str
    prefix_tokens: int
    task_tokens: tuple[int, int]
    steps_mean: float
    steps_shape: float
    steps_min: int
    steps_max: int
    final_tokens: float
    output_sigma: float
    max_context_tokens: int
    tools: tuple[ToolSpec, ...]
    start: Mapping[str, float]
    transitions: Mapping[str, Mapping[str, float]]
    arrival_rate: float
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError(f"workload name must be non-empty, got {self.name!r}")
        if self.prefix_tokens < 0:
            raise ValueError(f"{self.name}: prefix_tokens must be >= 0, got "
                             f"{self.prefix_tokens!r}")
        lo, hi = self.task_tokens
        if not 1 <= lo <= hi:
            raise ValueError(f"{self.name}: task_tokens must satisfy 1 <= low <= high, got "
                             f"{self.task_tokens!r}")
        if not 1 <= self.steps_min <= self.steps_max:
            raise ValueError(f"{self.name}: need 1 <= steps_min <= steps_max, got "
                             f"{self.steps_min!r}, {self.steps_max!r}")
        for attr in ("steps_mean", "steps_shape", "final_tokens", "output_sigma",
                     "arrival_rate"):
            value = getattr(self, attr)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{self.name}: {attr} must be finite and > 0, got {value!r}")
        if self.max_context_tokens <= self.prefix_tokens + hi:
            raise ValueError(f"{self.name}: max_context_tokens={self.max_context_tokens!r} "
                             f"leaves no room after the prefix and the task")
        names = [t.name for t in self.tools]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"{self.name}: tools must be non-empty with unique names, got "
                             f"{names!r}")
        object.__setattr__(self, "_index", {n: i for i, n in enumerate(names)})
        self._check_distribution("start", self.start)
        if set(self.transitions) != set(names):
            raise ValueError(f"{self.name}: transitions must have one row per tool "
                             f"{sorted(names)}, got {sorted(self.transitions)}")
        for tool, row in self.transitions.items():
            self._check_distribution(f"transitions[{tool!r}]", row)

    def _check_distribution(self, what: str, probs: Mapping[str, float]) -> None:
        unknown = sorted(set(probs) - set(self._index))
        if unknown:
            raise ValueError(f"{self.name}: {what} names unknown tools {unknown}")
        if any(p < 0 for p in probs.values()) or abs(sum(probs.values()) - 1) > 1e-9:
            raise ValueError(f"{self.name}: {what} must be probabilities summing to 1, got "
                             f"{dict(probs)!r}")

    def tool(self, name: str) -> ToolSpec:
        """The tool called `name`."""
        return self.tools[self._index[name]]

    def transition_matrix(self) -> np.ndarray:
        """P[i, j] = probability that tool j follows tool i, in `tools` order."""
        n = len(self.tools)
        p = np.zeros((n, n))
        for src, row in self.transitions.items():
            for dst, prob in row.items():
                p[self._index[src], self._index[dst]] = prob
        return p

    def start_vector(self) -> np.ndarray:
        """Probability of each tool (in `tools` order) being the first called."""
        v = np.zeros(len(self.tools))
        for name, prob in self.start.items():
            v[self._index[name]] = prob
        return v

    def generate(self, num_sessions: int, seed: int, arrival_rate: float | None = None,
                 scale: float = 1.0) -> list[Session]:
        """Sample sessions of this family.

        Args:
            num_sessions: how many sessions.
            seed: seeds every draw; session i is the same whatever num_sessions is.
            arrival_rate: Poisson arrivals per second; None for the family's default.
            scale: multiplies every token count (rounded, at least 1; the prefix may reach 0)
                and every tool time, after sampling, so a scaled trace has the same structure.

        Returns:
            Sessions in arrival order, ids `{name}-s{seed}-{i:05d}`, all of one prefix group
            `{name}-system`.
        """
        _check_args(num_sessions, seed, arrival_rate, scale)
        rate = self.arrival_rate if arrival_rate is None else arrival_rate
        family = int.from_bytes(hashlib.blake2b(self.name.encode(), digest_size=4).digest(),
                                "little")
        # Arrivals and each session draw from their own seeded streams, so session i is the
        # same whatever num_sessions is, and the same family with another seed differs.
        arrival_rng = np.random.default_rng([seed, family, 0])
        arrivals = np.cumsum(arrival_rng.exponential(1.0 / rate, size=num_sessions))
        _check_arrivals(arrivals, num_sessions, rate)
        prefix = SharedPrefix(group=f"{self.name}-system",
                              tokens=_scaled(self.prefix_tokens, scale, minimum=0))
        sessions = []
        for i in range(num_sessions):
            rng = np.random.default_rng([seed, family, 1, i])
            steps = tuple(
                Step(input_tokens=_scaled(inp, scale, minimum=1),
                     output_tokens=_scaled(out, scale, minimum=1),
                     tool=tool, tool_s=tool_s * scale)
                for inp, out, tool, tool_s in self._sample_steps(rng)
            )
            sessions.append(Session(id=f"{self.name}-s{seed}-{i:05d}", workflow=self.name,
                                    arrival_s=float(arrivals[i]), shared_prefix=prefix,
                                    steps=steps))
        return sessions

    def _sample_steps(self, rng: np.random.Generator
                      ) -> list[tuple[int, int, str | None, float]]:
        """One session's (input, output, tool, tool_s) per step, before scaling."""
        # Capped before rounding: the same n, and no int(inf) for a draw past the float range.
        n = int(round(min(rng.gamma(self.steps_shape, self.steps_mean / self.steps_shape),
                          self.steps_max)))
        n = min(max(n, self.steps_min), self.steps_max)
        probs = self.transition_matrix()
        cum_start = np.cumsum(self.start_vector())
        cum_rows = np.cumsum(probs, axis=1)
        # Tool after step k for k < n - 1; the last step calls none.
        tools: list[int] = []
        for u in rng.random(n - 1):
            cum = cum_start if not tools else cum_rows[tools[-1]]
            tools.append(min(int(np.searchsorted(cum, u, side="right")), len(self.tools) - 1))
        lo, hi = self.task_tokens
        inputs = [int(rng.integers(lo, hi + 1))]
        obs_means = np.array([self.tools[t].observation_tokens for t in tools])
        with np.errstate(over="ignore"):
            observed = rng.gamma(2.0, obs_means / 2.0)
        if not np.isfinite(observed).all():  # int() would raise OverflowError
            raise ValueError(f"{self.name}: an observation drawn from observation_tokens up to "
                             f"{obs_means.max():.4g} is past the float range")
        inputs += [max(1, int(round(x))) for x in observed]
        out_medians = np.array([self.tools[t].call_tokens for t in tools] + [self.final_tokens])
        with np.errstate(over="ignore"):  # a draw past the float range: refused just below
            out = out_medians * np.exp(self.output_sigma * rng.standard_normal(n))
        if not np.isfinite(out).all():
            raise ValueError(f"{self.name}: an output drawn from output_sigma "
                             f"{self.output_sigma!r} and call_tokens / final_tokens up to "
                             f"{out_medians.max():.4g} is past the float range")
        outputs = [max(1, int(round(x))) for x in out]
        latencies = [
            _capped_exp(self.tools[t].mu + self.tools[t].sigma * z, self.tools[t].max_s)
            for t, z in zip(tools, rng.standard_normal(n - 1), strict=True)
        ]
        steps: list[tuple[int, int, str | None, float]] = []
        context = self.prefix_tokens
        for k in range(n):
            if k > 0 and context + inputs[k] + outputs[k] > self.max_context_tokens:
                break  # the agent has run out of context window: the task ends here
            context += inputs[k] + outputs[k]
            if k < n - 1:
                steps.append((inputs[k], outputs[k], self.tools[tools[k]].name, latencies[k]))
            else:
                steps.append((inputs[k], outputs[k], None, 0.0))
        last_in, last_out, _, _ = steps[-1]
        steps[-1] = (last_in, last_out, None, 0.0)
        return steps


def _capped_exp(x: float, cap: float) -> float:
    """min(cap, exp(x)): a log-normal latency capped at the harness timeout, also where
    exp(x) is past the float range (math.exp raised OverflowError)."""
    try:
        return min(cap, math.exp(x))
    except OverflowError:
        return cap


def _scaled(tokens: int, scale: float, *, minimum: int) -> int:
    scaled = tokens * scale
    if not math.isfinite(scaled):
        raise ValueError(f"scale {scale!r} x {tokens} tokens is past the float range")
    return max(minimum, int(round(scaled)))


def _check_arrivals(arrivals: np.ndarray, num_sessions: int, rate: float) -> None:
    """ValueError naming the arguments when the drawn arrivals pass the trace format's
    `MAX_TRACE_SECONDS` (a TraceError named the field `arrival_s`, which the caller never
    wrote)."""
    if num_sessions and not arrivals[-1] <= MAX_TRACE_SECONDS:
        raise ValueError(
            f"arrival_rate {rate!r} with num_sessions {num_sessions:,}: the last session "
            f"would arrive at {float(arrivals[-1]):.4g} s, past the trace format's "
            f"{MAX_TRACE_SECONDS:g} s (about 31 years); raise arrival_rate or draw fewer "
            "sessions")


def _check_args(num_sessions: int, seed: int, arrival_rate: float | None,
                scale: float) -> None:
    if not is_int(num_sessions) or num_sessions < 0:
        raise ValueError(f"num_sessions must be an integer >= 0, got {num_sessions!r}")
    if not is_int(seed) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if arrival_rate is not None and not (
            isinstance(arrival_rate, (int, float)) and math.isfinite(arrival_rate)
            and arrival_rate > 0):
        raise ValueError(f"arrival_rate must be a finite number > 0, got {arrival_rate!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
