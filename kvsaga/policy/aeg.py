"""The Agent Execution Graph: what a workflow's sessions do next, and when. Pure Python.

Learned online, per workflow type, from the session lifecycle alone (no trace, no engine):

    START --step--> tool_a --pause, step--> tool_b --pause, step--> ... --> END

Nodes are *pause kinds*: the tool a session waits on after an LLM step (`NO_TOOL` when the
step named none), plus START (a new session) and END. A session that ends while paused on
`a` is an *abandonment* of `a`; one that runs its next step *resumed* it.

Per node the graph keeps the resume/abandon counts and a log-normal fit of the pause
durations that ended in a resume; per workflow, the inter-arrival times of new sessions and
of steps, and the number of steps per finished session.

Predictions (`predict`): for a session paused on `kind` for `elapsed` seconds, the resume
probability is a cure model, P(resume | no resume yet) = p0 S(e) / (p0 S(e) + 1 - p0), with
p0 the node's smoothed resume share and S the fitted pause survival; the expected time until
the next step is the fit's median residual time at `elapsed` (it grows with `elapsed` as
the mean does, without the heavy tail's inflation). Pause fits fall back from (workflow,
kind) to the kind across workflows, to the workflow, to everything, to a prior, taking
the most specific one with at least `min_samples` observations.

Bounded (kvsaga/policy/bounded.py): the graph keeps the `max_workflows` most recently
updated workflows, in each the `max_kinds_per_workflow` most recently updated kinds, and
the `max_kinds` most recently updated kinds across workflows; a forgotten one is predicted
from its fallbacks, as a new one is (its finished sessions still count in `mean_steps()`).
Live sessions' places are kept until they end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from kvsaga.policy.bounded import (
    TRACKED_KINDS,
    TRACKED_KINDS_PER_WORKFLOW,
    TRACKED_WORKFLOWS,
    touch,
)
from kvsaga.policy.lognormal import (
    LogNormalDist,
    LogNormalFit,
    resume_prediction,
    resume_window,
)

START = "<start>"
END = "<end>"
NO_TOOL = "<none>"


@dataclass(frozen=True, slots=True)
class Prediction:
    """What happens next to a paused session.

    Attributes:
        p_resume: probability that it runs another step.
        expected_s: expected seconds until that step begins, given that it comes (the median
            residual of the pause fit: a typical, not a tail-inflated, time).
    """

    p_resume: float
    expected_s: float


class IntervalEma:
    """Exponential moving average of the gaps between successive events."""

    __slots__ = ("alpha", "last", "mean", "n")

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha = alpha
        self.last: float | None = None
        self.mean: float | None = None
        self.n = 0

    def observe(self, now: float) -> None:
        if self.last is not None:
            gap = max(now - self.last, 0.0)
            self.mean = gap if self.mean is None else self.mean + self.alpha * (gap - self.mean)
            self.n += 1
        self.last = now if self.last is None else max(self.last, now)


@dataclass(slots=True)
class Node:
    """A pause kind in one workflow."""

    pause: LogNormalFit
    resumed: int = 0
    abandoned: int = 0


@dataclass(slots=True)
class WorkflowGraph:
    """One workflow type's nodes, plus its arrival and length statistics."""

    pause: LogNormalFit  # every pause of the workflow
    nodes: dict[str, Node] = field(default_factory=dict)
    arrivals: IntervalEma = field(default_factory=IntervalEma)  # new sessions
    num_sessions: int = 0  # finished sessions
    num_steps: int = 0  # their steps


class _Track:
    """Where one live session is in its graph. `retry`: its running step was withdrawn
    (aborted before it finished); the resume that began it was learned already, so the
    step that replaces it teaches nothing new."""

    __slots__ = ("workflow", "kind", "paused_at", "running", "retry", "steps")

    def __init__(self, workflow: str) -> None:
        self.workflow = workflow
        self.kind = START
        self.paused_at: float | None = None
        self.running = True
        self.retry = False
        self.steps = 0


