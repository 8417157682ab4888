"""graph's admission and demotion waits: the records it learns, its options on them, and
what they forecast.

`graph` (graph.py, "Admission wait" and "Demotion") adds to a paused session's time until
reuse the admission wait it expects, and prices a session whose tool has returned and which
queues for admission, and one the scheduler demoted, by the time it still has to wait; both
are read from the waits observed so far. `ReturnForecast` keeps those records and reads them
as graph's options say:

- `residual_wait`: a queued session reads the observed residual wait given the time it has
  queued, not the running mean of the admission waits (`wait_alpha`) less that time;
- `median_returns`: the records are `WorkflowWaits` (returns.py): the *median* residual
  wait, per workflow shrunk to the pooled waits, instead of the pooled *mean*
  (`WaitSamples`);
- `spread`: the records are `SpreadWaits` (spread.py), and the states `spread_states` names
  are priced by `SpreadWaits.priced` (the expected inverse of the residual wait) instead of
  the median.

- `demoted_mean`: a demoted session reads the *mean* residual demotion of the same record
  (`WorkflowWaits.mean_residual`) instead of the median. Why (seventeenth session, fit
  seeds, `python bench/policies_decisions.py`): where graph and ttl rank the same pool
  differently, graph mostly keeps a demoted session's blocks that ttl drops, and on
  swe+bfcl seed 402 at 60% fewer than half of those were read before graph evicted them
  anyway (against four in five of the paused blocks ttl kept instead). Holding a block
  until its reuse occupies the pool for the whole wait, so the long-run benefit of
  keeping a class of blocks per block-second is E[rebuild] / E[wait] (renewal-reward),
  which calls for the mean wait; the median, below the mean for the heavy-tailed
  demotions, overvalues them. Off by default: the whole-fit-set smoothed tune picked it
  (worst 1.36x of the best of lru, saga and ttl against 1.40x) and it passed issue 10's
  non-thrash check, but it fails issue 10's AFS veto (the two-tenant mix at 50%
  afs_max_slowdown_ratio 1.44 -> 1.59, the goal <= 1.5 met -> missed; bench/policies_tune.py
  `AFS_CHECKS`), so the lead reverted it to off (seventeenth session); the option stays.

A paused session whose tool has not returned reads the median (or mean) admission wait
whatever `spread` says. Before any demotion was seen to end, a demoted session is priced by
graph's own prediction times `DEFERRED_SLOWDOWN`.

This was graph.py's own code until graph.py neared the project's file-size limit; graph
reads it exactly as it did inline (same records, same statistics, same order of checks).
"""

from __future__ import annotations

from kvsaga._validate import check_number
from kvsaga.policy.returns import WaitSamples, WorkflowWaits
from kvsaga.policy.spread import SPREAD_STATES, SpreadWaits, spread_flags
from kvsaga.policy.trust import flag

# A demoted session (Scheduler -> session_deferred) waits for the admitted sessions to
# finish or be demoted before its next step runs. Until the policy has seen a demoted
# session come back, its blocks rank as needed this many times later than predicted
# (checked on seed 101 of bench/scheduling.py, the fit seed, among 1, 3, 10 and 100: web
# and bfcl at 50% and 25%); from then on, by the demotions it saw (`WaitSamples`).
DEFERRED_SLOWDOWN = 100.0


