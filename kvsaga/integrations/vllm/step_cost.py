"""StepCost: what one more token in vLLM's batch costs, learned from the steps themselves.

The session gate trades memory for batch: a session it holds back neither recomputes an
evicted context nor rides in the running batch. Which side wins depends on the machine. When
a step's fixed cost dominates (weights read once per step, a CPU's per-step overhead), a
request added to the batch costs little, and a held-back session costs its whole wait; when
each scheduled token costs much (prefill-bound), recomputing a context delays everyone in the
batch. The connector sees each step's scheduled tokens and the time to the next step, so it
fits `seconds = fixed + per_token * tokens` online (least squares over exponentially decayed
sums, so it follows a machine whose load changes) and asks it what a prefill would add.

Plain Python, no vLLM import.
"""

from __future__ import annotations

from kvsaga._validate import check_positive_int, is_number

# The connector's default `best_effort_steps`: a deferred step rides along, unretained, when
# its whole context's prefill costs at most this many steps' fixed cost (connector.py).
BEST_EFFORT_STEPS = 0.0


class StepCost:
    """Online fit of a step's duration: `fixed` seconds plus `per_token` per scheduled token.

    Args:
        alpha: weight of each new step in the decayed sums (0 < alpha <= 1).
        min_steps: steps observed before `fit` answers.
    """

    def __init__(self, alpha: float = 0.02, min_steps: int = 3) -> None:
        if not (is_number(alpha) and 0 < alpha <= 1):
            raise ValueError(f"step cost alpha must be in (0, 1], got {alpha!r}")
        check_positive_int("step cost min_steps", min_steps)
        self.alpha = float(alpha)
        self.min_steps = min_steps
        self.steps = 0
        self._sums = [0.0] * 5  # weight, x, y, xx, xy (x: tokens, y: seconds)

    def observe(self, tokens: int, seconds: float) -> None:
        """A step that scheduled `tokens` took `seconds` (the time to the next step)."""
        if tokens <= 0 or not seconds > 0:
            return  # nothing ran, or the clock did not move: no evidence
        keep = 1.0 - self.alpha
        x, y = float(tokens), float(seconds)
        for i, v in enumerate((1.0, x, y, x * x, x * y)):
            self._sums[i] = self._sums[i] * keep + v
        self.steps += 1

    def fit(self) -> tuple[float, float] | None:
        """(fixed seconds per step, seconds per token), both >= 0; None until `min_steps`
        steps were seen or while every step scheduled about the same number of tokens."""
        if self.steps < self.min_steps:
            return None
        w, sx, sy, sxx, sxy = self._sums
        spread = w * sxx - sx * sx
        if spread <= 1e-9 * max(w * sxx, 1.0):
            return None
        per_token = max((w * sxy - sx * sy) / spread, 0.0)
        fixed = max((sy - per_token * sx) / w, 0.0)
        return fixed, per_token

    def cheap(self, tokens: int, steps: float) -> bool:
        """Whether scheduling `tokens` more adds at most `steps` steps' fixed cost to a step
        (False while nothing is fitted)."""
        fitted = self.fit()
        if fitted is None:
            return False
        fixed, per_token = fitted
        return per_token * tokens <= steps * fixed
