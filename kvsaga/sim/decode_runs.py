"""Decode runs: the simulator's batch steps in which every running request only decodes.

While every running request decodes and the token budget covers them, `Scheduler.schedule`
would only allocate one token for each (and, if something waits, ask its admissions); the
simulator then runs those batch steps back to back with the same manager calls, cost-model
times, copies and ticks, and no `schedule` call, until a request finishes, an admission
begins, an event is due or an allocation could fail (kvsaga/sim/simulator.py's docstring;
`Simulator(reference=True)` runs every step through `schedule`, with identical results).

`DecodeRuns` is a part of `Simulator` kept in its own module: it reads the simulator's
scheduler, manager, pool, cost model, recorder and clock, and calls its `_execute`,
`_run_for` and `_maybe_finish`.
"""

from __future__ import annotations

import bisect
import itertools
import math
from functools import reduce
from operator import add

import numpy as np

from kvsaga._validate import is_int
from kvsaga.policy import EvictionPolicy
from kvsaga.scheduler import SchedulerOutput
from kvsaga.sim.request import SimRequest

ARRAY_STEPS = 8  # a run's step times come from one array call from this many steps on


class DecodeRuns:
    """The decode-run steps of `Simulator` (a mixin: see the module docstring)."""

    def _decoding_only(self) -> bool:
        """Whether the next batch step starts as a plain decode step: something runs,
        every running request decodes and the token budget covers them all. Then
        `Scheduler.schedule` calls `allocate(req, 1)` for each running request in order
        (preempting if that raises `OutOfBlocks`), then, if something waits, its
        admissions (`Scheduler.admit_waiting`)."""
        sched = self.scheduler
        running = sched.running
        if not running or len(running) > sched.max_num_batched_tokens:
            return False
        return not any(r.prefilling for r in running)

    def _horizon(self) -> float:
        """The time a decode run must stay before: the next event here (a release)."""
        return self._events[0][0] if self._events else math.inf

    def _decode_run(self) -> int | None:
        """Plain decode steps of the running requests, up to the one that finishes a
        request, admits a waiting one, or the next event, each done as
        `Scheduler.schedule` + `_execute` would do it, minus their per-step and per-request
        overheads; None if the first step needs more blocks than the pool has (`schedule`
        then takes it, preemptions included).

        Per step: `allocate` (manager calls) for each request whose fed token has no slot
        yet, in running order, only while the pool holds a block for each of them (an
        allocation takes at most one); if something waits, the scheduler's admissions at
        that step (`_admits`: a step that admits is carried out by `_execute`, as
        `schedule`'s would be); the cost-model time, copies and waits, the clock,
        `manager.tick`. Per run, not per step: each request's sampled count, slots left and
        high-water mark (nothing reads them between two steps of the run). Without a host
        tier (no copies to wait for) the steps' times and usage integrals are computed for
        the whole run at once (`_decode_steps_at_once`).
        """
        sched = self.scheduler
        running = list(sched.running)
        n = len(running)
        if not n:  # `min` below would raise a bare ValueError, then the run's arrays IndexError
            raise ValueError("_decode_run: no request is running (the simulator asks "
                             "_decoding_only first)")
        # The state `schedule` would update at the run's first step (compute shares'
        # competing tenants): the same through the run, as nothing arrives or leaves in it.
        sched.decode_run_starts(self.now)
        # What waits stays waiting through the run (no event is released in it; a run ends
        # at an admission or a preemption), and so do the budget and seats left to admit.
        budget = sched.max_num_batched_tokens - n
        self._admit_budget = budget if (
            budget > 0 and n < sched.max_num_seqs and sched.num_waiting) else 0
        self._admission = None
        self._refused_until = -math.inf  # no refusal known to hold yet
        self._allocated = False  # a decode block taken since the refusal was last checked
        if self._admit_budget:  # filled only by an admission (`_admit` changes nothing else)
            self._admit_out = SchedulerOutput()
        # At step j of the run request i feeds sample start[i] + j; due[i] is the first
        # step at which it has no slot left (then `allocate` calls the manager).
        start = [r.num_sampled for r in running]
        due = [r.slots_ahead for r in running]
        last = min(r.num_out - r.num_sampled for r in running)  # steps to the first finish
        if last < 1:
            done = next(r for r in running if r.num_sampled >= r.num_out)
            raise ValueError(f"_decode_run: session {done.session.id!r} step {done.k} has "
                             f"sampled {done.num_sampled} of its {done.num_out} tokens and "
                             "still runs (it should have finished)")
        ctx = sum(r.fed_position + 1 for r in running)
        limit = self._steps_before_horizon(n, ctx, last)
        if self.manager.host is None and limit >= ARRAY_STEPS:
            j = self._decode_steps_at_once(running, start, due, last, ctx, limit)
        else:  # copies to wait for, or too few steps to pay for the arrays
            j = self._decode_steps(running, start, due, last, ctx, limit)
        self.manager.stop_journal()
        admitted = self._admission
        if not j and admitted is None:
            return None
        self._counts["batch_steps"] += j
        self._counts["decode"] += n * j
        for i, r in enumerate(running):
            r.num_sampled = start[i] + j
            r.slots_ahead = due[i] - j
            # The run's last step fed position fed_position - 1 (its sample came after).
            r.tokens.high_water = max(r.tokens.high_water, r.fed_position)
        if admitted is not None:
            # Step j admitted: every running request had its `allocate(req, 1)` of step j
            # (the due ones' manager calls made), then the admissions; run it as a step.
            for r in running:
                r.slots_ahead -= 1
                r.tokens.high_water = max(r.tokens.high_water, r.fed_position + 1)
            return self._execute(admitted.scheduled, running)
        if j < last:
            return 0
        finished = sum(self._maybe_finish(r) for r in running)
        self.manager.tick(self.now)
        return finished

    def _allocate_due(self, running: list[SimRequest], start: list[int], due: list[int],
                      j: int) -> bool:
        """Step j's allocations (the requests due then, in running order); False, nothing
        done, if the pool might not hold a block for each (the scheduler decides then)."""
        now_due = [i for i, d in enumerate(due) if d == j]
        if len(now_due) > self.pool.num_available:
            return False
        for i in now_due:
            r = running[i]
            r.num_sampled = start[i] + j
            r.slots_ahead = 0
            self.allocate(r, 1, self.now)
            due[i] = j + 1 + r.slots_ahead
        if now_due:
            self._allocated = True  # the pool changed: a refusal must be shown to stand
        return True

    def _admits(self, running: list[SimRequest], start: list[int], j: int) -> bool:
        """At step j of a decode run, after its allocations: the scheduler's admissions, as
        `schedule` makes them there (at `self.now`, the running requests' sampled counts
        those of step j: a scheduler may read them); True if one began (`_admission` holds
        them, and the run ends before the step). With nothing waiting, False. A refusal
        is not asked again while it holds (`Scheduler.refusal_until`, with the cache
        version and the pool's blocks as they were: `_allocate_due` ends it), since the
        scheduler would refuse again and change nothing."""
        if not self._admit_budget or self._refusal_holds():
            return False
        for i, r in enumerate(running):
            r.num_sampled = start[i] + j
        out = self._admit_out
        sched = self.scheduler
        sched.admit_waiting(self.now, self._admit_budget, self, out)
        if not out.admitted:
            self._refused_until = sched.refusal_until(self.now)
            self._refused_at = self.manager.cache_version
            self._allocated = False
            self.manager.start_journal()
            return False
        self._admission = out
        return True

    def _refusal_holds(self) -> bool:
        """Whether the run's last refusal still holds now (see `_admits`): before its
        `refusal_until`, and with the cache as it was, or changed since only by decode
        allocations and evictions that the scheduler says leave it standing
        (`Scheduler.refusal_stands`, given `KVCacheManager.journal`'s victims)."""
        if self.now >= self._refused_until:
            return False
        manager = self.manager
        version = manager.cache_version
        if version == self._refused_at and not self._allocated:
            return True
        evicted = manager.journal()
        if evicted is None or not self.scheduler.refusal_stands(self.now, evicted):
            self._refused_until = -math.inf  # ask again
            return False
        manager.start_journal()  # the refusal stands as of now: check later changes only
        self._refused_at, self._allocated = version, False
        return True

    def _decode_steps(self, running: list[SimRequest], start: list[int], due: list[int],
                      last: int, ctx: int, limit: int) -> int:
        """The run's steps one at a time (the host tier's copies may stretch each), their
        GPU times computed ahead for the `limit` steps (`_steps_before_horizon`: copies
        only lengthen steps, so no more of them run before the next event); returns how
        many ran (at most `limit`: a caller's smaller bound ends the run there, where the
        steps' times run out)."""
        n = len(running)
        horizon = self._horizon()
        manager = self.manager
        dts = self._step_times(n, ctx, limit)
        next_due = min(due)
        j = 0
        while j < limit and (not j or self.now < horizon):
            if j == next_due:
                if not self._allocate_due(running, start, due, j):
                    break
                next_due = min(due)
            if self._admits(running, start, j):
                break
            self._run_for(dts[j])
            j += 1
            if j == last:
                break
            manager.tick(self.now)
        return j

    def _steps_before_horizon(self, n: int, ctx: int, last: int) -> int:
        """At least as many steps as a run of `n` requests from context `ctx` can take
        before the next event, at most `last`: a step takes no less than the first (its
        context only grows). ValueError unless n >= 1 and last >= 1."""
        if not (is_int(n) and n >= 1 and is_int(last) and last >= 1):
            raise ValueError(f"_steps_before_horizon: need n >= 1 rows and last >= 1 steps, "
                             f"got n={n!r}, last={last!r}")
        room = self._horizon() - self.now
        if room >= math.inf:
            return last
        first = self.cost._step_time(0, 0, 0, n, ctx)
        return min(last, max(1, int(room / first) + 2))

    def _step_times(self, n: int, ctx: int, limit: int) -> list[float]:
        """GPU seconds of a run's first `limit` decode steps of `n` rows, `ctx` context
        tokens in all at the first (n more at each): one array call from ARRAY_STEPS steps
        on, equal to the per-step model to the bit. ValueError unless n >= 1, ctx >= 0 and
        limit >= 1 (a run has at least one step; the callers index its first time)."""
        if not (is_int(n) and n >= 1 and is_int(ctx) and ctx >= 0 and is_int(limit)
                and limit >= 1):
            raise ValueError(f"_step_times: need n >= 1 rows, ctx >= 0 context tokens and "
                             f"limit >= 1 steps, got n={n!r}, ctx={ctx!r}, limit={limit!r}")
        if limit < ARRAY_STEPS:
            return [self.cost._step_time(0, 0, 0, n, ctx + n * j) for j in range(limit)]
        return self.cost.decode_step_times(n, ctx + n * np.arange(limit, dtype=np.int64)).tolist()

    def _decode_steps_at_once(self, running: list[SimRequest], start: list[int],
                              due: list[int], last: int, ctx: int, limit: int) -> int:
        """`_decode_steps` without copies: the clock of every step of the run from one
        array of step times (the same sums, in the same order), then the steps' manager
        calls and ticks at their times, then the usage integrals over the steps run, with
        the pool's counts and the live blocks of each step. Returns how many steps ran."""
        n = len(running)
        dts = self._step_times(n, ctx, limit)
        # times[j]: when step j starts; a sequential sum, as `now += dt` step by step.
        times = list(itertools.accumulate(dts, initial=self.now))
        # Step j > 0 runs only while times[j] is before the next event.
        steps = bisect.bisect_left(times, self._horizon(), 1, limit)
        pool, manager, rec = self.pool, self.manager, self.recorder
        tick = type(manager.policy).tick
        ticks = tick is not EvictionPolicy.tick
        # Ticks in a row that the policy says leave the state of the last: only that one.
        coalesce = ticks and getattr(tick, "coalesces", False)
        counts = [(0, pool.num_active, pool.num_cached, self._live_total)]
        # (first step, active, cached, live blocks)
        next_due = min(due)
        j = 0
        if self._admit_budget:
            steps = self._steps_admitting(running, start, due, times, steps, last, counts,
                                          ticks, coalesce)
            j = steps
        while j < steps:
            if j == next_due:
                self.now = rec.now = times[j]
                if not self._allocate_due(running, start, due, j):
                    steps = j
                    break
                next_due = min(due)
                counts.append((j, pool.num_active, pool.num_cached, self._live_total))
            stop = min(next_due, steps)
            if ticks:  # after each step but the run's last (the finish ticks then)
                hi = min(stop, last - 1)
                for i in range(max(j + 1, hi) if coalesce else j + 1, hi + 1):
                    self.now = times[i]
                    manager.tick(self.now)
            j = stop
        if steps:
            self._integrate(times, dts, steps, counts)
        return steps

    def _steps_admitting(self, running: list[SimRequest], start: list[int], due: list[int],
                         times: list[float], steps: int, last: int,
                         counts: list[tuple[int, int, int, int]], ticks: bool,
                         coalesce: bool) -> int:
        """`_decode_steps_at_once`'s manager calls and ticks while something waits: step by
        step, each step's allocations then the scheduler's admissions (`_admits`) at its
        start time. Returns the steps run before the one that admitted or could not
        allocate (`steps` if none), with `counts` extended at the allocations. With
        `coalesce`, a step that neither allocates nor asks (its refusal holds) leaves its
        tick to the next one sent (`GroupedPolicy.tick.coalesces`)."""
        manager, rec, pool = self.manager, self.recorder, self.pool
        next_due = min(due)
        pending = None  # the time of a tick left to the next one
        for j in range(steps):
            t = times[j]
            self.now = rec.now = t
            if j and ticks:  # the tick after step j - 1 (never the run's last: j < last)
                if coalesce and j != next_due and self._refusal_holds():
                    pending = t
                    continue
                pending = None
                manager.tick(t)
            if j == next_due:
                if not self._allocate_due(running, start, due, j):
                    return j
                next_due = min(due)
                counts.append((j, pool.num_active, pool.num_cached, self._live_total))
            if self._admits(running, start, j):
                return j
        if ticks and steps < last:  # the tick after the run's last step
            pending = times[steps]
        if pending is not None:
            self.now = pending
            manager.tick(pending)
        return steps

    def _integrate(self, times: list[float], dts: list[float], steps: int,
                   counts: list[tuple[int, int, int, int]]) -> None:
        """Advance the clock, busy time and usage integrals over the run's first `steps`
        steps as `_run_for` step by step would (the same sums in the same order)."""
        self.recorder.advance_through(times[1: steps + 1], counts)
        self._busy = reduce(add, dts[:steps], self._busy)  # in order, as step by step
        self.now = times[steps]
