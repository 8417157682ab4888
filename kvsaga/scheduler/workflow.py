"""`workflow` (the default scheduler): workflow-atomic admission with Agent Fair Share and
bounded waiting; the rule is stated in the package docstring (`kvsaga.scheduler`)."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

from kvsaga.manager import KVCacheManager
from kvsaga.policy.bounded import TRACKED_TENANTS, touch
from kvsaga.scheduler.admission_candidates import AdmissionCandidates
from kvsaga.scheduler.admission_order import AdmissionOrder
from kvsaga.scheduler.base import (
    MAX_COUNT,
    MAX_HORIZON_STEPS,
    Executor,
    Scheduler,
    SchedulerOutput,
    check_bool,
    check_choice,
    check_float,
    check_int,
)
from kvsaga.scheduler.block_room import HOST_ROOM, BlockRoom, tiers_room
from kvsaga.scheduler.decode_stall import DECODE_PREFILL_TOKENS, DecodeStall
from kvsaga.scheduler.demotion import UNDO_DEMOTIONS, Demotions
from kvsaga.scheduler.fair_share import ComputeShares, FairShare, check_weights
from kvsaga.scheduler.leave_forecast import LeaveForecast
from kvsaga.scheduler.room_swap import RoomSwap
from kvsaga.scheduler.wait_causes import WaitCauses
from kvsaga.scheduler.waiting_queues import WaitingQueues
from kvsaga.scheduler.working_set import GrowthTable, demote_deadline
from kvsaga.scheduler.working_set_gate import READMIT_CHARGES, WorkingSetGate, calibration

SHRINK_ORDERS = ("latest_back", "smallest", "least_work")  # `(shrink_order=...)`
SHRINK_ON = ("working_sets", "contexts")  # `WorkflowScheduler(shrink_on=...)`
# `WorkflowScheduler(shrink_exempt_until=...)`
SHRINK_EXEMPT_UNTIL = ("never", "contexts")


class _Admitted:
    """An admitted session: what its working set is predicted from."""

    __slots__ = ("tenant", "workflow", "context", "shared", "steps", "active",
                 "last_context", "demote_at", "blocks", "tool", "on_prompt", "var",
                 "extra", "ctx")

    def __init__(self, tenant: str | None, workflow: str, context: int) -> None:
        self.tenant = tenant
        self.workflow = workflow
        self.context = context  # tokens of its context, as of its last admission or finish
        self.shared = 0  # leading tokens of it in blocks other sessions share (a prefix)
        self.steps = 0  # steps finished
        self.active = True  # a step is queued or running (not paused on a tool)
        self.last_context: int | None = None  # context at its last finish, for growth
        self.demote_at = math.inf  # when a pause this long makes it demotable
        self.blocks = 0  # predicted working set, blocks
        self.tool: str | None = None  # the tool of its last pause (predicts its next growth)
        self.on_prompt = True  # `context` is its admitted step's prompt, not a finish's
        self.var = 0.0  # variance of its growth still to come (`growth_reserve`), tokens^2
        self.extra = 0  # paused: its growth kept free at admission (`paused_reserve`)
        self.ctx = 0  # blocks of its own context, as `_set_blocks` last counted them


class WorkflowScheduler(WaitingQueues, AdmissionCandidates, DecodeStall, WaitCauses, BlockRoom,
                        RoomSwap, WorkingSetGate, Demotions, ComputeShares, LeaveForecast,
                        AdmissionOrder, Scheduler):
    """Workflow-atomic admission with Agent Fair Share (see the module docstring).

    Args:
        manager, max_num_seqs, max_num_batched_tokens: as `Scheduler`.
        overcommit: admit while predicted working sets <= overcommit x the tiers' room
            (the GPU's blocks and what `host_room` adds).
        horizon_steps: steps of expected growth counted in an admitted session's working
            set (fewer when the Agent Execution Graph expects the session to end sooner;
            at most `MAX_HORIZON_STEPS`, as `kvsaga.scheduler.base` says).
        prior_growth_tokens: context growth per step assumed for a workflow until one is
            observed (too small a guess is corrected by demotion, below; at most
            `MAX_COUNT`).
        growth_alpha: weight of each new observed growth once 1 / growth_alpha were seen.
        demote_factor, demote_min_s: a paused admitted session whose pause exceeds
            demote_factor x its expected pause + demote_min_s is demoted when a waiting
            session does not fit (its blocks stay cached; its next step must be admitted
            again: ahead of its tenant's new sessions under `admission_order` "fifo" or
            `readmit_order` "first", sorted among them by default, as `readmit_order`
            says). Independently, whenever the admitted working sets outgrow the tiers,
            paused sessions are demoted until they fit, those expected back last first,
            except those the opt-in `shrink_exempt_s` leaves out (then they may stay above
            the tiers until a step finishes, idle admission or a pause deadline).
        default_pause_s: expected pause when neither the step's hint nor an Agent Execution
            Graph (a `graph` policy's) predicts one.
        reserve_decode_tokens: decode tokens of headroom reserved per running step: a step
            is admitted only if its whole prompt plus this many tokens fits in the free and
            evictable blocks left after every running step's own reserve (0: first chunk).
        admission_window: how many queued resumed steps, from the head, are looked at for a
            warm one (context still resident), which goes first.
        max_bypass: how many warm steps may be admitted ahead of the resumed queue's head.
        backfill_window: when the next session to admit (its tenant's oldest) does not
            fit, how many sessions queued behind it (same tenant) are tried instead, so a
            small session is not held behind a large one (0: never; at most `MAX_COUNT`).
            Then the next sessions of other tenants below their shares of the tiers are
            tried (Agent Fair Share).
        max_backfill: how many sessions may be backfilled ahead of one waiting session.
        idle_admit_s: once the batch has been empty this long with every admitted session
            away on a tool call, the next session is admitted even if the working sets do
            not fit (the GPU would idle; `inf`: never). Demotion then makes room (the
            shrink, of the sessions `shrink_exempt_s` does not leave out).
        shrink_aging: a session demoted this many times (either way) is demoted by the
            shrink only after every paused session demoted fewer times, so the same
            long-tool sessions are not demoted again and again (0: no aging).
        shrink_exempt_s: a session whose waits to be admitted again after its demotions
            (in this task, each from its step's queueing to its admission) sum to this many
            seconds is not demoted by the shrink any more, nor in the shrink's simulations
            (the room swap's victims, the leave forecast, the gate's churn); Agent Fair
            Share's reclaim and the tail guard's still demote it, after every other paused
            session, and so does its pause deadline. `inf` (the default: off): always
            may be. Not the default: 20 s won the single-tenant fit (session 56) but
            failed the calibrated AFS veto (mean d log ratio +0.116 against 0.0231;
            docs/scheduling_fit_history.md, "Session 56, third lane");
            `Demotions._demotion_order` says why it exists.
        shrink_exempt_until: "never" (the default: session 56's exemption, above) or
            "contexts": once the admitted contexts alone (no predicted growth) outgrow the
            tiers, the shrink demotes the exempt paused sessions too, after the others,
            until the contexts fit (the policy would evict admitted sessions' blocks
            otherwise). Opt-in: with `shrink_exempt_s` 20 it cut the noisy mix's heavy
            tenant's recomputation alone on half the GPU (seed 103 25%: 782k -> 250k
            tokens) but still failed the calibrated AFS veto (mean d log ratio +0.0240
            against 0.0231; docs/scheduling_fit_history.md, "Session 57";
            `Demotions._shrink_exempt`).
        shrink_order: which paused sessions the shrink demotes first (after aging):
            "latest_back" (the default: those expected back last), "smallest" (the
            smallest working sets, losing the fewest blocks to recompute; it raised bfcl
            1x 25% on the fit seeds but worsened non-thrash figures: `--fit` rejected it)
            or "least_work" (the least predicted remaining work, the admission order's
            key: the one admitted again first under the predicted and gittins orders;
            `Demotions._demotion_order` says why).
        shrink_on: what the shrink keeps within the tiers: "working_sets" (the charged
            working sets, predicted growth included) or "contexts" (the admitted contexts
            alone; `Demotions._shrink` says why).
        max_overtake: under `admission_order` "fifo" or `readmit_order` "first", a
            demoted session's next step (or any resumed step of a session not admitted
            here, e.g. one moved in from another GPU) queues ahead of its tenant's new
            sessions and of the resumed steps already waiting (the most recently demoted
            is the likeliest still cached), but ahead of each waiting one at most this
            many times; then it queues behind it. This bounds the wait there: unbounded,
            one long session waited from 21 s to the trace's end (seed 106, bfcl 1x 25%).
            The other orders sort those steps among the new sessions (`readmit_order`),
            which this does not bound; the reserve (`max_wait_s`) does. It also bounds
            `undo_demotion` (below).
        paused_growth: charge a paused session its expected growth too (False, the default:
            its context only, its growth again once its next step is queued: room kept for
            a paused context, which does not grow, holds nothing meanwhile).
        tool_growth: predict a session's next growth from the tool it paused on (learned
            per workflow and tool), not from the workflow's mean alone (True, the default).
            Both defaults are `bench/scheduling.py --fit`'s pick on seeds 101-106, with p95,
            tasks/h and the non-thrash figures constrained on those seeds
            (docs/scheduler.md has the figures); so are those of `shrink_order` and
            `max_overtake` (a later round of the same fit).
        queue_shrink: run the shrink also when a queued step's growth is charged again
            (False: only when a step finishes, so a resumed step's prefill could evict the
            paused admitted sessions' contexts until then). Opt-in: `--fit` round 6 found
            swe 1x 25% 1.75x -> 1.83x but bfcl 1x 25% 1.51x -> 1.48x.
        admission_order: the order of each tenant's waiting sessions: "predicted" (the
            default, `--fit` round 4: least predicted remaining work first, with aging;
            `kvsaga.scheduler.admission_order`), "gittins" (`session_length`; its prior's
            weight: `length_prior`) or "fifo" (queue order, with `max_overtake`).
        max_wait_s: the reserve: once a waiting session's deadline (at most its queueing
            time + max_wait_s) has passed, no other is admitted before it (`admission_order`
            states the bound). Finite; 120: `--fit` round 8 (seeds 101-106, graph policy).
        tail_wait_factor: the tail guard (`kvsaga.scheduler.tail_guard`): a session's
            admission waits, summed, are due within this many times its workflow's learned
            time less such waits (0, the default: off). Opt-in: round 9's pick, 3, raised
            p95 up to 3x at web 4x load (`bench/scheduling_fit.py --tail-guard-check`).
        readmit_charge: what the gate charges a demoted session admitted again: one of
            `working_set_gate.READMIT_CHARGES`, each described, with the `--fit` round that
            chose or rejected it, in `kvsaga.scheduler.readmit_charges`. The default,
            "room_returns_queue_demoted" (round 41), charges the uncached part of its context
            and takes room from paused sessions only where the forecasts say that pays.
        readmit_order: where a demoted session's next step waits under "predicted" /
            "gittins": "sorted" (among the new sessions, aged from its queueing),
            "session_age" (aged from its session's first queueing), "first" (ahead of the
            new sessions; `AdmissionOrder._sort_pending` says why) or "waited" (aged from
            its queueing less its session's earlier admission waits; opt-in, round 42).
        readmit_cost: the context a demoted session's waiting step is ordered by under
            "predicted" / "gittins": "context" (its whole prompt) or "uncached" (the part
            not cached on the GPU, what admitting it adds; `_readmit_context` says why).
            Opt-in: `--fit` round 17 chose it with readmit_order "session_age" and the
            mixes' veto rejected both (RESULTS "Scheduling").
        aging_s: "predicted"'s aging: a session queued aging_s x ln(MAX_COST) seconds
            before another goes ahead of it (a factor e of predicted work is worth aging_s
            seconds of waiting; finite). 80 is `--fit`'s pick (rounds 3 and 4, seeds 101-106).
        tenant_weights: Agent Fair Share weight per tenant (default 1 each), from
            `fair_share.MIN_TENANT_WEIGHT` (1e-6) to `MAX_TENANT_WEIGHT` (1e6).
        share_step_tokens: Agent Fair Share of compute (0: off; default 128,
            `fair_share.SHARE_STEP_TOKENS`, `bench/scheduling_mix.py`'s fit): while two or
            more tenants compete, the tenant with the least weighted service may fill the
            batch step and each other one computes at most its weight's part of this many
            tokens besides its decodes (`fair_share.ComputeShares`). One tenant: no effect.
        share_lag_tokens: with the compute share on, how far behind the least-served
            competing tenant (weighted service, finite) an entering tenant starts.
        share_within_cap: with the compute share on and the prefill cap below holding, the
            part of the cap (0 to 1) that the favoured tenant's running prefills keep ahead
            of the other tenants' chunks (`fair_share.ComputeShares.favoured_room` says
            why). 0: the cap goes in the running queue's order (the rule before session 41).
        growth_quantile: 0 (the default: off) or, in (0, 1], the quantile of realized /
            predicted growth that calibrates the charged growth online, per workflow, tool
            and phase (`kvsaga.scheduler.growth_calibration` says why); growth_prior_steps:
            its pseudo-observations of no correction (a fresh scheduler charges as if off).
        growth_charge: what an admitted or running step is charged beside its prompt:
            "step" (the default: the growth from its last finish, which predicts the tool's
            observation the prompt holds, so counts it twice: in effect the paused contexts'
            room); opt-in: "once" (that growth counted once: fails the non-thrash check,
            `--fit` round 24), "remaining" (its expected reply, learned online), "prompt"
            ("remaining", and a queued step on its prompt too); else a queued step a whole step.
            growth_reserve: 0 <= z <= 1e6: admission keeps z standard deviations of the
            admitted sessions' summed growth still to come free, so paused
            contexts stay resident when steps outgrow their means (0: off).
            paused_reserve: admission keeps room for paused sessions' next growth too
            (not charged: the shrink ignores it); "short": only for new sessions while a
            demoted one waits. `WorkingSetGate._init_growth_charge`.
        undo_demotion: a demoted session whose next step arrives while every full block
            of its context is still cached on the GPU is admitted again at once, as it was
            (False, the default: it waits to be admitted again; `Demotions._undo_demotion`
            says why); "unused": only while no session was admitted since its demotion;
            "unclaimed": only while that holds and no new session waits for admission.
            Never while the reserve (`max_wait_s`) holds, and it counts toward each waiting
            demoted step's `max_overtake`.
            Opt-in: `--fit` rounds 18 and 19 chose True and "unclaimed", the mixes' veto
            rejected both and "unused" (RESULTS "Issue 13: kvsaga-serve's demotions on the
            live replay").
        shrink_after: the shrink demotes a paused session only once it has been away
            this many times its expected pause (0, the default: at once, at the finish
            that paused it; `Demotions._away_long`). Opt-in: lost `--fit` round 18.
        decode_prefill_tokens, decode_prefill_when: while a running step decodes, a batch step
            computes at most this many prompt tokens (128; 0: off; at most `MAX_COUNT`),
            "always" or gated ("demoted", "demoted_queue", "recompute"); None:
            "demoted_queue", or off with a cap of 0 (a gate named with the cap off is
            refused; `decode_stall` says why).
        host_room: what the host tier adds to that room: "none" (GPU blocks only),
            "beyond_gpu" (the default: its blocks beyond the GPU's) or "all" (every one: the
            rule until session 57,
            under which a host tier made this scheduler recompute more;
            kvsaga/scheduler/block_room.py says why).
    """

    name = "workflow"

    def __init__(
        self,
        manager: KVCacheManager,
        *,
        overcommit: float = 1.0,
        horizon_steps: float = 1.0,
        prior_growth_tokens: int = 256,
        growth_alpha: float = 0.05,
        demote_factor: float = 4.0,
        demote_min_s: float = 10.0,
        default_pause_s: float = 30.0,
        reserve_decode_tokens: int = 64,
        admission_window: int = 16,
        max_bypass: int = 16,
        backfill_window: int = 4,
        max_backfill: int = 16,
        idle_admit_s: float = 1.0,
        shrink_aging: int = 2,
        shrink_exempt_s: float = math.inf,
        shrink_exempt_until: str = "never",
        shrink_order: str = "latest_back",
        shrink_on: str = "working_sets",
        max_overtake: int = 16,
        paused_growth: bool = False,
        tool_growth: bool = True,
        queue_shrink: bool = False,
        admission_order: str = "predicted",
        aging_s: float = 80.0,
        max_wait_s: float = 120.0,
        tail_wait_factor: float = 0.0,
        length_prior: float = 1.0,
        readmit_charge: str = "room_returns_queue_demoted",
        readmit_order: str = "sorted",
        readmit_cost: str = "context",
        tenant_weights: Mapping[str | None, float] | None = None,
        share_step_tokens: int = ComputeShares.share_step_tokens,  # fair_share's defaults
        share_lag_tokens: float = ComputeShares.share_lag_tokens,
        share_within_cap: float = ComputeShares.share_within_cap,
        growth_quantile: float = 0.0,
        growth_prior_steps: float = 8.0,
        growth_charge: str = "step",
        growth_reserve: float = 0.0,
        paused_reserve: bool | str = False,
        undo_demotion: bool | str = False,
        shrink_after: float = 0.0,
        decode_prefill_tokens: int = DECODE_PREFILL_TOKENS,
        decode_prefill_when: str | None = None,
        host_room: str = HOST_ROOM,
        **limits: Any,
    ) -> None:
        super().__init__(manager, **limits)
        self.overcommit = check_float("overcommit", overcommit, 0.0, strict=True)
        self.horizon_steps = check_float("horizon_steps", horizon_steps, 0.0, finite=True,
                                         maximum=MAX_HORIZON_STEPS)
        self.prior_growth_tokens = check_int("prior_growth_tokens", prior_growth_tokens, 0,
                                             MAX_COUNT)
        self.growth_alpha = check_float("growth_alpha", growth_alpha, 0.0, strict=True)
        if self.growth_alpha > 1:
            raise ValueError(f"scheduler parameter growth_alpha must be in (0, 1], got "
                             f"{growth_alpha!r}")
        self.demote_factor = check_float("demote_factor", demote_factor, 0.0)
        self.demote_min_s = check_float("demote_min_s", demote_min_s, 0.0)
        self.default_pause_s = check_float("default_pause_s", default_pause_s, 0.0)
        self.reserve_decode_tokens = check_int("reserve_decode_tokens",
                                                reserve_decode_tokens, 0)
        self.admission_window = check_int("admission_window", admission_window, 0)
        self.max_bypass = check_int("max_bypass", max_bypass, 0)
        self.backfill_window = check_int("backfill_window", backfill_window, 0, MAX_COUNT)
        self.max_backfill = check_int("max_backfill", max_backfill, 0)
        self.idle_admit_s = check_float("idle_admit_s", idle_admit_s, 0.0)
        self.shrink_aging = check_int("shrink_aging", shrink_aging, 0)
        self.shrink_exempt_s = check_float("shrink_exempt_s", shrink_exempt_s, 0.0,
                                           strict=True)
        self.shrink_exempt_until = check_choice("shrink_exempt_until", shrink_exempt_until,
                                                SHRINK_EXEMPT_UNTIL)
        self.shrink_order = check_choice("shrink_order", shrink_order, SHRINK_ORDERS)
        self.shrink_on = check_choice("shrink_on", shrink_on, SHRINK_ON)
        self.max_overtake = check_int("max_overtake", max_overtake, 0)
        self.paused_growth = check_bool("paused_growth", paused_growth)
        self.tool_growth = check_bool("tool_growth", tool_growth)
        self.queue_shrink = check_bool("queue_shrink", queue_shrink)
        if not (isinstance(undo_demotion, bool) or undo_demotion in UNDO_DEMOTIONS[2:]):
            raise ValueError(f"scheduler parameter undo_demotion must be one of "
                             f"{', '.join(map(repr, UNDO_DEMOTIONS))}, got {undo_demotion!r}")
        self.undo_demotion = undo_demotion
        self.shrink_after = check_float("shrink_after", shrink_after, 0.0)
        self._init_decode_stall(decode_prefill_tokens, decode_prefill_when)  # `DecodeStall`
        self.readmit_charge = check_choice("readmit_charge", readmit_charge, READMIT_CHARGES)
        self._returns_seen: dict[str, Any] = {}  # "cost": the return last observed
        self._return_lost, self._return_count = 0.0, 0  # ... and their lost shares
        self._ends_since, self._ended_blocks = None, 0  # "cost_ends": contexts that ended
        self._init_leave_forecast()  # "cost_leave": `LeaveForecast`
        self._init_room_swap()  # "room_returns_queue_corrected": `RoomSwap`
        self._init_admission_order(admission_order, aging_s, max_wait_s, length_prior,
                                   tail_wait_factor, readmit_order, readmit_cost)
        self.tenant_weights = weights = check_weights(tenant_weights)  # `fair_share`
        self._fair = FairShare(weights)
        self._init_compute_share(share_step_tokens, share_lag_tokens,  # `ComputeShares`
                                 share_within_cap)
        self.capacity = tiers_room(manager, host_room)  # checks it (`BlockRoom`'s module)
        self.host_room = host_room
        self.sessions: dict[str, _Admitted] = {}  # admitted sessions
        self._resumed: deque[Any] = deque()  # steps of admitted sessions (retries first)
        self._bypassed = 0  # warm steps admitted ahead of the resumed queue's current head
        self._head: Any = None
        # Per session waiting for admission: sessions admitted ahead of it while it was the
        # head (`max_backfill`; dropped when it leaves the queue: `_waiting_removed`).
        self._backfills_past: dict[str, int] = {}
        self._retries: set[int] = set()  # preempted steps (by id): they keep their place
        self._pending: dict[str | None, deque[Any]] = {}  # per tenant: sessions to admit
        self._pending_resumed = 0  # ... of them resumed steps (`DecodeStall._demoted_waiting`)
        self._growth = GrowthTable(self.prior_growth_tokens, self.growth_alpha)
        self._calibration = calibration("growth_quantile", growth_quantile,
                                        "growth_prior_steps", growth_prior_steps)
        self._init_growth_charge(growth_charge, growth_reserve,
                                 paused_reserve)  # `WorkingSetGate`
        self._committed = 0  # sum of admitted sessions' working sets, blocks
        self._context_total = 0  # ... of their own contexts (`WaitCauses._context_blocks`)
        self._tenant_blocks: dict[str | None, int] = {}  # ... per tenant (AFS shares)
        self._demote_at = math.inf  # no paused session is demotable before this
        self._attempt_at = -math.inf  # the last admission attempt's time
        self._idle_since: float | None = None  # the batch is empty and nobody resumed since
        self._num_forgotten = 0  # admitted sessions demoted or forgotten so far
        self._forgotten_before = 0  # ... when the last admission attempt began
        self.num_demotions = 0
        self.num_session_admissions = 0  # new sessions and demoted ones admitted again
        self.admission_wait_s = 0.0  # their summed waits, from queueing to admission
        self.admission_wait_max_s = 0.0  # the longest of them
        self.tenant_admission_wait_s: dict[str | None, float] = {}  # their sum per tenant
        self._deferred: set[str] = set()  # demoted here, not back
        self._overtaken: dict[str, int] = {}  # resumed steps waiting: `_insert_demoted`'s counts
        self._times_demoted: dict[str, int] = {}  # per live session (aging in `_shrink`)
        self._waited_again: dict[str, float] = {}  # ... its waits to be admitted again, summed
        self._undoable: dict[str, tuple[_Admitted, int]] = {}  # `undo_demotion`'s records
        self.num_undone_demotions = 0
        self._init_wait_causes()

    # -- timers (the queues: `WaitingQueues`; who is tried next: `AdmissionCandidates`) ------
    @property
    def wake_time(self) -> float:
        if not self._pending:
            return math.inf
        idle = math.inf if self._idle_since is None else self._idle_since + self.idle_admit_s
        # The reserve's start, unless it already holds (then waking for it would spin).
        reserve = math.inf if self._holding is self._first_waiting() else self.reserve_at
        # "room_overdue": a paused session's predicted return after the last attempt.
        return min(self._demote_at, idle, reserve, self._overdue_next(self._attempt_at))

    def refusal_until(self, now: float) -> float:
        # Time enters admission through three rules only. The reserve starts at
        # `reserve_at` (then the candidate is fixed until admitted). Demotion: `_demote`
        # acts once `now` reaches `_demote_at`, and a deadline already passed was either
        # acted on (it moved on) or not reached (a repeat does not reach it either). Idle:
        # `idle_admit_s`.
        if not self._pending:
            return math.inf  # only resumed steps wait: no session-level gate, no timer
        if self._num_forgotten != self._forgotten_before:
            # The attempt demoted a session (to reclaim a tenant's share, or at a
            # deadline) after choosing whom to try: a repeat reads the smaller admitted
            # sets (`_entitled_heads`, `_session_fits`) and may admit.
            return now
        if self._swap_reads_clock() and self._demoted_waiting_any():
            return now  # the swap's forecasts read the clock: no refusal holds (`room_swap`)
        demote = self._demote_at if self._demote_at > now else math.inf
        idle = math.inf if self._idle_since is None else self._idle_since + self.idle_admit_s
        reserve = self.reserve_at
        # "room_overdue" (`room_swap`): a paused session past its predicted return may be
        # a swap's victim, so the next such return bounds the refusal.
        return min(demote, idle, reserve if reserve > now else math.inf,
                   self._overdue_next(now))

    def admit_waiting(self, now: float, budget: int, executor: Executor,
                      out: SchedulerOutput) -> None:
        self._forgotten_before = self._num_forgotten
        self._attempt_at = now  # `wake_time`'s "room_overdue" timer counts from it
        super().admit_waiting(now, budget, executor, out)

    # -- admissions and finishes ----------------------------------------------------------
    def _admitted(self, req: Any, now: float, *, instead_of: Any = None) -> None:
        if instead_of is not None and instead_of.session_id in self._deadlines:
            # Counted per waiting session, not for the last head passed alone: reset when
            # another head was passed in between, a head was passed without bound (fresh
            # seed 240, bfcl 1x 25%: 55 times; tests/scheduler/test_backfill_bound_per_session.py).
            past = self._backfills_past
            past[instead_of.session_id] = past.get(instead_of.session_id, 0) + 1
        if self._resumed and req is not self._head and self._head is self._resumed[0]:
            self._bypassed += 1  # a warm step went ahead of the head
        # The batch is busy: the next idle period's clock starts at its own first refusal
        # (`_idle_long`). Kept, a time from an idle period before a busy one with no refused
        # attempt in it admitted a session that does not fit at once, not after
        # `idle_admit_s`.
        self._idle_since = None
        sid = req.session_id
        self._step_admitted(req, now)
        info = self.sessions.get(sid)
        if info is None:  # a session admission: charge its tenant (AFS)
            if self._ends_since is None:
                self._ends_since = now
            self._fair.charge(req.tenant)
            self.num_session_admissions += 1
            self.admission_wait_s += now - req.arrival
            self.admission_wait_max_s = max(self.admission_wait_max_s, now - req.arrival)
            # (the TRACKED_TENANTS most recently admitted tenants: kvsaga/policy/bounded.py)
            waits = self.tenant_admission_wait_s
            waits[req.tenant] = touch(waits, req.tenant, float, TRACKED_TENANTS) \
                + now - req.arrival
            if sid in self._deferred:  # admitted again: its wait counts (`shrink_exempt_s`)
                self._set_deferred(sid, False, now)
                again = self._waited_again  # clamped at 0 as the other summed waits
                again[sid] = again.get(sid, 0.0) + max(now - req.arrival, 0.0)
            info = self.sessions[sid] = _Admitted(req.tenant, req.workflow, req.num_tokens)
            info.shared = self._shared_tokens(sid)
        # A compacted step (its prompt shorter than the last finish's context) is charged the
        # old context until it finishes or is preempted (`finish`, `_preempted_charge`
        # charge the compacted one): `begin_step`
        # references only the compacted prompt's blocks, but the old context's stay owned
        # by the session, and the default policy ("graph") prices a running session's blocks
        # as about to be used, evicting paused contexts first; charged less, the gate admits
        # sessions whose allocations evict them (tests/scheduler/test_compacted_running_charge.py).
        info.context = max(info.context, req.num_tokens)
        info.active = info.on_prompt = True
        info.demote_at = math.inf
        self._set_blocks(info)

    def _preempted_charge(self, info: Any, req: Any) -> None:
        """The admitted session `info`'s running step `req` was preempted (its retry queued
        first). A compacted step, charged its old, longer context while it ran
        (`_admitted`), is charged its own context (prompt and tokens decoded, which the
        retry computes again) from here on: the scheduler preempts only when the free and
        cached blocks were short of an allocation, so the allocations before it had evicted
        the old context's cached blocks, and the manager's `preempt` disowns those left
        (they hold none of the session's context: kvsaga/manager_signals.py). Charged the
        old context, the preempted step and its retry held back sessions the pool had room
        for (tests/scheduler/test_compacted_preempt_charge.py). The charge is then as an
        ordinary preempted step's at its re-admission (`max`: prompt and decoded tokens),
        under `growth_charge` "once" too (`_step_blocks`: charged as under "step", not from
        the last finish's context), and an abort of the retry keeps it (`_unqueue`)."""
        if req.num_tokens < info.context:
            info.context = req.num_tokens
            self._set_blocks(info)

    def finish(self, req: Any, now: float, *, ended: bool = False) -> bool:
        ran = super().finish(req, now, ended=ended)  # else cancelled while waiting
        sid, s = req.session_id, self.manager.sessions.get(req.session_id)
        if ran:  # a step cancelled while it waited teaches nothing, even its session's end
            self._step_done(req, ended, now)
        info = self.sessions.get(sid)
        if ended or s is None:  # over, or the manager dropped it: nothing of it stays here
            self._times_demoted.pop(sid, None)
            self._waited_again.pop(sid, None)
            self._drop_demotion(sid)
            self._session_left(sid)
            if info is not None:
                self._ended_blocks += self._own_blocks(info)  # "cost_ends"'s rate
                self._forget(sid)
            return ran
        if info is None:
            return ran
        if not ran:  # paused again as at its last finish (`WorkingSetGate`)
            self._unqueue(info, s, now)
            return ran
        context = req.num_tokens
        if self._calibration is not None:
            self._calibrate(info, context)
        self._observe_reply(info, context)
        info.steps += 1
        if info.last_context is not None:  # a context that shrank (compacted): no growth
            self._growth.observe(info.workflow, max(context - info.last_context, 0), info.tool)
        info.last_context = context
        info.tool = s.hint.tool if s.hint is not None else None
        info.context = context
        info.shared = self._shared_tokens(sid)
        info.active = info.on_prompt = False
        info.demote_at = demote_deadline(now, self._expected_pause(s), self.demote_factor,
                                        self.demote_min_s)
        self._demote_at = min(self._demote_at, info.demote_at)
        self._set_blocks(info)
        self._shrink(now)
        return ran

    def forget_session(self, session_id: str, now: float) -> None:
        super().forget_session(session_id, now)
        self._drop_demotion(session_id)
        self._times_demoted.pop(session_id, None)
        self._waited_again.pop(session_id, None)
        self._session_left(session_id)
        if session_id in self.sessions:
            self._ended_blocks += self._own_blocks(self.sessions[session_id])
            self._forget(session_id)
