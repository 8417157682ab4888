"""The growth the session gate (`gate.SessionGate`) charges an admitted session: the
workflow's mean growth per step, from one finish to the next, or, under `growth_charge`
"remaining", the reply alone for the step a session has on its prompt.

Why: the gate learns each workflow's growth from the contexts at consecutive finishes, which
is the tool's observation plus the next reply. A session paused on a tool still has both to
add. A session whose step is queued or running (admitted on its prompt) already holds the
observation in that prompt; what it still adds before its finish is its reply. The
`workflow` scheduler measured the gap (bench/RESULTS.md, Scheduling, "Predicted against
realized growth"): realized / predicted growth from the prompt, median 0.03-0.14. Charging
the whole step there over-counts the running batch in admission (`horizon_steps`) and in
room (`room_steps`); the shrink (`shrink_horizon_steps` 0 by default) charges no growth and
is unchanged. "remaining" learns the reply per workflow from each step's prompt and finish
(the same `GrowthTable` and `predicted_growth` the scheduler's "remaining" charge uses) and
charges "step" until a workflow's first reply is seen.

A context that shrank between finishes (an agent that compacts its context) is observed as
no growth, not as negative growth: a negative mean made working sets smaller than the
contexts themselves and admitted sessions that did not fit. The growth charged is never
below 0 either.
"""

from __future__ import annotations

from kvsaga._validate import check_one_of
from kvsaga.scheduler.working_set import GrowthTable, predicted_growth

GROWTH_CHARGES = ("step", "remaining")


class GateGrowth:
    """Growth per step (finish to finish) and per reply (prompt to finish), by workflow."""

    def __init__(self, prior_tokens: float, alpha: float, charge: str) -> None:
        self.charge = check_one_of("gate parameter growth_charge", charge, GROWTH_CHARGES)
        self.steps = GrowthTable(prior_tokens, alpha)
        self.replies = GrowthTable(prior_tokens, alpha)
        self.changes = 0  # growths learned (the gate's sums are kept until this moves)

    def mean(self, workflow: str) -> float:
        """A step's mean growth, finish to finish (the waiting order's unit of work)."""
        return self.steps.mean(workflow)

    def tokens(self, workflow: str, horizon: float, on_prompt: bool) -> float:
        """Growth over `horizon` steps of a session of `workflow`; `on_prompt`: its step is
        admitted on its prompt (queued or running), so under "remaining" the first of those
        steps adds its reply only, once a reply of the workflow was seen."""
        first = None
        if on_prompt and self.charge == "remaining" and workflow in self.replies.by_workflow:
            first = self.replies.mean(workflow)
        return max(predicted_growth(horizon, self.steps.mean(workflow), first), 0.0)

    def finished(self, workflow: str, prompt: int, context: int,
                 last_finish: int | None) -> None:
        """A step admitted on `prompt` tokens finished at `context` tokens; `last_finish`:
        the context at the session's finish before (None: its first step here). A context
        that shrank is observed as no growth."""
        self.changes += 1
        if last_finish is not None:
            self.steps.observe(workflow, max(context - last_finish, 0))
        self.replies.observe(workflow, max(context - prompt, 0))
