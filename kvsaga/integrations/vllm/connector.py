"""KVSagaConnector: keeps a paused agent session's GPU blocks in vLLM through its tool call.

vLLM frees a request's blocks when it finishes; they stay in the prefix cache only until its
LRU order reuses them, and under memory pressure that is before the agent's tool returns, so
the next step prefills the whole context again. This connector runs in vLLM's scheduler and
works only through the block pool that vLLM binds to connectors (`bind_gpu_block_pool`):

- `request_finished` of a step of session S (not its last): the connector takes one
  reference on each full block of S's context (`BlockPool.touch`), so vLLM's own free leaves
  them allocated and hashed, and reports them to a kvsaga policy as S's paused blocks. The
  request's blocks are still freed by vLLM as usual (nothing is delayed).
- S's next step: its prefix lookup hits those blocks; once vLLM has allocated the step, the
  connector drops its references (the running request holds its own).
- Pressure: before vLLM would admit a request it cannot fit (`get_num_new_matched_tokens`),
  and before it would preempt a running request (`has_pending_block_frees`, which vLLM asks
  right before preempting), the connector releases retained blocks in the policy's order
  (least valuable session first; each session's tail first, whatever block the policy
  names: its blocks after that one go before it, since vLLM's prefix lookup stops at the
  first missing block) until the request fits or nothing retained can be freed; after
  each step it keeps one free block per scheduled request. A retained block a request also
  holds is never released for room: dropping the retained reference would free nothing,
  and its session would lose the retention for nothing. A released
  block stays in vLLM's prefix cache as ordinary LRU cache. Retention therefore never makes
  vLLM preempt a running request: it says yes to `has_pending_block_frees` once releasing
  freed blocks (no, when every retained block is also a running request's: vLLM then
  preempts as it would without the connector). vLLM retries that request the next step,
  not the same one, so a request short of room waits a step each time it asks; the release
  doubles while it keeps asking, so a prefill chunk of k blocks waits about log2(k) steps.
- S's last step (`last_step`), or a request that names no session: nothing is retained.
- Admission (`admission`, on by default): a session gate (`gate.SessionGate`, kvsaga's
  workflow rule) defers a session's step while the admitted sessions' predicted working sets
  fill the blocks and vLLM has no room for it now (its blocks free, beside one per running
  request and the admitted sessions' next growth, without releasing anything retained), so
  paused contexts are not thrashed by the sessions that would evict them, and a session is
  never held back from memory that would otherwise idle. A session paused without a hint
  for longer than the workflow's observed pauses allow (`SessionGate.expire`, checked before
  every admission probe) is demoted and its blocks released: a client that sends only its
  session id never says which step is the last, and its finished sessions must not hold
  memory that waiting sessions need. A pause hinted longer than those observed expires the
  same way (`expire_long_hints`): held for its whole hinted pause, it kept waiting sessions
  out.
  Where memory fits one waiting session but not two, the gate picks by predicted remaining
  work with aging, not vLLM's queue order (`admission_order`, `gate_order`).
  Growth the gate reserves for admitted sessions gives way to a session that fits beside
  their contexts as they stand once the waiting sessions together waited twice its
  context's recompute (`reserve_wait_factor`, priced by `StepCost`'s seconds per token).
  With `best_effort_steps` > 0 (off by default since 2026-12-01: see below), a deferred
  step may still run unretained in vLLM's free blocks when its whole context's
  prefill is cheap on this machine: at most `best_effort_steps` steps' fixed cost, by
  `step_cost.StepCost`'s online fit of vLLM's step times (where a step's fixed cost
  dominates, holding sessions back would shrink the batch for nothing; where tokens
  dominate, recompute delays everyone). The whole context, not only its uncached part: a
  step run unretained leaves its blocks to vLLM's LRU under the very pressure that deferred
  it, so its next step recomputes all of it. A step told to ride along and probed again
  before vLLM allocated it waits for the gate from then on: vLLM stops admitting at the
  first request it cannot allocate, so it would hold up every request behind it. A step
  that rode along, ran and was preempted is probed again as any deferred step (it may
  ride along again). Off by default: on bench/vllm_scheduler_replay.py's GPU-like clocks
  (25 ms per step + 0.65 ms per token) a step that rode along left its context to vLLM's
  LRU and recomputed it at its next step, and the fit (`--fit`, fit seeds 0-4, the
  calibrated 10-session workload, ties broken by the compute-bound 6-session one) took 0
  over 2, 5, 7 and the earlier 10: worst seed 1.25x -> 1.28x and 1.06x -> 1.17x
  (bench/RESULTS.md, "vLLM as the peer"). Where a step's fixed cost dominates (a CPU), 5-10
  may still pay; that was not measured again.

- Abandoned sessions (`session_idle_s`, default 1800 s, kvsaga's engine's
  `DEFAULT_SESSION_IDLE_S`): a session paused longer than that, with no step of it in
  flight, is ended as a last step ends it (`session_ends` has the rule and why).

Only the scheduler-side instance does anything; the worker side moves no KV (all methods no-ops).
With vLLM's prefix caching off nothing retained could be hit again: the scheduler-side
instance stays unbound too (one warning), retention and the gate off.
Configuration (`kv_connector_extra_config`): `policy` (a kvsaga policy name, default
`kvsaga.policy.DEFAULT_POLICY`; not an offline one, `belady` or `oracle-ttl`),
`policy_args` (keyword arguments for it: numbers and flags, never the Python objects
`cost`, `graph`, `oracle`), `reserve_blocks` (free blocks to keep after each
step beyond one per scheduled request, default 0), `admission` (the session gate, default
true), `gate_args` (`SessionGate` keyword arguments), `best_effort_steps` (default 0; 0: a
deferred step always waits), `step_cost_args` (`StepCost` keyword arguments: the online
fit of vLLM's step times that riding along and the gate's reserve read, and the stats line
reports, with admission off too),
`keep_demoted` (a session the gate demotes, by its shrink or past its demotion deadline to
let a waiting one in: default false, its blocks become plain LRU cache at once; true, they
are kept until memory is needed and released then before the policy's choice, +0.01x on
the worst fit seed, docs/integrations.md), `scheduler_args` (read by the optional
`KVSagaScheduler` only),
`session_idle_s` (default `DEFAULT_SESSION_IDLE_S`, 1800; a number > 0, inf or null:
never).
Any other key is refused (ValueError naming it: `connector_config.py`), so a typo cannot
leave a default in force unnoticed; so is `reserve_blocks` other than an int >= 0 (below
vLLM's usable blocks, checked when they are bound), a `*_args` value other than a JSON
object, an offline policy, and, with `admission` false, `gate_args`, `best_effort_steps` and
`keep_demoted` (they act only through the gate).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.logger import init_logger

from kvsaga.integrations.vllm.connector_config import (
    check_connector_extra,
    make_connector_policy,
)
from kvsaga.integrations.vllm.demoted import KeptDemoted
from kvsaga.integrations.vllm.gate import SessionGate
from kvsaga.integrations.vllm.hints import StepInfo, request_step_info, session_for
from kvsaga.integrations.vllm.ledger import BlockLedger
from kvsaga.integrations.vllm.retention import Retention
from kvsaga.integrations.vllm.retention_stats import RetentionStats
from kvsaga.integrations.vllm.room_asks import RoomAsks
from kvsaga.integrations.vllm.session_ends import SessionEnds
from kvsaga.integrations.vllm.step_cost import BEST_EFFORT_STEPS, StepCost
from kvsaga.session import DEFAULT_SESSION_IDLE_S, IdleSweep, Session, check_session_idle

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.attention.backend import AttentionMetadata
    from vllm.v1.core.block_pool import BlockPool
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

# Under "vllm": vLLM configures that logger (and its handler) only, so the lines reach its log.
logger = init_logger(f"vllm.{__name__}")
STATS_LOG_EVERY_S = 5.0  # at most one stats line per this many seconds, when they changed


class KVSagaConnectorMetadata(KVConnectorMetadata):
    """Nothing travels to the workers: retention is a scheduler-side decision."""


class KVSagaConnector(Retention, SessionEnds, KVConnectorBase_V1):
    """Agent-session KV retention for vLLM's scheduler (see the module docstring)."""

    def __init__(
        self,
        vllm_config: VllmConfig,
        role: KVConnectorRole,
        kv_cache_config: KVCacheConfig | None = None,
    ) -> None:
        super().__init__(vllm_config, role, kv_cache_config)
        extra = check_connector_extra(self._kv_transfer_config.kv_connector_extra_config)
        self.policy = make_connector_policy(extra)  # (a bad policy_args value: ValueError)
        self.reserve_blocks: int = extra.get("reserve_blocks", 0)  # (checked: an int >= 0)
        self.admission = extra.get("admission", True)  # (checked: each setting's type)
        self.gate_args = dict(extra.get("gate_args", {}))
        # KVSagaScheduler's settings, read from here when the connector sits in vLLM's
        # MultiConnector (whose own extra config holds only the connectors' list)
        self.scheduler_args = dict(extra.get("scheduler_args", {}))
        self.keep_demoted = extra.get("keep_demoted", False)
        self._demoted = KeptDemoted()  # kept demoted sessions (`keep_demoted`)
        self.best_effort_steps = extra.get("best_effort_steps", BEST_EFFORT_STEPS)
        self.cost = StepCost(**dict(extra.get("step_cost_args", {})))
        self._idle_sweep = IdleSweep(check_session_idle(
            extra.get("session_idle_s", DEFAULT_SESSION_IDLE_S),
            "kvsaga connector: session_idle_s"))
        self._step_mark: tuple[float, int] | None = None  # (when, tokens) of the last step
        self._riding: set[str] = set()  # request ids told to ride along, not yet allocated
        self._unretained: set[str] = set()  # request ids run past the gate: nothing kept
        self._no_ride: set[str] = set()  # request ids whose ride vLLM did not allocate
        self.gate: SessionGate | None = None
        self.block_size = vllm_config.cache_config.block_size
        self._asks = RoomAsks.for_budget(  # what vLLM's asks for room release
            vllm_config.scheduler_config.max_num_batched_tokens, self.block_size)
        self.pool: BlockPool | None = None
        self.ledger: BlockLedger | None = None
        self.holds: dict[str, list[int]] = {}  # session -> retained block ids, head first
        self._holders: dict[int, list[str]] = {}  # block id -> sessions retaining it
        self._shared: set[int] = set()  # retained blocks a request references too (`_sync`)
        self._sessions: dict[str, Session] = {}
        self._steps: dict[str, StepInfo] = {}  # request id -> its session step
        self._bad_hints: set[str] = set()  # request ids whose malformed hint was logged
        # Request ids of a session that ended (its last step finished) while they were in
        # flight: requests of no session from then on (`_orphan_steps`).
        self._orphans: set[str] = set()
        # session -> when (wall clock, as vLLM's arrival times) its last step finished, for
        # the `session_ends.ENDED_TRACKED` latest ended sessions, oldest first
        self._ended_at: dict[str, float] = {}
        self._probes: dict[str, int] = {}  # request id -> admission probes since its last alloc
        # session -> its requests allocated and not finished: one session step (`_land`)
        self._flights: dict[str, set[str]] = {}
        # sessions whose step under way has a request that ran and finished (not withdrawn)
        self._step_ran: set[str] = set()
        # session -> when its pause began (its last step's finish or arrival), oldest first
        self._paused: dict[str, float] = {}
        self.stats = RetentionStats()
        # Seconds the policy judges pauses by; a replay on a simulated clock replaces it.
        self.clock: Callable[[], float] = time.monotonic
        self._logged = (0.0, "")  # when the last stats line went out, and what it said

    @property
    def requires_kv_delivery(self) -> bool:
        return False  # nothing is handed off; a dropped retention is a cache miss

    # -- set-up -------------------------------------------------------------------------------
    def bind_gpu_block_pool(self, gpu_block_pool: BlockPool) -> None:
        usable = gpu_block_pool.num_gpu_blocks - 1  # (one is vLLM's null block)
        if self.reserve_blocks >= usable:  # kept free, it would leave nothing to retain
            raise ValueError(f"kvsaga connector: reserve_blocks must be below vLLM's "
                             f"{usable} usable KV blocks, got {self.reserve_blocks}")
        if not getattr(gpu_block_pool, "enable_caching", True):
            # No block is hashed, so nothing retained could be hit: retention keeps nothing,
            # and the gate would hold sessions back for paused contexts that are not in
            # memory (review s51, vconn HIGH-1). Left unbound, every hook does nothing, as
            # vLLM's own CPU offload connector disables itself then.
            logger.warning("kvsaga connector: vLLM's prefix caching is off (it was turned "
                           "off, or the model does not allow it), so no paused session's "
                           "blocks can be hit again: retention and the session gate are "
                           "disabled")
            return
        self.pool = gpu_block_pool
        # A prefix-cache reset drops every hash, so nothing retained could be hit after it:
        # give the blocks back first. vLLM resets the pool before it asks the connector
        # (`reset_cache`), and with `reset_running_requests` (a weight update's
        # pause_generation, sleep) it raises when the pool still has blocks in use; this
        # instance's reset gives them back before it runs. Only when the reset can succeed
        # (no block but retained ones in use): vLLM refuses it while a request runs and
        # keeps every hash, and the retained blocks given back then were lost for nothing.
        reset = gpu_block_pool.reset_prefix_cache

        def reset_prefix_cache() -> bool:
            self.reset_cache()
            return reset()

        gpu_block_pool.reset_prefix_cache = reset_prefix_cache  # type: ignore[method-assign]
        self._watch_refs(gpu_block_pool)
        self.ledger = BlockLedger(
            self.policy, gpu_block_pool.num_gpu_blocks, self.block_size, self._usage
        )
        if self.admission:
            self.gate = SessionGate(usable - self.reserve_blocks, self.block_size,
                                    **self.gate_args)

    def _step(self, request: Request) -> StepInfo | None:
        if self.pool is None:  # unbound (prefix caching off): no hint is read, nor logged
            return None
        info = self._steps.get(request.request_id)
        if (info is None and request.request_id not in self._bad_hints
                and request.request_id not in self._orphans):
            try:
                info = request_step_info(request)
            except ValueError as e:  # a malformed hint must not fail the request: no retention
                logger.warning("kvsaga: ignoring request %s's hint: %s", request.request_id, e)
                self._bad_hints.add(request.request_id)  # said once per request
                return None
            if info is not None:
                ended = self._ended_at.get(info.session_id)
                if ended is not None and getattr(request, "arrival_time", math.inf) <= ended:
                    self._orphans.add(request.request_id)  # sent before its session ended
                    return None
                self._steps[request.request_id] = info
        return info

    # -- scheduler hooks ------------------------------------------------------------------------
    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        """No external KV; but make room for this request among the retained blocks."""
        if self.pool is None:
            return 0, False
        info = self._step(request)  # in flight from here: never ended as abandoned
        now = self.clock()
        self._end_idle_sessions(now)
        new_blocks = math.ceil(max(request.num_tokens - num_computed_tokens, 1) / self.block_size)
        watermark = getattr(self._kv_cache_manager, "watermark_blocks", 0) or 0
        if self.gate is not None:  # sessions that ended without saying so, by their pause
            returning = info.session_id if info is not None else None
            for sid in self.gate.expire(now, returning):
                self._release_session(sid)  # plain LRU cache in vLLM from now on
        # What vLLM's allocation takes from the free count: the new blocks, one more, the
        # watermark, and the prefix hits that sit in the free queue (plain cache; counted
        # after the releases above, which may have put some there).
        alloc = new_blocks + 1 + watermark + self._free_hits(request, num_computed_tokens)
        fitted = self.cost.fit()  # (fixed, per token): a token's cost prices a recompute
        sid = info.session_id if info is not None else None
        admitted = True
        if self.gate is not None and info is not None:
            admitted = self.gate.admit(
                info.session_id, info.workflow, request.num_tokens, num_computed_tokens, now,
                self._spare(alloc, sid), None if fitted is None else fitted[1],
                info.hint.last_step)
            for demoted in self.gate.last_demoted:  # overdue, demoted to let it in
                self._drop_demoted(demoted)
        if not admitted:
            # A step told to ride along and probed again was not allocated: vLLM's admission
            # loop stops at a request it cannot allocate, so it would hold up every request
            # behind it. It waits for the gate instead. (One that was allocated, ran and was
            # preempted left `_riding` at its allocation: it may ride again.)
            if request.request_id in self._riding:
                self._riding.discard(request.request_id)
                self._no_ride.add(request.request_id)
                self.stats.ride_failed += 1
            elif (request.request_id not in self._no_ride
                  and self._best_effort(request.num_tokens, alloc, sid)):
                self._riding.add(request.request_id)
                self.stats.best_effort += 1
                self.gate.rode_along(info.session_id, now)
                return 0, False
            return None, False  # not yet: vLLM defers it and goes on with the next request
        self._forget_ride(request.request_id)
        # A kept demoted session admitted again: its blocks are this step's hits, not room.
        self._demoted.discard(sid)
        if info is not None and info.session_id in self.holds:
            # its blocks are needed now
            self.policy.resume_hinted(session_for(self._sessions, info), now)
        # vLLM also takes its free-block watermark and the prefix hits that sit in the free
        # queue; a request probed again without being admitted asks for twice as much each
        # time, so retention can never keep a request waiting for good.
        tries = self._probes[request.request_id] = self._probes.get(request.request_id, 0) + 1
        need = alloc * 2 ** (tries - 1)
        self._release_until(need + self.reserve_blocks, now, "admit")
        return 0, False

    def _free_hits(self, request: Request, num_computed_tokens: int) -> int:
        """The request's prefix-hit blocks that sit in vLLM's free queue (reference count 0:
        plain cache), which its allocation takes out of the free count too."""
        hashes = getattr(request, "block_hashes", None) or ()
        n = 0
        for h in hashes[: num_computed_tokens // self.block_size]:
            cached = self.pool.get_cached_block(h, [0])
            n += bool(cached) and cached[0].ref_cnt == 0
        return n

    def _spare(self, blocks: int, sid: str | None = None) -> int:
        """vLLM's free blocks (free or plain evictable cache: a retained block is never free;
        kept demoted sessions' blocks other than session `sid`'s, whose step this is, count)
        left after allocating `blocks` (hits in the free queue included), one per running
        request and the reserve; negative when they do not fit without releasing retained
        blocks."""
        return (self.pool.get_num_free_blocks() + self._demoted_only(sid) - blocks
                - self.gate.num_in_flight - self.reserve_blocks)

    def _best_effort(self, tokens: int, blocks: int, sid: str | None = None) -> bool:
        """Whether a step the gate holds back may run anyway, unretained: its context's
        `tokens` (what its next step recomputes once vLLM's LRU has evicted them) cost at
        most `best_effort_steps` steps' fixed cost to compute (`StepCost`),
        and its `blocks` fit in vLLM's free blocks beside one per running request and the
        reserve, without releasing anything retained (session `sid`'s own kept demoted
        blocks are its hits, not room: `_spare`)."""
        return (self.best_effort_steps > 0 and self.cost.cheap(tokens, self.best_effort_steps)
                and self._spare(blocks, sid) >= 0)

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        """The step is allocated: its hits hold the session's blocks now, so ours go."""
        self._probes.pop(request.request_id, None)
        if request.request_id in self._riding:  # it rode along: nothing kept at its finish
            self._riding.discard(request.request_id)
            self._unretained.add(request.request_id)
        info = self._step(request)
        if self.gate is not None:
            self.gate.started(request.request_id, info.session_id if info is not None else None)
        if info is None or self.pool is None:
            return
        now = self.clock()
        session = session_for(self._sessions, info)
        flights = self._flights.setdefault(info.session_id, set())
        first = not flights  # else part of a step under way (or this one, again after preemption)
        flights.add(request.request_id)
        held = info.session_id in self.holds
        # The retained blocks among the step's own (GraphPolicy counts their reuse).
        session.block_ids = [b for b in blocks.get_block_ids()[0] if b in self._holders]
        self.stats.resumed_hits += bool(held and session.block_ids)
        if first:
            self.policy.step_started(session, now)
        if held:
            self._release_session(info.session_id)

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        """Retain a paused session's full blocks; end a session on its last step; then let
        the admission gate demote sessions the admitted working sets no longer fit."""
        info = self._step(request)
        self._steps.pop(request.request_id, None)
        self._bad_hints.discard(request.request_id)
        self._orphans.discard(request.request_id)
        self._probes.pop(request.request_id, None)
        now = self.clock()
        rid = request.request_id  # run unretained (or told to ride along and not allocated)
        unretained = rid in self._unretained or rid in self._riding
        self._forget_ride(rid)
        withdrawn = False  # allocated, preempted, then aborted: no step (the gate is told)
        if info is not None and self.pool is not None:
            if info.hint.last_step:
                self._end_session(info.session_id, session_for(self._sessions, info), now)
                self._orphan_steps(info.session_id)
            else:
                # Allocated, yet no blocks at its finish: vLLM preempted it (freeing them)
                # and it was aborted while requeued. Each such request of a step, not only
                # its last, ran none of it: the gate learns nothing of its partial output
                # (flagged on the last alone, an earlier one's was learned as the step's
                # context, and the step counted, when every request of it was withdrawn).
                allocated = rid in self._flights.get(info.session_id, ())
                withdrawn = not block_ids and allocated
                # An earlier request of the step ran and finished: the step ran (the gate
                # ends it at what they reached), held or not.
                others_ran = info.session_id in self._step_ran
                ended = self._land(rid, info.session_id)
                if allocated and not ended and not withdrawn:
                    self._step_ran.add(info.session_id)
                # A step that never got blocks (aborted while it waited: the gate held it, or
                # vLLM had no room) leaves the session's kept context as it was.
                kept = not unretained and bool(block_ids) and self._retain(info, block_ids)
                if info.session_id in self._sessions:  # a step of it ran (its allocation
                    self.session_active(info.session_id, now)  # made the record): paused
                else:  # none ran (its first aborted while it waited): it has no pause, and
                    # filed as paused (here, or at its arrival by KVSagaScheduler) the idle
                    # sweep ended it as `abandoned`
                    self._paused.pop(info.session_id, None)
                held = info.session_id in self.holds  # kept by the step's requests
                if ended and (held or others_ran or not withdrawn):
                    # The step ran (the gate counts it: `finished` with `withdrawn` false):
                    # its session pauses, with what its requests kept (nothing for a context
                    # under one block, or a step run unretained: still a pause, which the
                    # policy learns and its hints act on). Also when it was aborted while
                    # running with nothing kept (review s54 vleft3: the policy was told
                    # `resume_withdrawn` and put the pause back to the step before, while
                    # the gate counted the step; held, it was `step_finished` already), and
                    # when this last request was withdrawn but an earlier one ran, kept or
                    # not (review s52 diffvleft 3).
                    session = session_for(self._sessions, info)
                    if not kept:  # (else `_retain` set them) its hits went with the request
                        session.block_ids = list(self.holds.get(info.session_id, ()))
                    self.policy.step_finished(session, now, info.hint)
                    self.stats.retained_steps += held
                    # (held, this last request withdrawn: an earlier one of the step ran
                    # and kept its blocks; the gate ends the step at what those reached)
                elif ended or (held and info.session_id not in self._flights):
                    # Allocated, then preempted (vLLM freed its blocks and told us nothing)
                    # and aborted while requeued: the policy saw its step running, the gate
                    # counted it in flight (`withdrawn`: it learns nothing of its partial
                    # output). Or aborted unallocated, after a probe that told the policy
                    # its blocks are needed now. Either way they are not: the session is
                    # paused as after its last completed step.
                    session = session_for(self._sessions, info)
                    self.policy.resume_withdrawn(session, now)
        if self.gate is not None:
            hint = info.hint if info is not None else None
            for demoted in self.gate.finished(
                request.request_id, info.session_id if info else None, request.num_tokens,
                now, hint.expected_s if hint else None, bool(hint and hint.last_step),
                withdrawn,
            ):
                self._drop_demoted(demoted)
            if not self.gate.num_in_flight:
                self._step_mark = None  # the time to the next step may be idle
        if not self._steps:  # no session step left in flight: the counters may rest here
            self._log_stats(now)
        return False, None

    def _drop_demoted(self, sid: str) -> None:
        """The gate demoted session `sid` (it no longer counts among the admitted working
        sets): its retained blocks become plain LRU cache in vLLM, or, with `keep_demoted`,
        stay until memory is needed and are released first then."""
        if self.keep_demoted and sid in self.holds:
            self._demoted.keep(sid)
        else:
            self._release_session(sid)

    def _land(self, request_id: str, sid: str) -> bool:
        """The request of session `sid` finished: whether it ended the session's step, i.e.
        it was allocated and no other request of the session allocated is unfinished. A
        session's requests in flight together (vLLM's n > 1 children of one request, or
        concurrent steps) are one step to the policy, as to the gate (`SessionGate.finished`):
        it starts when the first is allocated and finishes with the last. Per request, the
        policy saw n steps and paused the session while its other children still ran."""
        flights = self._flights.get(sid)
        if flights is None or request_id not in flights:
            return False
        flights.discard(request_id)
        if flights:
            return False
        del self._flights[sid]
        self._step_ran.discard(sid)
        return True

    def _forget_ride(self, request_id: str) -> None:
        """The request is admitted by the gate or finished: no ride-along state stays."""
        self._riding.discard(request_id)
        self._no_ride.discard(request_id)
        self._unretained.discard(request_id)

    def has_pending_block_frees(self) -> bool:
        """Asked by vLLM right before it preempts a running request: release retained blocks
        instead, as many as the run of asks wants (`room_asks.RoomAsks`), and say whether
        that freed any. Only blocks whose release frees them go (`_release_until`): a
        retained block a running request also holds stays retained, since it would stay in
        use; when nothing could be freed the answer is False (on True vLLM skips the rest of
        its running requests this step, rather than preempting, for nothing)."""
        if self.pool is None or not self.holds:
            return False
        free = self.pool.get_num_free_blocks()
        self._release_until(free + self._asks.ask() + self.reserve_blocks, self.clock(),
                            "preempt")
        return self.pool.get_num_free_blocks() > free

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        """After each step, keep one free block per scheduled request (its next token may
        open a block) so decoding does not run into retained memory."""
        now = self.clock()
        tokens = sum(scheduler_output.num_scheduled_tokens.values())
        if self._step_mark is not None:
            self.cost.observe(self._step_mark[1], now - self._step_mark[0])
        if self.gate is not None:
            self.gate.new_step()
        self._step_mark = (now, tokens) if tokens else None
        if self.pool is not None:
            self._end_idle_sessions(now)
        demand = self._asks.step_done()  # kept free for a request that asked this step
        if self.pool is not None and self.holds:
            n = len(scheduler_output.num_scheduled_tokens)
            self._release_until(n + self.reserve_blocks + demand, now, "headroom")
        if now - self._logged[0] >= STATS_LOG_EVERY_S:
            self._log_stats(now)
        return KVSagaConnectorMetadata()

    def shutdown(self) -> None:
        if self.pool is not None:  # the scheduler's instance: the workers' count nothing
            self._log_stats(self.clock())

    def _log_stats(self, now: float) -> None:
        """Log the counters when they changed since the last line (called every few seconds
        of steps, and whenever no session step is left in flight, so a run's final counts
        reach the log even when the server is stopped without a shutdown)."""
        gate = self.gate
        if gate is not None:
            st = self.stats
            st.deferrals, st.demotions = gate.num_deferrals, gate.num_demotions
            st.expired, st.yielded = gate.num_expired, gate.order.num_yielded
            st.deferred_with_room = gate.num_deferred_with_room
            st.gate_wait_s = round(gate.wait_s, 1)
            for how in ("room", "fit", "idle", "max_wait", "waited"):
                setattr(st, f"admitted_{how}", gate.admitted_by.get(how, 0))
        fitted = self.cost.fit()
        if fitted is not None:
            self.stats.step_fixed_us, self.stats.step_token_us = (round(x * 1e6) for x in fitted)
        line = self.stats.line()
        if line != self._logged[1]:
            logger.info("%s", line)
        self._logged = (now, line)

    def reset_cache(self) -> bool:
        """Give back every retained block (vLLM's prefix-cache reset needs them all free;
        the pool's own reset calls this first: `bind_gpu_block_pool`), if the reset can
        succeed: no block but retained ones is in use. Else nothing is given back (vLLM
        refuses the reset and keeps every hash) and the answer is False."""
        if self.holds and not self._only_retained_in_use():
            return False
        for sid in list(self.holds):
            self._release_session(sid)
        return True

    # -- worker side: nothing to move ----------------------------------------------------------
    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        return None

    def wait_for_layer_load(self, layer_name: str) -> None:
        return None

    def save_kv_layer(
        self,
        layer_name: str,
        kv_layer: Any,
        attn_metadata: AttentionMetadata,
        **kwargs: Any,
    ) -> None:
        return None

    def wait_for_save(self) -> None:
        return None
