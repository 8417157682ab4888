"""Prefill that stalls running decodes: a cap on a batch step's prefill tokens while steps
decode (`WorkflowScheduler(decode_prefill_tokens=...)`), and the re-admission of a demoted
session on the pool's room alone (`readmit_charge` "room").

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from it by concept.

Why (RESULTS "Scheduling", session 23; `bench/scheduling_bound_gap.py` on the fit seeds
101-106 at bfcl 1x 25%, the point that misses the 2x goal): bench/scheduling_bound.py's
bound there is its solo part, every session run alone as it arrives, and the default's TCT
beyond it is mostly waits to be admitted again after demotions (1.6-14.4 s a session of a
3.3-19.8 s gap; the steps' run time beyond solo 1.2-1.9 s). Each demotion cost its session
0.9-12.0 s of such waits (means by seed) against 0.05-0.26 s of the recomputation keeping it
admitted would have cost, and during 35-51% of the demoted steps' waits their whole prompt
fitted on the GPU beside the running steps' contexts: the bound's schedule would have run
them. Admitting them there (this "room" value alone) did not pay: the runs' time beyond solo
rose to 3.5-5.1 s a session, 1.9-3.0 s of it decodes stalled in batch steps that carried
other steps' prefill, mostly recomputation (the simulator's cost model: a step lasts its
overhead plus the larger of its compute and memory times, so a decode waits for every
prefill token in its step; the bound counts none of that). Recomputation costs its own
compute time times the steps it stalls. So the cap: while any running step decodes, a batch
step computes at most `decode_prefill_tokens` prompt tokens (running prefills first, then
admissions), so a prefill, first-time or recomputed, is spread over steps that each stay
near a decode step's length, and the decodes beside it go on. A step with nothing decoding
takes the whole token budget, as before. 0 (the default): off.

Opt-in, both: `--fit` round 25 (fit seeds 101-106) ranked the cap of 128 tokens first
(smallest gain 1.40x -> 1.61x at bfcl 1x 25%, every fit point's gain up) and its non-thrash
check rejected it (swe seed 103 1x p95 +5.8%, web seed 103 1x p95 +4.9%; the AFS veto, read
before 00c1ce0 stopped the cap billing tenants for uncomputed tokens: 17 of 32 mix ratios
up); with "room" the smallest gain fell to 1.36x (swe, web).
docs/scheduling_fit_history.md has the round.
"""

from __future__ import annotations

from typing import Any

from kvsaga.scheduler.base import Executor, SchedulerOutput, check_int

# `readmit_charge` "room": a demoted session's step is admitted again when the pool can take
# it (`BlockRoom._fits`: its first chunk, and with steps running its whole prompt and some
# decode headroom beside theirs), whatever the working sets charged (`_session_fits`).
READMIT_ROOM = "room"


class DecodeStall:
    """The prefill cap (see the module docstring)."""

    def _init_decode_stall(self, decode_prefill_tokens: object) -> None:
        self.decode_prefill_tokens = check_int("decode_prefill_tokens", decode_prefill_tokens,
                                               0)
        self._prefill_left: int | None = None  # prompt tokens left to this batch step
        self._in_schedule = False

    def _decoding(self, executor: Executor) -> bool:
        """Whether a running step computes one token in this batch step: a decode, or a
        prefill with one prompt token left, which costs a step what a decode costs and is
        likewise never cut (`_grant`), so it turns the cap on just as a decode does."""
        return any(executor.num_new_tokens(r) == 1 for r in self.running)

    def schedule(self, now: float, executor: Executor) -> SchedulerOutput:
        cap = self.decode_prefill_tokens
        self._prefill_left = cap if cap and self._decoding(executor) else None
        self._in_schedule = True
        try:
            return super().schedule(now, executor)
        finally:
            self._in_schedule = False
            self._prefill_left = None

    def admit_waiting(self, now: float, budget: int, executor: Executor,
                      out: SchedulerOutput) -> None:
        if self._in_schedule:
            super().admit_waiting(now, budget, executor, out)
            return
        # A simulator's decode run calls it alone at a step whose running steps decode.
        cap = self.decode_prefill_tokens
        self._prefill_left = cap if cap and self.running else None
        try:
            super().admit_waiting(now, budget, executor, out)
        finally:
            self._prefill_left = None

    def _grant(self, req: Any, n: int) -> int:
        # The cap cuts `n` before the classes after this one see it: Agent Fair Share of
        # compute (`fair_share.ComputeShares._grant`) bills the tenant what it grants, so a
        # cut after it would bill prompt tokens never computed. One token (a decode, or a
        # prefill's last prompt token: see `_decoding`) is never cut, as there.
        left = self._prefill_left
        if left is None or n <= 1:
            return super()._grant(req, n)
        n = super()._grant(req, min(n, left))
        self._prefill_left = left - n
        return n

    def _chunk_limit(self, req: Any, budget: int) -> int:
        limit = super()._chunk_limit(req, budget)
        left = self._prefill_left
        return limit if left is None else min(limit, left)

    def _charge_chunk(self, req: Any, n: int) -> None:
        super()._charge_chunk(req, n)
        if self._prefill_left is not None:
            self._prefill_left = max(self._prefill_left - n, 0)
