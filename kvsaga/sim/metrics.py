"""What a simulation measures: token accounting, KV usage over time, and the result record."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import reduce
from operator import add

import numpy as np

from kvsaga.pool import BlockPool
from kvsaga.sim.cost import StepCostModel, attention_pairs
from kvsaga.sim.trace import DEFAULT_TENANT, Session


@dataclass(frozen=True)
class SimResult:
    """The outcome of one simulated run.

    Token counts (prompt tokens only; decoded tokens are counted apart):
        prompt_tokens: prompt tokens of every step of the trace (each step once).
        queried_tokens: prompt tokens of every attempt (a preempted step is attempted again).
        hit_tokens: prompt tokens found cached at the start of an attempt.
        computed_tokens: prompt tokens prefilled; = first_time_tokens + recomputed_tokens.
        first_time_tokens: computed tokens whose KV had never been computed before (by this
            session, or for its shared prefix by any session of the same group and tenant).
        recomputed_tokens: computed tokens whose KV had been computed before and was lost.
        recomputed_after_preemption_tokens: the part of recomputed_tokens computed by
            attempts that follow a preemption of the same step (the scheduler's doing); the
            rest was recomputed by first attempts: KV evicted while its session paused (or a
            shared prefix evicted between sessions), which is the eviction policy's doing.
        abandoned_tokens: prompt tokens of preempted attempts that were neither hit nor
            computed before the preemption.
        decode_tokens: tokens fed to decode steps (each sampled token but a step's last); each
            is computed there for the first time.
        Conservation: queried = hit + computed + abandoned; prompt = queried when nothing
        was preempted; first_time + decode = the distinct tokens of the trace that are ever
        computed (each prefix once, then every session token but the very last output).
    Time:
        makespan_s: from t=0 of the trace clock (not the first arrival) to the last step's
            last token: tasks_per_hour and the KV shares below count the idle time before
            the first arrival. The built-in generators start a trace one exponential gap
            after 0; `kvsaga sim --trace` notes a first arrival far from 0
            (docs/simulator.md, "Metrics").
        tct_mean_s, tct_p95_s: task completion time (last token - arrival) over sessions.
        busy_s: time the GPU spent in batch steps.
    KV memory (time averages over the makespan, as shares of the GPU blocks):
        kv_utilization: blocks holding data that is used: referenced by a running step, or
            cached and later hit (the time between its release and the hit counts).
        kv_occupancy: blocks not free (referenced or cached).
        kv_active: blocks referenced by running steps.
        kv_live_share: min(blocks of the live sessions' contexts, GPU blocks): the room that
            data with a future could fill at all (live: arrived, not ended; each context's
            tokens that have or will have KV: its step's prompt from the step's release,
            growing by a block as a decoded token's KV starts one, until the session ends;
            the last output of a step has none until the next prompt). kv_utilization can
            exceed it only by prefix blocks that a later session hits, so a scheduler that
            keeps utilization near it wastes little; where it is far below 1 (few live
            contexts against the pool), no scheduler reaches a high utilization without
            holding sessions back.
    Host tier (0 without one):
        bytes_offloaded, bytes_reloaded: GPU -> host and host -> GPU copies (blocks x bytes).
        host_hit_tokens: prompt tokens found on the host (part of hit_tokens).
        prefetched_blocks: blocks loaded ahead of a resume (part of bytes_reloaded).
        load_wait_s: time batch steps were stretched waiting for copies.
    peak_live_blocks: the most blocks that live sessions' contexts (as kv_live_share counts
        them, decoded tokens included) held at once: on a run that never evicts, the working
        set that a pool must hold to recompute nothing.
    peak_prompt_live_blocks: the same peak with each context counted only as of its last
        release (the prompt) or finish (all its tokens, the last output included): the
        decode growth of running steps left out, so at most peak_live_blocks plus one
        block per paused session. The measure benchmarks sized their capacity grids from
        (`kvsaga.sim.compare.peak_prompt_working_set`; docs/simulator.md).
    Scheduling:
        scheduler: the scheduler's name (`kvsaga.scheduler.SCHEDULERS`).
        tasks_per_hour: sessions completed per hour of makespan.
        slo_attainment: share of sessions whose TCT is at most `SimConfig.slo_factor` x
            their unloaded TCT (`unloaded_tct`: tool time plus the steps alone on an idle
            GPU with unbounded KV).
        tenants: with more than one tenant in the trace, per tenant ("default" for
            sessions without one): {"tasks": sessions, "tct_mean_s": mean TCT}; else None.
    """

    policy: str
    preset: str
    num_gpu_blocks: int
    num_sessions: int
    num_steps: int
    prompt_tokens: int
    queried_tokens: int
    hit_tokens: int
    computed_tokens: int
    first_time_tokens: int
    recomputed_tokens: int
    abandoned_tokens: int
    decode_tokens: int
    num_preemptions: int
    num_batch_steps: int
    num_evicted_blocks: int
    makespan_s: float
    busy_s: float
    tct_mean_s: float
    tct_p95_s: float
    kv_utilization: float
    kv_occupancy: float
    kv_active: float
    bytes_offloaded: int = 0
    bytes_reloaded: int = 0
    num_host_blocks: int = 0
    host_hit_tokens: int = 0
    prefetched_blocks: int = 0
    load_wait_s: float = 0.0
    peak_live_blocks: int = 0
    recomputed_after_preemption_tokens: int = 0
    scheduler: str = ""
    tasks_per_hour: float = math.nan
    slo_attainment: float = math.nan
    tenants: dict[str, dict[str, float]] | None = None
    kv_live_share: float = math.nan
    peak_prompt_live_blocks: int = 0

    @property
    def hit_rate(self) -> float:
        """Share of queried prompt tokens that were cache hits."""
        return self.hit_tokens / self.queried_tokens if self.queried_tokens else 0.0

    def to_dict(self) -> dict:
        """A JSON-ready dict, `hit_rate` included."""
        out = asdict(self)
        out["hit_rate"] = self.hit_rate
        return out


def unloaded_tct(session: Session, cost: StepCostModel, max_num_batched_tokens: int) -> float:
    """A session's TCT alone on an idle GPU with unbounded KV: its tool time plus each step's
    prefill (the new tokens over all earlier ones, in chunks of the batch budget) and decode
    (one token a step; its sum is exact because a one-token decode step's time is affine in
    its context, being memory-bound on every preset). The step times are
    `prefill_time` / `decode_step_time` without their argument checks (counts made here).

    The chunks are the scheduler's: a resumed step's first chunk ends at the budget past
    its full cached blocks (`Scheduler._first_end`), so a retained partial tail block
    shortens it, to one token at least, and the next chunks take the whole budget from
    there (before session 50 they were cut from the cached length, and a lone session
    beat this reference by up to 0.1%)."""
    step_time = cost._step_time
    bs = cost.block_size
    t = 0.0
    cached = 0
    for k, step in enumerate(session.steps):
        prompt = session.prompt_length(k)
        pos = cached
        end = min(prompt, cached // bs * bs + max_num_batched_tokens)  # the first chunk's
        while pos < prompt:
            chunk = max(end - pos, 1)
            t += step_time(chunk, attention_pairs(chunk, pos), pos, 0, 0)
            pos += chunk
            end = min(prompt, pos + max_num_batched_tokens)
        n = step.output_tokens - 1  # the first output comes from the prefill
        if n > 0:
            first = step_time(0, 0, 0, 1, prompt + 1)
            last = step_time(0, 0, 0, 1, prompt + n)
            t += n * (first + last) / 2
        t += step.tool_s
        cached = prompt + step.output_tokens - 1  # the last output is never fed
    return t


def tenant_key(tenant: str | None) -> str:
    """A tenant's key in result rows ("default" for sessions without one)."""
    return DEFAULT_TENANT if tenant is None else tenant


class UsageRecorder:
    """Integrates a pool's block usage over time. The pool itself times each block's stays
    in CACHED (`BlockPool.clock`, `reused_s`), as it reclaims blocks, so the recorder needs
    no call per block: it keeps the pool's clock at its own.

    Args:
        pool: the GPU tier.
        now: the start time.
    """

    def __init__(self, pool: BlockPool, now: float = 0.0) -> None:
        self.pool = pool
        self._reused_before = pool.reused_s
        self.now = now
        self.active_s = 0.0  # block-seconds referenced by running steps
        self.occupied_s = 0.0  # block-seconds not free
        self.live_blocks = 0  # the live sessions' context blocks (kept by the owner)
        self.live_s = 0.0  # block-seconds of min(live_blocks, GPU blocks)
        self._last = now

    @property
    def now(self) -> float:
        return self._now

    @now.setter
    def now(self, now: float) -> None:
        self._now = now
        self.pool.clock = now

    @property
    def reused_cached_s(self) -> float:
        """Block-seconds that blocks later hit spent CACHED before the hit."""
        return self.pool.reused_s - self._reused_before

    def advance(self, now: float) -> None:
        """Integrate the pool's current counts up to `now` and move the clock there."""
        dt = now - self._last
        if dt > 0:
            pool = self.pool
            active = pool.num_active
            self.active_s += active * dt
            self.occupied_s += (active + pool.num_cached) * dt
            self.live_s += min(self.live_blocks, pool.num_blocks) * dt
        self._last = max(self._last, now)
        self.now = now

    def advance_through(self, times: list[float],
                        counts: list[tuple[int, int, int, int]]) -> None:
        """`advance(t)` for each t of `times` in turn (a decode run's step ends), the pool's
        active and cached counts and the live blocks being `counts[k][1:]` from step
        `counts[k][0]` on (they change only where the run allocates): the same sums in the
        same order as step by step, without reading the pool at each step. Times that never
        fall (a run's) take their differences and products as arrays (the same float
        operations) and their sums, still one after the other, in C."""
        if not times:
            return
        cap = self.pool.num_blocks
        t = np.array(times)
        dt = np.empty(len(times))  # np.diff(t, prepend=self._last), without its broadcast
        dt[0] = t[0] - self._last
        np.subtract(t[1:], t[:-1], out=dt[1:])
        if len(times) < 8 or not (dt >= 0).all():
            self._advance_each(times, counts, cap)
        else:
            # A zero difference adds 0.0, as skipping it would (the sums are never -0.0).
            active = np.empty(len(times))
            occupied = np.empty(len(times))
            live = np.empty(len(times))
            bounds = [c[0] for c in counts[1:]] + [len(times)]
            for (first, a, cached, blocks), end in zip(counts, bounds, strict=True):
                active[first:end] = a
                occupied[first:end] = a + cached
                live[first:end] = min(blocks, cap)
            self.active_s = reduce(add, (active * dt).tolist(), self.active_s)
            self.occupied_s = reduce(add, (occupied * dt).tolist(), self.occupied_s)
            self.live_s = reduce(add, (live * dt).tolist(), self.live_s)
            self._last = times[-1]
        self.now = times[-1]

    def _advance_each(self, times: list[float], counts: list[tuple[int, int, int, int]],
                      cap: int) -> None:
        """`advance_through`'s sums, step by step (live blocks capped at `cap`)."""
        active_s, occupied_s, live_s, last = (self.active_s, self.occupied_s, self.live_s,
                                              self._last)
        bounds = [c[0] for c in counts[1:]] + [len(times)]
        for (first, active, cached, blocks), end in zip(counts, bounds, strict=True):
            occupied = active + cached
            live = min(blocks, cap)
            for t in times[first:end]:
                dt = t - last
                if dt > 0:
                    active_s += active * dt
                    occupied_s += occupied * dt
                    live_s += live * dt
                last = max(last, t)
        self.active_s, self.occupied_s, self.live_s, self._last = (active_s, occupied_s,
                                                                    live_s, last)