class ExecutionGraph:
    """Per-workflow execution graphs, fed by session lifecycle events.

    Feed it `step_started` / `step_finished` / `session_ended` in time order (a policy
    forwards its hooks); ask it `predict`, `resume_window`, `mean_steps`, `pause_dist`.

    Args:
        prior_median_s, prior_sigma: the pause distribution assumed for kinds never seen.
        min_samples: observations a pause fit needs before it is used over its fallback.
        prior_resume: pseudo-counts (resumed, abandoned) of every node: an unseen kind
            resumes with probability 1 / 1.1.
        prior_steps: mean steps per session assumed before any session finished.
        max_workflows, max_kinds_per_workflow, max_kinds: how many workflows, kinds per
            workflow and kinds across workflows keep statistics of their own (the least
            recently updated are forgotten past them; module docstring).
    """

    def __init__(
        self,
        prior_median_s: float = 1.0,
        prior_sigma: float = 1.5,
        min_samples: int = 3,
        prior_resume: tuple[float, float] = (1.0, 0.1),
        prior_steps: float = 10.0,
        max_workflows: int = TRACKED_WORKFLOWS,
        max_kinds_per_workflow: int = TRACKED_KINDS_PER_WORKFLOW,
        max_kinds: int = TRACKED_KINDS,
    ) -> None:
        for name, cap in (("max_workflows", max_workflows),
                          ("max_kinds_per_workflow", max_kinds_per_workflow),
                          ("max_kinds", max_kinds)):
            if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
                raise ValueError(f"{name} must be an int >= 1, got {cap!r}")
        self.max_workflows = max_workflows
        self.max_kinds_per_workflow = max_kinds_per_workflow
        self.max_kinds = max_kinds
        # Finished sessions and their steps of the workflows forgotten past max_workflows.
        self._retired = [0, 0]
        self.min_samples = min_samples
        self.prior_resume = prior_resume
        self.prior_steps = prior_steps
        self.workflows: dict[str, WorkflowGraph] = {}
        self._prior_median_s = prior_median_s
        self._prior_sigma = prior_sigma
        self._prior = LogNormalDist(math.log(prior_median_s), prior_sigma)
        self._by_kind: dict[str, LogNormalFit] = {}
        self._all = self._fit()
        self._tracks: dict[str, _Track] = {}
        # predict() answers by (workflow, kind, elapsed), resume_window() by (workflow,
        # kind, elapsed, window), until what they read changes (a resume or an abandoned
        # pause): indexed policies ask on a time grid, so the same questions come back for
        # every session of a tool (of one size, for resume_window).
        self._predicted: dict[tuple[str, str, float], Prediction] = {}
        self._windows: dict[tuple[str, str, float, float], tuple[float, float]] = {}
        # Counts the changes of what predictions and step counts read (policies forget
        # keys they computed from an older version).
        self.version = 0

    def _fit(self) -> LogNormalFit:
        # Every fit shrinks towards the same prior (one pseudo-observation).
        return LogNormalFit(self._prior_median_s, self._prior_sigma)

    def workflow(self, name: str) -> WorkflowGraph:
        """The workflow's graph (made if new), now the most recently updated one."""
        return touch(self.workflows, name, lambda: WorkflowGraph(self._fit()),
                     self.max_workflows, self._retire)

    def _retire(self, name: str, g: WorkflowGraph) -> None:
        self._forget()  # its predictions fall back now
        self._retired[0] += g.num_sessions
        self._retired[1] += g.num_steps

    def node(self, workflow: str, kind: str) -> Node:
        """The kind's node in the workflow's graph (made if new), both now the most recently
        updated."""
        g = self.workflow(workflow)
        return touch(g.nodes, kind, lambda: Node(self._fit()), self.max_kinds_per_workflow,
                     lambda *_: self._forget())

    # -- learning -----------------------------------------------------------------------------
    def step_started(self, session_id: str, workflow: str, now: float) -> tuple[str, float] | None:
        """A step of a session begins.

        Returns:
            (kind, gap) when this step resumes a pause: the pause kind and its duration,
            which the graph has just learned from; None for a new session or a retry.
        """
        t = self._tracks.get(session_id)
        if t is None:
            t = self._tracks[session_id] = _Track(workflow)
            g = self.workflow(workflow)
            g.arrivals.observe(now)
            return None
        if t.running or t.retry:  # retried after a preemption or a withdrawal: the same step
            t.running, t.retry = True, False
            return None
        gap = max(now - (t.paused_at if t.paused_at is not None else now), 0.0)
        self._forget()
        g = self.workflow(t.workflow)
        node = self.node(t.workflow, t.kind)
        node.resumed += 1
        node.pause.add(gap)
        g.pause.add(gap)
        touch(self._by_kind, t.kind, self._fit, self.max_kinds, lambda *_: self._forget()).add(gap)
        self._all.add(gap)
        t.running = True
        return t.kind, gap

    def step_finished(self, session_id: str, kind: str | None, now: float) -> None:
        """The running step ended calling tool `kind` (None: no tool); the session pauses."""
        t = self._tracks.get(session_id)
        if t is None or not t.running:
            return
        t.kind = NO_TOOL if kind is None else kind
        t.paused_at, t.running = now, False
        t.steps += 1

    def step_withdrawn(self, session_id: str) -> None:
        """The running step was aborted before it finished (`resume_withdrawn` after a
        preemption): the session waits again, and neither its end (not an abandonment of a
        pause whose resume was learned) nor its next step (a retry) is learned from."""
        t = self._tracks.get(session_id)
        if t is not None and t.running:
            t.running, t.retry = False, True

    def relabel(self, session_id: str, kind: str | None) -> None:
        """A paused session's tool became known after its step finished: its pause (resumed
        or abandoned) counts for the new kind."""
        t = self._tracks.get(session_id)
        if t is not None and not t.running:
            t.kind = NO_TOOL if kind is None else kind

    def session_ended(self, session_id: str, now: float) -> None:
        """The session is gone: after its last step (running), while paused (abandoned), or
        while its withdrawn step waits for a retry (neither)."""
        t = self._tracks.pop(session_id, None)
        if t is None:
            return
        self.version += 1  # mean_steps changes
        g = self.workflow(t.workflow)
        if t.running:
            t.steps += 1
        elif not t.retry:
            self._forget()
            self.node(t.workflow, t.kind).abandoned += 1
        g.num_sessions += 1
        g.num_steps += t.steps

    def forget(self, session_id: str) -> None:
        """Drop a live session's track, learning nothing from it (`session_ended` would count
        a paused one as abandoned): its owner lost sight of it without seeing it end."""
        self._tracks.pop(session_id, None)

    # -- predictions --------------------------------------------------------------------------
    def _forget(self) -> None:
        """What the remembered answers read changed: forget them."""
        self.version += 1
        self._predicted.clear()
        self._windows.clear()

    def pause_dist(self, workflow: str, kind: str) -> LogNormalDist:
        """The pause-duration distribution of `kind` in `workflow`, with fallbacks."""
        k = self.min_samples
        g = self.workflows.get(workflow)
        node = g.nodes.get(kind) if g is not None else None
        if node is not None and node.pause.n >= k:
            return node.pause.dist()
        fit = self._by_kind.get(kind)
        if fit is not None and fit.n >= k:
            return fit.dist()
        if g is not None and g.pause.n >= k:
            return g.pause.dist()
        if self._all.n >= k:
            return self._all.dist()
        return self._prior

    def resume_share(self, workflow: str, kind: str) -> float:
        """p0: the smoothed share of pauses on `kind` that resumed (elapsed not considered)."""
        a, b = self.prior_resume
        g = self.workflows.get(workflow)
        node = g.nodes.get(kind) if g is not None else None
        if node is None:
            return a / (a + b)
        return (node.resumed + a) / (node.resumed + node.abandoned + a + b)

    def predict(self, workflow: str, last_tool: str | None, elapsed: float) -> Prediction:
        """Resume probability and expected time of the next step of a paused session.

        Args:
            workflow: the session's workflow type.
            last_tool: the tool it waits on (None: it named no tool).
            elapsed: seconds since it paused.
        Returns:
            Prediction(p_resume, expected_s).
        """
        kind = NO_TOOL if last_tool is None else last_tool
        key = (workflow, kind, elapsed)
        out = self._predicted.get(key)
        if out is None:
            out = Prediction(*resume_prediction(self.pause_dist(workflow, kind),
                                                self.resume_share(workflow, kind), elapsed))
            if len(self._predicted) >= 65536:  # exact times (a scan) do not come back
                self._predicted.clear()
            self._predicted[key] = out
        return out

    def resume_window(
        self, workflow: str, last_tool: str | None, elapsed: float, window: float
    ) -> tuple[float, float]:
        """How a paused session spends the next `window` seconds, under the cure model.

        Returns:
            (P(it resumes within the window), E[seconds it stays paused within the window]),
            both conditional on no resume during the `elapsed` seconds so far.
        """
        if window <= 0:
            return 0.0, 0.0
        kind = NO_TOOL if last_tool is None else last_tool
        key = (workflow, kind, elapsed, window)
        out = self._windows.get(key)
        if out is None:
            out = self._resume_window(workflow, kind, elapsed, window)
            if len(self._windows) >= 65536:  # exact times (a scan) do not come back
                self._windows.clear()
            self._windows[key] = out
        return out

    def _resume_window(self, workflow: str, kind: str, elapsed: float, window: float
                       ) -> tuple[float, float]:
        return resume_window(self.pause_dist(workflow, kind), self.resume_share(workflow, kind),
                             elapsed, window)

    def mean_steps(self, workflow: str | None = None) -> float:
        """Mean LLM steps per finished session (one prior session of `prior_steps`)."""
        if workflow is None:
            gs = list(self.workflows.values())
            n, steps = self._retired
        else:
            gs = [self.workflows[workflow]] if workflow in self.workflows else []
            n = steps = 0
        n += sum(g.num_sessions for g in gs)
        steps += sum(g.num_steps for g in gs)
        return (steps + self.prior_steps) / (n + 1)

    def arrival_interval(self, workflow: str) -> float | None:
        """Mean seconds between new sessions of `workflow` (None before two arrived)."""
        g = self.workflows.get(workflow)
        return g.arrivals.mean if g is not None else None


class FeedsExecutionGraph:
    """Mixin for policies that learn an `ExecutionGraph` (in `self.graph`) from the session
    lifecycle: each pause and its tool, late tool hints, and session ends. It forwards the
    hooks after the base policy has handled them; `step_started` stays with each policy,
    which also reads what the graph returns there.
    """

    graph: ExecutionGraph

    def step_finished(self, session, now: float, hint) -> None:
        super().step_finished(session, now, hint)
        self.graph.step_finished(session.session_id, hint.tool, now)

    def pause_hinted(self, session, now: float, hint) -> None:
        super().pause_hinted(session, now, hint)
        if hint.tool is not None:
            self.graph.relabel(session.session_id, hint.tool)

    def resume_withdrawn(self, session, now: float) -> None:
        super().resume_withdrawn(session, now)
        self.graph.step_withdrawn(session.session_id)

    def session_ended(self, session, now: float) -> None:
        super().session_ended(session, now)
        self.graph.session_ended(session.session_id, now)

    def session_forgotten(self, session, now: float) -> None:
        """Forgotten, not ended: its track goes first, so the end that follows (the base's
        `session_forgotten` calls `session_ended`) teaches the graph nothing."""
        self.graph.forget(session.session_id)
        super().session_forgotten(session, now)
