"""The pauses the session gate (`gate.SessionGate`) has observed, and how long a paused
session's pause may run before it expires (`SessionGate.expire` demotes it then, and the
connector releases its blocks to vLLM's LRU).

A pause runs from a step's finish to the session's next step: to its arrival in vLLM's queue
where `KVSagaScheduler` reports it (`gate_arrivals`, `SessionGate.arrived`), else to vLLM's
first question about it (`SessionGate.admit`). Without that scheduler a step's wait in
vLLM's queue before the question (vLLM stops asking at the first request it cannot
allocate) is learned as part of its pause: nothing tells the connector of the step sooner.

- A pause the client gave no expected length for (`expected_s` None: a client that sends
  only its session id, not the tool its model will call) is judged by the pauses the gate
  has seen of that workflow: once `pause_min_observed` of them have ended in a next step,
  an unhinted paused session whose pause has run past their `pause_quantile` quantile
  expires (`expire`, asked before every admission probe): it is demoted and the connector
  releases its blocks to vLLM's LRU. Without it a session that has ended but never said so
  (no `last_step`) stayed admitted and kept its blocks until the gate's demotion deadline
  (gate.py's module docstring), whose default pause is 30 s: on
  bench/vllm_scheduler_replay.py's calibrated workload (also described there) with
  session-only hints the connector ran at 0.27x plain vLLM's speed (fit seeds 0-4), its
  gate deferring new sessions for room the finished ones held. `pause_quantile` 0.8 was
  chosen there, on fit seeds 0-4 only, among 0.5, 0.6, 0.7, 0.75, 0.8 and 0.9 by the
  highest worst seed: speed-up over plain vLLM worst 1.04x, median 1.10x (0.9: 0.79x and
  1.00x, a finished session held on too long; 0.5: 0.97x and 1.10x, sessions only slow
  demoted and their contexts computed again).
- A pause hinted longer than the workflow's observed ones expires the same way
  (`expire_long_hints`, default on): a client that sends the tool and its median pause
  (`expected_s`) told the gate which pauses run long (SWE's `run_tests`, 5 s, where the
  workflow's 0.8 quantile was 0.45-1.5 s), and the gate kept exactly those sessions
  admitted until the demotion deadline (4 x 5 s + 10 s), holding the room that waiting
  sessions needed: on that calibrated workload (fit seeds 0-4, advance hints) the gate
  ran 1,217-2,175 steps, its sessions waited 106-246 s per seed, and the connector was
  1.15x plain vLLM's speed (1.12-1.30x), below the session-only client (no hint) on 1
  seed of 5 and in every group median of the later seeds. With the rule: 1,191-1,710 steps,
  89-258 s, **1.25x (1.19-1.42x)**, above the session-only client (1.14x, 1.10-1.26x) on
  every fit seed. A pause hinted within the quantile keeps its deadline (the tool is late).
  Chosen on fit seeds 0-4 only by the worst seed with advance hints, among: every hinted
  pause past the quantile (1.18x worst), the per-tool quantile (1.14x), expiring a pause
  hinted long at once (1.14x), releasing a paused session once the waiting sessions had
  waited 1 / 2 / 4 x its recompute (0.98 / 1.12 / 1.16x), this rule (1.19x) and none
  (1.12x); driver not kept in the repository. Cost, on the compute-bound 6-session workload
  (KV 25%, pauses x0.25) with advance hints: fit seeds 0-4 1.42, 1.16, 1.58, 1.20, 1.37x
  -> 1.31, 1.16, 1.65, 1.07, 1.38x (geometric mean 1.34x -> 1.30x).
"""

from __future__ import annotations

import math
from collections import deque

from kvsaga._validate import check_positive_int, is_number
from kvsaga.policy.bounded import TRACKED_WORKFLOWS, touch
from kvsaga.stats import percentile


class PauseLog:
    """Each paused session's last finish, each workflow's observed pauses (a step's finish
    to the session's next step), and the expiry limit over them (see the module
    docstring)."""

    PAUSES_KEPT = 512  # observed pauses per workflow the quantile is taken over (latest)
    # Sessions whose pause is timed (finished, not yet back). A session that ends without
    # saying so never comes back, so the oldest entries are dropped past this many: a
    # session back after more than PAUSED_TRACKED others paused is not observed (its pause
    # is among the longest; the quantile then leans short by at most that one sample).
    PAUSED_TRACKED = 8192

    def __init__(self, quantile: float, min_observed: int) -> None:
        if not (is_number(quantile) and 0 <= quantile <= 1):
            raise ValueError(f"gate parameter pause_quantile must be in [0, 1], got "
                             f"{quantile!r}")
        check_positive_int("gate pause_min_observed", min_observed)
        self.quantile = float(quantile)
        self.min_observed = min_observed
        self.observed: dict[str, deque[float]] = {}  # workflow -> observed pauses, latest
        self.paused_since: dict[str, float] = {}  # session -> its last step's finish
        self._limits: dict[str, float | None] = {}  # workflow -> limit, until a pause ends
        self.changes = 0  # pauses observed so far: a limit may differ once this moved

    def paused(self, sid: str, now: float) -> None:
        """A step of `sid` finished `now`: its pause starts."""
        self.paused_since.pop(sid, None)  # re-inserted last: oldest first stays true
        self.paused_since[sid] = now
        if len(self.paused_since) > self.PAUSED_TRACKED:
            del self.paused_since[next(iter(self.paused_since))]

    def back(self, sid: str, workflow: str, now: float) -> None:
        """`sid` (of `workflow`) is back with its next step: its pause, if timed, ended now."""
        since = self.paused_since.pop(sid, None)
        if since is not None:
            # (the TRACKED_WORKFLOWS most recently resumed workflows: policy/bounded.py)
            touch(self.observed, workflow, lambda: deque(maxlen=self.PAUSES_KEPT),
                  TRACKED_WORKFLOWS, lambda wf, _: self._limits.pop(wf, None)).append(
                now - since)
            self._limits.pop(workflow, None)
            self.changes += 1

    def forget(self, sid: str) -> None:
        self.paused_since.pop(sid, None)

    def limit(self, workflow: str) -> float | None:
        """How long a pause of `workflow` may run before it expires: the `quantile`
        quantile of the workflow's observed pauses; None until `min_observed` were
        observed."""
        if workflow not in self._limits:
            if len(self._limits) >= TRACKED_WORKFLOWS:  # (a memo of `observed`: it is
                self._limits.clear()  # computed again, the same, when asked again)
            seen = self.observed.get(workflow, ())
            self._limits[workflow] = (percentile(list(seen), 100.0 * self.quantile)
                                      if len(seen) >= self.min_observed else None)
        return self._limits[workflow]


def expiry_bound(paused_at: float, limit: float) -> float:
    """A time before which a pause from `paused_at` has not run past `limit` as
    `SessionGate.expire` tests it (`now - paused_at > limit`, in floats): the float just
    below `paused_at + limit`. Exact reals: a time up to `paused_at + limit` gives a
    difference up to `limit`, which rounds to at most `limit` (rounding is monotone), so
    the first time that passes lies above that sum, hence above the float sum less half an
    ulp, hence above the float below it. At most a few floats early (a nan sum: -inf, a
    bound that holds for anything)."""
    t = paused_at + limit
    return math.nextafter(t, -math.inf) if t == t else -math.inf
