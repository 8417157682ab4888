"""What a waiting session's length is expected to be, from what is observable online: the
"gittins" admission order's estimate (`WorkflowScheduler(admission_order="gittins")`,
`kvsaga.scheduler.admission_order`).

Why: where memory bounds how many sessions run at once, the order that lowers the mean
wait admits first the session expected to free memory soonest. A session's own length is
unknown; what is known online is the steps it has done and the lengths of the sessions of
its workflow seen so far. Two things this module gets right that a mean over finished
sessions does not:

- Censoring. Early in a trace the sessions that have ended are the short ones, so a mean
  over them underestimates every length. Here every session counts from its first step:
  a live session that has done k steps says "longer than k" (a right-censored length), and
  the survival function is the Kaplan-Meier product of the discrete hazards
  h(n) = ended(n) / reached(n) (sessions that ended right after their n-th step over those
  that did an n-th step).
- A prior that shrinks to data, per workflow where known, pooled otherwise. Each workflow's
  hazards are shrunk to the pooled ones (every workflow's sessions together) with
  `prior_weight` pseudo-sessions; the pooled hazards to a base prior with the same weight:
  a point mass at the Agent Execution Graph's mean length (`ExecutionGraph.mean_steps`)
  where the policy learns one, else "ends at its next step" (the least it can take). With
  no session seen the estimate is the prior's; an unseen workflow gets the pooled one.

The rank (smallest first) is the Gittins index of the remaining work, in token-steps: for a
session that has done k steps, with remaining steps R (N - k given N > k) and the work of
its next j steps W(j) = j x (context + growth x j / 2) (`predicted_cost`),

    rank = min over d >= 1 of  E[W(min(R, d))] / P(R <= d),

the least expected work per unit of probability of finishing (Sevcik's rule; with a single
server it is the order that minimises mean completion time with unknown sizes, and with
d = the longest R it is the expected work itself, so it never exceeds that). For an
increasing hazard (longer done, sooner end) the minimum is at the longest d; where a
session may well end soon but may run long (a decreasing hazard, a mixture of short and
long workflows) it ranks by the chance of ending soon. Everything read here the engine has
too: the manager's step count, the request's length, the scheduler's own tables.
"""

from __future__ import annotations

import math

from kvsaga.policy.bounded import TRACKED_WORKFLOWS
from kvsaga.scheduler.base import check_float

MAX_STEPS = 1000  # lengths beyond this are treated as this (the tables' support)


class SessionLengthModel:
    """Per workflow and pooled, the discrete hazard counts of session lengths, with a
    hierarchical prior (see the module docstring)."""

    def __init__(self, prior_weight: float = 1.0) -> None:
        # (`check_float`: an int beyond float range raised OverflowError here)
        self.prior_weight = check_float("length_prior", prior_weight, 0.0, strict=True,
                                        finite=True)
        # reached[w][n]: sessions of workflow w (None: pooled) that did an n-th step (n >= 1;
        # index 0 unused); ended[w][n]: those that ended right after it.
        self.reached: dict[str | None, list[int]] = {None: [0]}
        self.ended: dict[str | None, list[int]] = {None: [0]}
        self.version = 0  # bumped at every change (caches key on it)
        self._surv: dict[tuple, list[float]] = {}  # (workflow, prior mean) -> survival
        self._steps: dict[tuple, tuple[list[float], list[float]]] = {}  # Gittins terms

    # -- observing ------------------------------------------------------------------------
    def _tables(self, workflow: str | None) -> list[tuple[list[int], list[int]]]:
        """The tables a session of `workflow` counts in: its workflow's and the pooled one;
        the pooled one alone for a None workflow (the engine accepts one): None keys the
        pooled table, which counted such a session twice before."""
        reached, ended = self.reached, self.ended
        if workflow is None:
            return [(reached[None], ended[None])]
        if workflow in reached:  # moved last: the most recently updated
            reached[workflow] = reached.pop(workflow)
            ended[workflow] = ended.pop(workflow)
        else:
            if len(reached) > TRACKED_WORKFLOWS:  # forget the stalest (never the pooled)
                old = next(w for w in reached if w is not None)
                del reached[old], ended[old]
            reached[workflow], ended[workflow] = [0], [0]
        return [(self.reached[w], self.ended[w]) for w in (workflow, None)]

    def steps_done(self, workflow: str, before: int, now: int) -> None:
        """A live session of `workflow` went from `before` steps done to `now` (each step in
        between was reached; the session goes on, so its length is > now so far)."""
        if not (isinstance(before, int) and isinstance(now, int) and 0 <= before <= now):
            raise ValueError(f"steps done must satisfy 0 <= before <= now, got {before!r}, "
                             f"{now!r}")
        for reached, ended in self._tables(workflow):
            for n in range(before + 1, min(now, MAX_STEPS) + 1):
                while len(reached) <= n:
                    reached.append(0)
                    ended.append(0)
                reached[n] += 1
        self._changed()

    def ended_after(self, workflow: str, before: int, steps: int) -> None:
        """A session of `workflow` that had `before` steps counted here ended after `steps`
        steps in all (>= 1, > before: the steps up to `steps` are reached now)."""
        if not isinstance(steps, int) or steps < 1 or steps <= before:
            raise ValueError(f"a finished session took at least one step more than the "
                             f"{before!r} counted, got {steps!r}")
        self.steps_done(workflow, before, steps)
        n = min(steps, MAX_STEPS)
        for _, ended in self._tables(workflow):
            ended[n] += 1
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._surv.clear()
        self._steps.clear()

    # -- estimating -----------------------------------------------------------------------
    def survival(self, workflow: str | None, prior_mean: float | None) -> list[float]:
        """S[n] = P(N > n) for n = 0, 1, ... up to where it reaches 0 (S[0] = 1): the
        workflow's hazards shrunk to the pooled ones, those to the base prior (a point mass
        at `prior_mean`, or "ends at its next step" when None)."""
        key = (workflow, prior_mean)
        s = self._surv.get(key)
        if s is None:
            s = self._surv[key] = self._compute(workflow, prior_mean)
        return s

    def _compute(self, workflow: str | None, prior_mean: float | None) -> list[float]:
        base = _point_mass_survival(prior_mean)
        pooled = _shrunk(self.reached[None], self.ended[None], base, self.prior_weight)
        if workflow is None or workflow not in self.reached:  # None: the pooled estimate
            return pooled
        return _shrunk(self.reached[workflow], self.ended[workflow], pooled, self.prior_weight)

    def remaining_pmf(self, workflow: str, done: int, prior_mean: float | None
                      ) -> list[float]:
        """q[j] = P(R = j) for j = 1, 2, ... (index 0 unused), R = N - done given N > done;
        R = 1 surely where the estimate gives no chance of surviving `done` steps."""
        s = self.survival(workflow, prior_mean)
        done = min(max(done, 0), MAX_STEPS)
        if done >= len(s) - 1 or s[done] <= 0.0:
            return [0.0, 1.0]
        q = [0.0]
        for n in range(done + 1, len(s)):
            q.append((s[n - 1] - s[n]) / s[done])
        return q

    def gittins_rank(self, workflow: str, done: int, context: float, growth: float,
                     prior_mean: float | None) -> float:
        """The Gittins rank of the session's remaining work (token-steps; smallest first):
        min over d of E[W(min(R, d))] / P(R <= d), W(j) = j x (context + growth x j / 2)."""
        key = (workflow, min(max(done, 0), MAX_STEPS), prior_mean)
        terms = self._steps.get(key)
        if terms is None:
            terms = self._steps[key] = _gittins_terms(self.remaining_pmf(*key))
        a1, a2 = terms
        c, g = max(context, 0.0), max(growth, 0.0) / 2
        return min(c * x + g * y for x, y in zip(a1, a2, strict=True))


