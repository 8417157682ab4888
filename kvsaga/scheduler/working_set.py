"""The working-set rule of workflow-atomic admission, shared by the `workflow` scheduler and
the vLLM session gate (kvsaga/integrations/vllm/gate.py). Plain Python: no torch, no vLLM.

An admitted session is predicted to hold its own context (less a prefix shared with other
sessions) plus its workflow's expected context growth over its next steps. A new session is
admitted while the predicted working sets fit; a session paused far longer than expected
may be demoted so others enter; when the working sets outgrow the memory anyway (contexts
grew more than predicted), paused sessions are demoted (the scheduler: those expected back
last; the vLLM gate: the most recently admitted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

T = TypeVar("T")


class Growth:
    """Mean context growth per step of one workflow: a plain mean over the first
    1 / alpha observations, an exponential moving average afterwards (so it follows a
    workload whose steps change, without forgetting early on)."""

    __slots__ = ("mean", "n")

    def __init__(self, prior: float) -> None:
        self.mean = prior
        self.n = 0

    def add(self, x: float, alpha: float) -> None:
        self.n += 1
        self.mean += (x - self.mean) / min(self.n, 1.0 / alpha)


class GrowthTable:
    """`Growth` per workflow, starting from `prior` tokens per step until one is observed."""

    def __init__(self, prior: float, alpha: float) -> None:
        self.prior = float(prior)
        self.alpha = float(alpha)
        self.by_workflow: dict[str, Growth] = {}

    def __getitem__(self, workflow: str) -> Growth:
        g = self.by_workflow.get(workflow)
        if g is None:
            g = self.by_workflow[workflow] = Growth(self.prior)
        return g

    def mean(self, workflow: str) -> float:
        g = self.by_workflow.get(workflow)
        return self.prior if g is None else g.mean

    def observe(self, workflow: str, growth_tokens: float) -> None:
        self[workflow].add(growth_tokens, self.alpha)


def working_set_blocks(own_tokens: float, horizon_steps: float, growth_tokens: float,
                       block_size: int) -> int:
    """Blocks a session is predicted to hold: its own context plus `horizon_steps` steps of
    `growth_tokens` growth, rounded up to blocks."""
    return math.ceil((max(own_tokens, 0) + horizon_steps * growth_tokens) / block_size)


def demote_deadline(paused_at: float, expected_s: float, factor: float, min_s: float) -> float:
    """When a pause that began at `paused_at`, expected to last `expected_s`, becomes long
    enough to demote the session: factor x the expected pause + min_s."""
    return paused_at + factor * expected_s + min_s


def shrink(sessions: Mapping[str, T], order: Iterable[str], over: Callable[[], bool],
           paused: Callable[[T], bool], demote: Callable[[str], None]) -> list[str]:
    """While `over()` (the admitted working sets outgrow the memory), demote paused sessions
    in `order` (ids of `sessions`, the admitted ones, which `demote` removes from it), keeping
    at least one admitted; returns the demoted ids in order."""
    out = []
    for sid in list(order):
        if not over() or len(sessions) == 1:
            break
        if paused(sessions[sid]):
            demote(sid)
            out.append(sid)
    return out
