"""The working-set rule of workflow-atomic admission, shared by the `workflow` scheduler and
the vLLM session gate (kvsaga/integrations/vllm/gate.py). Plain Python: no torch, no vLLM.

An admitted session is predicted to hold its own context (less a prefix shared with other
sessions) plus its workflow's expected context growth over its next steps (the scheduler
can predict the first of them from the tool it paused on and charge the growth only while a
step of it is queued or running: `tool_growth`, `paused_growth`; the vLLM gate, which sees
no tools, charges the workflow's mean growth all along). A new session is
admitted while the predicted working sets fit; a session paused far longer than expected
may be demoted so others enter; when the working sets outgrow the memory anyway (contexts
grew more than predicted), paused sessions are demoted (the scheduler: those expected back
last; the vLLM gate: the most recently admitted).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from kvsaga.policy.bounded import TRACKED_KINDS, TRACKED_WORKFLOWS, touch

T = TypeVar("T")


class Growth:
    """Mean context growth per step of one workflow: a plain mean over the first
    1 / alpha observations, an exponential moving average afterwards (so it follows a
    workload whose steps change, without forgetting early on); and its variance, weighted
    the same way (the spread the `workflow` gate's `growth_reserve` keeps room for)."""

    __slots__ = ("mean", "n", "var")

    def __init__(self, prior: float) -> None:
        self.mean = prior
        self.n = 0
        self.var = 0.0

    def add(self, x: float, alpha: float) -> None:
        self.n += 1
        w = 1.0 / min(self.n, 1.0 / alpha)
        d = x - self.mean
        self.mean += d / min(self.n, 1.0 / alpha)  # as before the variance was kept
        self.var = (1.0 - w) * (self.var + w * d * d)


class GrowthTable:
    """`Growth` per workflow, starting from `prior` tokens per step until one is observed,
    and per (workflow, tool): the growth of the step after a pause on that tool, which is
    mostly the tool's observation (a web fetch adds five times what a search does)."""

    def __init__(self, prior: float, alpha: float) -> None:
        self.prior = float(prior)
        self.alpha = float(alpha)
        self.by_workflow: dict[str, Growth] = {}
        self.by_tool: dict[tuple[str, str], Growth] = {}

    def __getitem__(self, workflow: str) -> Growth:
        # Bounded: the TRACKED_WORKFLOWS most recently updated workflows and TRACKED_KINDS
        # (workflow, tool) pairs keep their own growth (kvsaga/policy/bounded.py); a
        # forgotten one starts again from the prior, as a new one does.
        return touch(self.by_workflow, workflow, lambda: Growth(self.prior), TRACKED_WORKFLOWS)

    def mean(self, workflow: str, tool: str | None = None) -> float:
        """The expected growth of a step: after a pause on `tool`, that tool's mean once
        one was observed; else the workflow's."""
        if tool is not None:
            g = self.by_tool.get((workflow, tool))
            if g is not None:
                return g.mean
        g = self.by_workflow.get(workflow)
        return self.prior if g is None else g.mean

    def var(self, workflow: str, tool: str | None = None) -> float:
        """The variance of a step's growth: after a pause on `tool`, that tool's once it
        was observed at least twice; else the workflow's (0 until observed). Why not once,
        as `mean` takes its key after one observation: one observation estimates a mean
        but has no spread (its variance is 0), so a tool seen once would override the
        workflow's spread with none and its session would get no `growth_reserve`."""
        if tool is not None:
            g = self.by_tool.get((workflow, tool))
            if g is not None and g.n >= 2:
                return g.var
        g = self.by_workflow.get(workflow)
        return 0.0 if g is None else g.var

    def observe(self, workflow: str, growth_tokens: float, tool: str | None = None) -> None:
        """A step grew the context by `growth_tokens`; `tool`: the pause before it."""
        self[workflow].add(growth_tokens, self.alpha)
        if tool is not None:
            g = touch(self.by_tool, (workflow, tool), lambda: Growth(self.prior),
                      TRACKED_KINDS)
            g.add(growth_tokens, self.alpha)


def working_set_blocks(own_tokens: float, horizon_steps: float, growth_tokens: float,
                       block_size: int, first_growth_tokens: float | None = None) -> int:
    """Blocks a session is predicted to hold: its own context plus `horizon_steps` steps of
    `growth_tokens` growth (the first of them `first_growth_tokens`, when given: the next
    step's own prediction), rounded up to blocks."""
    growth = predicted_growth(horizon_steps, growth_tokens, first_growth_tokens)
    return math.ceil((max(own_tokens, 0) + growth) / block_size)


def predicted_growth(horizon_steps: float, growth_tokens: float,
                     first_growth_tokens: float | None = None) -> float:
    """Tokens a session is predicted to grow by over `horizon_steps` steps of `growth_tokens`
    each, the first of them `first_growth_tokens` when given."""
    growth = horizon_steps * growth_tokens
    if first_growth_tokens is not None:
        growth += min(horizon_steps, 1.0) * (first_growth_tokens - growth_tokens)
    return growth


def demote_deadline(paused_at: float, expected_s: float, factor: float, min_s: float) -> float:
    """When a pause that began at `paused_at`, expected to last `expected_s`, becomes long
    enough to demote the session: factor x the expected pause + min_s. A factor of 0 ignores
    the expected pause (paused_at + min_s), even an endless one (`expected_s` inf), where
    0 x inf would make the deadline nan: never due, and never less than another."""
    return paused_at + (factor * expected_s if factor else 0.0) + min_s


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
