"""A discrete-event simulator of one GPU serving agent sessions with continuous batching.

It drives the real `KVCacheManager` and eviction policy (the objects the engine uses, not
copies); a cost model stands in for the model, so time advances by `StepCostModel.step_time`.

The life of a session: it arrives at `arrival_s`; each step waits in a FCFS queue, is
admitted with `begin_step` (prefix hits), prefills its missing prompt tokens in chunks under a
per-step token budget (`allocate_slots`), samples its first output token when the prompt is
done, then decodes one token per batch step; after the last output token, `finish_step`
pauses it on its tool (`tool_s` seconds, then the next step is queued), or `end_session`
closes it after its last step. `tick(now)` runs once per batch step.

Scheduling is `kvsaga.scheduler`'s, the very object `LLMEngine` drives
(`SimConfig.scheduler`: "workflow" or "fcfs"): the simulator is its executor, and only
carries out its decisions (`begin`, `allocate`, `preempt`) and times them with the cost
model. See docs/scheduler.md for the rules.

Manager calls during decode are made per KV block, not per token: when a request's next fed
token starts a block, the simulator appends the tokens it will feed up to that block's end
and allocates their slots at once. A block is taken exactly when the per-token engine would
take it, so eviction timing and every policy callback are unchanged; only the manager's view
of the tokens inside the block currently being written runs ahead.

Decode runs: while nothing waits and every running request decodes, `schedule` would only
allocate one token for each; the simulator then runs those batch steps back to back
(`_decode_run`) with the same manager calls, cost-model times, copies and ticks, and no
`schedule` call, until a request finishes, an event is due or an allocation could fail.
`Simulator(reference=True)` runs every step through `schedule`; results are identical.

The host tier (`SimConfig.num_host_blocks` / `host_memory_bytes`): the manager offloads victims
the policy wants kept and loads host hits back; each batch step the simulator takes the
manager's `TransferPlan` and queues it on one PCIe copy stream (FIFO, the preset's one-way
bandwidth, as the transfer engine runs plans). A GPU block may not be read (a load) or
overwritten (an offload) before its copy ends, so a batch step whose running requests hold
such a block waits for it; the copies overlap the step's compute layer by layer, so only
their excess over the GPU time adds (`StepCostModel.step_time`'s rule). Copies no step waits for
(prefetches, offloads of blocks nobody reuses yet) take link time and nothing else.
"""

from __future__ import annotations

import heapq
import inspect
import math
from collections.abc import Sequence

from tqdm.auto import tqdm

from kvsaga.config import KVSpec
from kvsaga.manager import KVCacheManager
from kvsaga.policy import POLICIES, EvictionPolicy, make_policy
from kvsaga.pool import ACTIVE
from kvsaga.prefix import root_hash
from kvsaga.scheduler import SchedulerOutput, make_scheduler
from kvsaga.sim.config import SimConfig
from kvsaga.sim.cost import attention_pairs
from kvsaga.sim.decode_runs import DecodeRuns
from kvsaga.sim.executor import StepExecutor
from kvsaga.sim.metrics import (
    SimResult,
    UsageRecorder,
    tenant_key,
    unloaded_tct,
)
from kvsaga.sim.oracle import TraceOracle
from kvsaga.sim.request import SimRequest, SimTokens
from kvsaga.sim.tokens import TokenSynthesizer
from kvsaga.sim.trace import Session, check_prefix_groups, serve_order
from kvsaga.stats import percentile

# The relative tolerance of the SLO test (`SimResult.slo_attainment`).
SLO_RTOL = 1e-9