class ReturnForecast:
    """The observed admission waits (resume hint -> step start, warm and cold resumes
    apart) and demotions (demotion -> step start), and the time still to wait they forecast.

    Args:
        residual_wait: price a queued session's admission wait by the observed residual
            wait given the time queued (True), or (False) by the running mean less that
            time. True: picked by `bench/policies.py --tune` on the fit seeds under the
            tune rule of 2026-12-01's tenth session (least worst ratio to the best of lru,
            saga and ttl: 1.50x against False's 3.38x over 71 pressured cases). False had
            been picked in the eighth by the earlier rule (most cases at or below that
            best: 39 of 71 against 36).
        wait_alpha: the weight, once 1 / wait_alpha resumes were seen, of each new admission
            wait in its running mean (before that, the plain mean of those seen).
        median_returns: forecast a queued or demoted session's return by the median, not
            the mean, residual of the observed waits, per workflow shrunk to the pooled
            ones by `prior` (`WorkflowWaits`, returns.py). True: picked by graph's tune
            rule on the fit seeds in the twelfth session (worst 1.50x as without it, 28
            cases above 1.0x against 35, 13.17M tokens against 13.83M).
        spread: price a queued or demoted session by the expected inverse of its residual
            wait, not the inverse of its median (`SpreadWaits.priced`, spread.py): a wide
            record of waits brings its blocks forward. Implies `median_returns`' record.
        spread_states: which of `queued` and `demoted` `spread` prices (names, or a tuple).
        prior: the pooled waits' total weight against a workflow's own (graph passes its
            `calib_prior`, or 4 when that is None).
        demoted_mean: price a demoted session by the mean residual demotion, not the
            median (module docstring); `spread` on demoted sessions takes precedence.
            Required, keyword-only: its default is GraphPolicy's alone, so the two cannot
            drift apart.
    """

    def __init__(self, residual_wait: bool = True, wait_alpha: float = 0.02,
                 median_returns: bool = True, spread: bool = False,
                 spread_states: tuple[str, ...] | str = SPREAD_STATES,
                 prior: float = 4.0, *, demoted_mean: bool) -> None:
        self.residual_wait = flag("residual_wait", residual_wait)
        check_number("wait_alpha", wait_alpha, lambda v: 0 < v <= 1, "in (0, 1]")
        self.wait_alpha = wait_alpha
        # Admission waits' running means, warm and cold: [mean, count].
        self.admission_wait: dict[bool, list[float]] = {True: [0.0, 0], False: [0.0, 0]}
        self.median_returns = flag("median_returns", median_returns)
        self.spread = flag("spread", spread)
        self.spread_queued, self.spread_demoted = spread_flags(self.spread, spread_states)
        self.prior = prior
        self.demoted_mean = flag("demoted_mean", demoted_mean)
        self.wait_samples = {True: self.record(), False: self.record()}  # warm, cold
        self.deferred_wait = self.record()

    def record(self) -> WaitSamples:
        """An empty record of observed waits, of the kind the options call for."""
        if self.spread:
            return SpreadWaits(self.prior)
        return WorkflowWaits(self.prior) if self.median_returns else WaitSamples()

    def admitted(self, warm: bool, wait_s: float, workflow: str | None) -> None:
        """A step started `wait_s` after its session's resume hint (`warm` then)."""
        w = self.admission_wait[warm]
        w[1] += 1
        w[0] += (wait_s - w[0]) / min(w[1], 1.0 / self.wait_alpha)
        self.wait_samples[warm].add(wait_s, workflow)

    def demotion_ended(self, lasted_s: float, workflow: str | None) -> None:
        """A demoted session's step started `lasted_s` after its demotion."""
        self.deferred_wait.add(lasted_s, workflow)

    def admission_left(self, warm: bool, queued_s: float, workflow: str | None,
                       ready: bool) -> float:
        """Seconds still to wait for admission, `queued_s` after the resume hint (`ready`:
        the tool has returned; else `queued_s` is 0 and the session is still paused); 0
        before any admission was seen."""
        if self.residual_wait:
            ws = self.wait_samples[warm]
            left = ws.priced(queued_s, workflow) if self.spread_queued and ready \
                else ws.residual(queued_s, workflow)
            return 0.0 if left is None else left
        left = self.admission_wait[warm][0] - queued_s
        return 0.0 if left < 0.0 else left  # max(left, 0.0) without a call

    def demoted_time(self, predicted_s: float, lasted_s: float, workflow: str | None,
                     floor_s: float, clock: float = 1.0) -> tuple[float, bool]:
        """(Seconds until a demoted session's blocks are read, whether the demotions seen
        said so): the later of graph's `predicted_s`, the time the demotions seen say one
        that has lasted `lasted_s` still lasts, and `floor_s`; before any demotion was seen
        to end, `predicted_s` x DEFERRED_SLOWDOWN. `clock` (> 0; graph's `demoted_size`,
        size_effect.py): the session's demotion runs that many times slower than the
        record's, so the record's residual is read at `lasted_s / clock` and scaled by it."""
        dw = self.deferred_wait
        at = lasted_s if clock == 1.0 else lasted_s / clock
        left = dw.priced(at, workflow) if self.spread_demoted \
            else dw.mean_residual(at, workflow) if self.demoted_mean \
            else dw.residual(at, workflow)
        if left is None:
            return predicted_s * DEFERRED_SLOWDOWN, False
        if clock != 1.0:
            left *= clock
        return max(predicted_s, left, floor_s), True