def _point_mass_survival(mean: float | None) -> list[float]:
    """Survival of a length that is `mean` (split between the two integers around it so
    the mean is exact; at least 1); None: 1 step."""
    m = 1.0 if mean is None or not math.isfinite(mean) else min(max(mean, 1.0), MAX_STEPS)
    lo = int(math.floor(m))
    frac = m - lo
    s = [1.0] * lo + [frac]  # P(N > n) = 1 for n < lo; P(N > lo) = frac
    if frac > 0:
        s.append(0.0)
    return s


def _shrunk(reached: list[int], ended: list[int], prior: list[float], weight: float
            ) -> list[float]:
    """Survival from the hazards (ended(n) + w p(n)) / (reached(n) + w P(N >= n)), p and P
    the prior's; where nobody (data or prior) reached n, the session ends there."""
    out = [1.0]
    n = 1
    while out[-1] > 0.0 and n <= MAX_STEPS:
        at_risk_prior = prior[n - 1] if n - 1 < len(prior) else 0.0
        p_n = at_risk_prior - (prior[n] if n < len(prior) else 0.0)
        r = reached[n] if n < len(reached) else 0
        d = ended[n] if n < len(ended) else 0
        den = r + weight * at_risk_prior
        h = 1.0 if den <= 0 else min((d + weight * p_n) / den, 1.0)
        out.append(out[-1] * (1.0 - h))
        n += 1
    if out[-1] > 0.0:  # the support's end: everything left ends there
        out.append(0.0)
    return out


def _gittins_terms(q: list[float]) -> tuple[list[float], list[float]]:
    """For each horizon d, E[min(R, d)] / P(R <= d) and E[min(R, d)^2] / P(R <= d), so that
    the rank is min over d of context x the first + growth / 2 x the second (horizons with
    no chance of ending by them skipped)."""
    a1, a2 = [], []
    m1 = m2 = done_p = 0.0
    for d in range(1, len(q)):
        m1 += q[d] * d
        m2 += q[d] * d * d
        done_p += q[d]
        if q[d] <= 0.0 and d < len(q) - 1:
            continue  # ending by d is no likelier than by d - 1: d - 1 ranks lower
        tail = max(1.0 - done_p, 0.0)
        if done_p <= 1e-12:
            continue
        a1.append((m1 + tail * d) / done_p)
        a2.append((m2 + tail * d * d) / done_p)
    if not a1:  # no chance of ending anywhere (cannot happen: the support ends)
        return [float(len(q) - 1)], [float((len(q) - 1) ** 2)]
    return a1, a2