class Simulator(DecodeRuns, StepExecutor):
    """Replays sessions through a `KVCacheManager` and a cost model.

    Args:
        sessions: the trace; ids must be unique.
        config: capacity, preset, policy and scheduler limits.
        policy: an already built policy instance, used instead of `config.policy` (for
            policies that need the trace, such as an offline oracle); one no other
            simulator or manager was given (InvalidRequest otherwise).
        synthesizer: makes the sessions' token ids (default: `TokenSynthesizer()`; give one
            with a model's vocabulary to replay the same ids through an engine).
        reference: run every batch step through `Scheduler.schedule`, without the decode
            runs (see `step`): the slow reference whose results the fast path must equal.
    """

    def __init__(self, sessions: Sequence[Session], config: SimConfig | None = None,
                 policy: EvictionPolicy | None = None,
                 synthesizer: TokenSynthesizer | None = None, *,
                 reference: bool = False) -> None:
        self.config = config or SimConfig()
        self.reference = reference
        self.cost = self.config.cost
        self.sessions = list(sessions)
        ids = [s.id for s in self.sessions]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise ValueError(f"session ids must be unique; {dup!r} repeats")
        check_prefix_groups(self.sessions)  # a TraceError (ValueError) naming both sessions
        num_blocks = self.config.blocks()
        if num_blocks < 1:  # said here: an empty trace reached the manager, which blamed
            # num_gpu_blocks, a field the caller never set
            raise ValueError(f"{num_blocks} blocks of KV capacity{self._capacity_source()}: "
                             f"a simulation needs at least one")
        spec = self.cost.kv_spec
        # The longest session is named, so that the capacity the message gives is the one the
        # trace needs (the first session that did not fit was named: at 7,000 blocks the
        # docs' quickstart was told 7,493, then refused again at 7,499).
        needs = [blocks_needed(s, spec) for s in self.sessions]
        if needs and max(needs) > num_blocks:
            need = max(needs)
            s = self.sessions[needs.index(need)]
            raise ValueError(
                f"session {s.id!r} reaches {s.total_tokens} tokens and needs KV for "
                f"{s.total_tokens - 1} of them ({need} blocks; its last output is never "
                f"fed), more than the {num_blocks} blocks of KV capacity"
                f"{self._capacity_source()}; {size_breakdown(s)}")
        self.synth = synthesizer or TokenSynthesizer()
        self.block_size = spec.block_size
        # The future, for offline policies: built here for those made by name; a policy
        # given built may carry its own TraceOracle, which the replay then drives too.
        self.oracle: TraceOracle | None = None
        if policy is None:
            policy = self._make_policy(self.config.policy)
        elif isinstance(getattr(policy, "oracle", None), TraceOracle):
            self.oracle = policy.oracle
        self.manager = KVCacheManager(spec, num_blocks, policy=policy, clock=self._clock,
                                      num_host_blocks=self.config.host_blocks())
        self.pool = self.manager.pool
        self.recorder = UsageRecorder(self.pool)
        self.now = 0.0
        # The PCIe copy stream: when it is next idle, and the GPU blocks whose copy (in or
        # out) ends in the future, with that time.
        self._link_free = 0.0
        self._copy_done: dict[int, float] = {}
        self._block_s = self.cost.transfer_time(self.cost.block_bytes)
        self._live_blocks: dict[str, int] = {}  # live sessions' context blocks with KV
        self._live_total = 0
        self._peak_live = 0
        self._prompt_blocks: dict[str, int] = {}  # as of their last release or finish
        self._prompt_total = 0
        self._peak_prompt = 0
        self._events: list[tuple[float, int, Session, int]] = []
        self._seq = 0
        self.scheduler = make_scheduler(
            self.config.scheduler, self.manager, max_num_seqs=self.config.max_num_seqs,
            max_num_batched_tokens=self.config.max_num_batched_tokens,
            **(self.config.scheduler_params or {}))
        self._tokens: dict[str, SimTokens] = {}
        # Prefix tokens computed so far per (tenant, group): the shared prefix is content
        # that any session of the group may have computed first.
        self._prefix_high_water: dict[tuple[str | None, str], int] = {}
        self._finished_at: dict[str, float] = {}
        self._counts = dict(prompt=0, queried=0, hit=0, first=0, recomputed=0, abandoned=0,
                            recomputed_preempted=0,
                            decode=0, preemptions=0, batch_steps=0, steps=0, offloaded=0,
                            loaded=0)
        self._load_wait = 0.0
        self._busy = 0.0
        self._admit_budget = 0  # a decode run's token budget to admit with (0: no check)
        self._admission: SchedulerOutput | None = None  # what a decode run's step admitted
        self._admit_out = SchedulerOutput()  # the run's output for `admit_waiting`
        # A decode run's last refusal holds until then, while the cache version stands.
        self._refused_until = -math.inf
        self._refused_at: object = None
        self._ran = False
        for s in serve_order(self.sessions):
            self._push_event(s.arrival_s, s, 0)

    def _capacity_source(self) -> str:
        """Where the KV capacity in blocks came from, for the error a session too long for it
        gets: the memory given and the bytes one block takes (a tiny `kv_memory_bytes` reads
        as 0 blocks otherwise, with nothing to say why)."""
        cfg = self.config
        if cfg.num_gpu_blocks is not None:
            return " (num_gpu_blocks)"
        memory, where = cfg.kv_memory_bytes, "kv_memory_bytes"
        if memory is None:
            preset = repr(cfg.preset) if isinstance(cfg.preset, str) else "cost model's"
            memory, where = self.cost.default_kv_memory_bytes(), f"the {preset} default"
        return f" ({where} {memory:,.0f} B at {self.cost.block_bytes:,} B per block)"

    def _make_policy(self, name: str) -> EvictionPolicy:
        """Build a policy by name, priced with this run's cost model when it takes one."""
        cls = POLICIES.get(name)
        if cls is None:
            return make_policy(name)  # raises, listing the known names
        if getattr(cls, "needs_oracle", False):
            self.oracle = TraceOracle(self.sessions, self.block_size, self.synth)
            return cls(oracle=self.oracle, cost=self.cost)
        if "cost" in inspect.signature(cls).parameters:
            return cls(cost=self.cost)
        return cls()

    @property
    def recomputed_so_far(self) -> int:
        """Prompt tokens recomputed so far in this run (they only grow)."""
        return self._counts["recomputed"]

    def _clock(self) -> float:
        return self.now

    # -- events ---------------------------------------------------------------------------
    def _push_event(self, t: float, session: Session, k: int) -> None:
        heapq.heappush(self._events, (t, self._seq, session, k))
        self._seq += 1

    def _release_due_events(self) -> None:
        """Queue every step whose arrival or tool return is due by now, stamped `now` (the
        end of the batch step during which it came, not its event's own time), as the
        engine stamps it: `LLMEngine.add_request` reads its clock when it runs, and
        kvsaga-serve runs it on the engine thread between steps (`AsyncEngine._serve`:
        commands, then a step). So the scheduler's arrival-based waits, deadlines and aging
        start where the engine's do, and an arrival is never stamped before decisions the
        step's end already took (a demotion at a finish)."""
        while self._events and self._events[0][0] <= self.now:
            _, _, session, k = heapq.heappop(self._events)
            tokens = self._tokens.get(session.id)
            if tokens is None:
                ids = self.synth.token_ids(session).tolist()
                tokens = SimTokens(session.id, ids, root_hash(session.tenant))
                self._tokens[session.id] = tokens
            self.scheduler.add(SimRequest(session, k, tokens, self.now, self), self.now)
            self._counts["prompt"] += session.prompt_length(k)
            if self.oracle is not None:
                self.oracle.released(session.id)
            prompt = session.prompt_length(k)
            self._set_live(session.id, prompt, prompt)
            if k and self.config.resume_hints and session.id in self.manager.sessions:
                # The tool returned: a real engine learns it when the next request arrives.
                # (A session that moved here from another GPU is not known here yet.)
                self.manager.resume_hint(session.id, now=self.now)

    def _set_live(self, sid: str, num_tokens: int, prompt_tokens: int | None = None) -> None:
        """Track the blocks of live sessions' contexts: `num_tokens`, the tokens of the
        session's context that have or will have KV (0: it ended or left this GPU), for
        `kv_live_share` and `peak_live_blocks`; and, unless None, `prompt_tokens`, its
        context as of its last release (the prompt) or finish (every token, the last output
        without KV included), for `peak_prompt_live_blocks`."""
        n = -(-num_tokens // self.block_size)
        self._live_total += n - self._live_blocks.pop(sid, 0)
        self.recorder.live_blocks = self._live_total
        if num_tokens:
            self._live_blocks[sid] = n
        self._peak_live = max(self._peak_live, self._live_total)
        if prompt_tokens is not None:
            n = -(-prompt_tokens // self.block_size)
            self._prompt_total += n - self._prompt_blocks.pop(sid, 0)
            if prompt_tokens:
                self._prompt_blocks[sid] = n
            self._peak_prompt = max(self._peak_prompt, self._prompt_total)

    def _take_transfers(self) -> None:
        """Queue the manager's pending copies on the link (offloads first, as the plan)."""
        host = self.manager.host
        if host is None or not host.has_plan:
            return  # no copies (and no empty plan to build every step)
        plan = self.manager.take_transfers()
        if not plan:
            return  # pins released only
        t = max(self.now, self._link_free)
        done = self._copy_done
        for b, _ in plan.offloads:
            t += self._block_s
            done[b] = t  # b may not be overwritten before its copy-out ends
        for _, b in plan.loads:
            t += self._block_s
            done[b] = t  # b may not be read before its copy-in ends
        self._link_free = t
        self._counts["offloaded"] += len(plan.offloads)
        self._counts["loaded"] += len(plan.loads)

    def _copy_wait(self) -> float:
        """Seconds until every copy into or out of a block held by a running step ends."""
        if not self._copy_done:
            return 0.0
        now, state, wait = self.now, self.pool.state, 0.0
        for b, t in list(self._copy_done.items()):
            if t <= now:
                del self._copy_done[b]
            elif state[b] == ACTIVE:
                wait = max(wait, t - now)
        return wait

    def _advance(self, t: float) -> None:
        self.recorder.advance(t)
        self.now = t

    # -- the loop -------------------------------------------------------------------------
    def run(self, progress: bool = False) -> SimResult:
        """Serve the whole trace.

        Args:
            progress: show a progress bar of finished sessions.

        Returns:
            The run's metrics.
        """
        if self._ran:
            raise RuntimeError("a Simulator runs once; build a new one to run again")
        self._ran = True
        # No bar object at all without `progress`: a disabled tqdm still makes its
        # multiprocessing lock (an import and a semaphore, ms of a small simulation).
        bar = (tqdm(total=len(self.sessions), unit="session",
                    desc=f"sim {self.manager.policy.name}") if progress else None)
        try:
            sched = self.scheduler
            while self._events or sched.has_work:
                self._release_due_events()
                if not sched.running and not self._admissible():
                    self._idle()
                    continue
                done = self.step()
                if bar is not None:
                    bar.update(done)
        finally:
            if bar is not None:
                bar.close()
        return self._result()

    def _admissible(self) -> bool:
        """Whether a batch step now could start anything (a cheap pre-check: the
        scheduler still decides)."""
        return self.scheduler.num_waiting > 0

    def _wake_time(self) -> float:
        """When this simulator, idle, next has something to do: its next arrival or tool
        return, or its scheduler's wake-up (inf: neither)."""
        return min(self._events[0][0] if self._events else math.inf, self.scheduler.wake_time)

    def _idle(self) -> None:
        """Nothing runs and nothing can start: jump to the next arrival or tool return (or
        scheduler wake-up, `_wake_time`)."""
        t = self._wake_time()
        if t == math.inf:
            raise RuntimeError("scheduler made no progress: a request cannot fit the pool")
        self._advance(max(t, self.now))
        self.manager.tick(self.now)
        self._take_transfers()

    def step(self) -> int:
        """Schedule and run one batch step, or a decode run of several (`_decode_run`);
        returns how many sessions finished."""
        if not self.reference and self._decoding_only():
            finished = self._decode_run()
            if finished is not None:
                return finished
        out = self.scheduler.schedule(self.now, self)
        if not out.scheduled:
            if self.scheduler.running:
                raise RuntimeError("scheduler made no progress: a request cannot fit the pool")
            self._idle()  # everything waiting waits for admitted sessions to come back
            return 0
        prefill: list[tuple[SimRequest, int]] = []  # (request, chunk)
        decode: list[SimRequest] = []
        for req, n in out.scheduled:
            if req.prefilling:
                prefill.append((req, n))
            else:
                decode.append(req)
        return self._execute(prefill, decode)

    def _execute(self, prefill: list[tuple[SimRequest, int]], decode: list[SimRequest]) -> int:
        pairs = ctx = 0
        for req, chunk in prefill:
            before = req.num_computed - chunk
            pairs += attention_pairs(chunk, before)
            ctx += before
        decode_ctx = sum(r.fed_position + 1 for r in decode)
        self._run_for(self.cost._step_time(sum(c for _, c in prefill), pairs, ctx,
                                           len(decode), decode_ctx))
        self._counts["batch_steps"] += 1
        self._counts["decode"] += len(decode)
        finished = 0
        for req, _ in prefill:
            if req.num_computed == req.attempt_len:
                req.prefilling = False
                req.num_sampled += 1  # the prompt's last position yields a token
                finished += self._maybe_finish(req)
        for req in decode:
            req.num_sampled += 1
            finished += self._maybe_finish(req)
        self.manager.tick(self.now)
        return finished

    def _run_for(self, dt: float) -> None:
        """Carry out one batch step of GPU time `dt`: queue the manager's copies, wait for
        those the step's blocks need, and advance the clock."""
        self._take_transfers()
        wait = self._copy_wait()
        if wait:
            # Copies overlap compute layer by layer: only their excess over it counts.
            longer = self.cost.step_overhead_s + wait
            if longer > dt:
                self._load_wait += longer - dt
                dt = longer
        self._advance(self.now + dt)
        self._busy += dt

    # -- results --------------------------------------------------------------------------
    def _result(self) -> SimResult:
        self.recorder.advance(self.now)
        c = self._counts
        sessions = serve_order(self.sessions)  # not file order: a sum's last bits
        tct = [self._finished_at[s.id] - s.arrival_s for s in sessions]
        cfg = self.config
        # A relative tolerance of 1e-9: a session that ran exactly unloaded sums its times in
        # another order than `unloaded_tct` (1.0000000000000004x at --slo-factor 1).
        slo = sum(t <= cfg.slo_factor * unloaded_tct(s, self.cost, cfg.max_num_batched_tokens)
                  * (1 + SLO_RTOL) for s, t in zip(sessions, tct, strict=True))
        by_tenant: dict[str, list[float]] = {}
        for s, t in zip(sessions, tct, strict=True):
            by_tenant.setdefault(tenant_key(s.tenant), []).append(t)
        span = self.now
        area = self.pool.num_blocks * span if span > 0 else math.inf
        rec = self.recorder
        stats = self.manager.stats()
        return SimResult(
            policy=self.manager.policy.name,
            preset=self.cost.name,
            num_gpu_blocks=self.pool.num_blocks,
            num_sessions=len(self.sessions),
            num_steps=c["steps"],
            prompt_tokens=c["prompt"],
            queried_tokens=c["queried"],
            hit_tokens=c["hit"],
            computed_tokens=c["first"] + c["recomputed"],
            first_time_tokens=c["first"],
            recomputed_tokens=c["recomputed"],
            recomputed_after_preemption_tokens=c["recomputed_preempted"],
            abandoned_tokens=c["abandoned"],
            decode_tokens=c["decode"],
            num_preemptions=c["preemptions"],
            num_batch_steps=c["batch_steps"],
            num_evicted_blocks=stats.num_evicted_blocks,
            makespan_s=span,
            busy_s=self._busy,
            tct_mean_s=float(sum(tct) / len(tct)) if tct else math.nan,
            tct_p95_s=percentile(tct, 95),
            kv_utilization=(rec.active_s + rec.reused_cached_s) / area,
            kv_occupancy=rec.occupied_s / area,
            kv_active=rec.active_s / area,
            kv_live_share=rec.live_s / area,
            bytes_offloaded=c["offloaded"] * self.cost.block_bytes,
            bytes_reloaded=c["loaded"] * self.cost.block_bytes,
            num_host_blocks=self.manager.num_host_blocks,
            host_hit_tokens=stats.host_hit_tokens,
            prefetched_blocks=stats.prefetched_blocks,
            load_wait_s=self._load_wait,
            peak_live_blocks=self._peak_live,
            peak_prompt_live_blocks=self._peak_prompt,
            scheduler=self.scheduler.name,
            tasks_per_hour=len(tct) * 3600.0 / span if span > 0 else math.nan,
            slo_attainment=slo / len(tct) if tct else math.nan,
            tenants={t: {"tasks": len(v), "tct_mean_s": sum(v) / len(v)}
                     for t, v in sorted(by_tenant.items())} if len(by_tenant) > 1 else None,
        )


def blocks_needed(session: Session, spec: KVSpec) -> int:
    """The most KV blocks the session's context holds: every token but its last output,
    which is sampled from the last position and never fed, so never gets KV. Counting it
    refused a session that ends one token into a block at a pool it fits exactly. The one
    measure of "fits the capacity" (the simulator's check, `kvsaga sim --plot`'s sweep, a
    tenant's share, the no-eviction run's room)."""
    return spec.num_blocks_for(session.total_tokens - 1)


def largest_count(session: Session) -> tuple[str, int]:
    """The session's largest token count, as (trace field, value) (the first such field on
    a tie)."""
    best = ("shared_prefix.tokens", session.shared_prefix.tokens)
    for k, step in enumerate(session.steps):
        for name in ("input_tokens", "output_tokens"):
            value = getattr(step, name)
            if value > best[1]:
                best = (f"steps[{k}].{name}", value)
    return best


def size_breakdown(session: Session) -> str:
    """Where a session's tokens are, naming what holds most of them: the shared prefix, one
    count, or the steps together. The largest count alone blamed a 2,000-token prefix for a
    session whose 1,000 steps of 80 tokens made it 82,000 long."""
    field, value = largest_count(session)
    prefix = session.shared_prefix.tokens
    steps = session.total_tokens - prefix
    n = session.num_steps
    big = max(max(s.input_tokens, s.output_tokens) for s in session.steps)
    if prefix >= steps:
        most = "shared_prefix.tokens"
    elif 2 * big >= steps:  # one step's count holds half the steps' tokens
        most = next(f"steps[{k}].{name}" for k, s in enumerate(session.steps)
                    for name in ("input_tokens", "output_tokens") if getattr(s, name) == big)
    else:
        most = f"its {n:,} steps together"
    return (f"its largest count: {field} = {value:,}; shared_prefix.tokens = {prefix:,}, "
            f"{n:,} step{'s' if n != 1 else ''} of {steps:,} tokens in all; most of it: "
            f"{most}")


def simulate(sessions: Sequence[Session], config: SimConfig | None = None, *,
             policy: EvictionPolicy | None = None, progress: bool = False) -> SimResult:
    """Serve a trace on one simulated GPU and measure it.

    Args:
        sessions: the trace.
        config: capacity, preset, policy and scheduler limits (defaults: `SimConfig()`).
        policy: a built policy instance to use instead of `config.policy` (one per run).
        progress: show a progress bar.

    Returns:
        The run's `SimResult`.
    """
    return Simulator(sessions, config, policy=policy).run(progress=progress)
