"""SessionGate: workflow-atomic admission for vLLM, decided inside the kvsaga connector.

Retention alone cannot stop thrash: once the paused sessions' contexts and the running batch
together outgrow the KV memory, every resumed step evicts another session's context and then
recomputes its own. kvsaga's `workflow` scheduler (kvsaga/scheduler/) admits whole sessions
instead; this gate is the same rule in the form vLLM's connector API allows: vLLM asks the
connector about every waiting request before it allocates (`get_num_new_matched_tokens`),
and an answer of "not yet" defers the request to the next step while the requests behind it
go on.

- A step of an admitted session always goes ahead (its context is what the gate protects).
- A session's first step (or the next step of a demoted one) is admitted while the admitted
  sessions' predicted working sets fit the KV blocks: each its context (less the prefix
  it shares with others, counted once) plus `horizon_steps` steps of the workflow's
  observed context growth per step (a mean, then an exponential moving average), rounded
  up to blocks.
- A session's first step is also admitted whenever vLLM has room for it right now: the
  connector passes the blocks vLLM could still hand out after this step's allocation and
  one block per running request, without releasing anything retained (`spare_blocks`), and
  the step goes ahead when they cover `room_steps` (default 2) steps' growth of every
  admitted session (`room_admit`, default on). Two, not one: the growth is a mean and a
  step's tool output can be several times it; with one step's, under pressure (a
  compute-bound replay with KV at 25% of the working set, fit seeds 0 and 1 on
  bench/vllm_scheduler_replay.py's quiet clock) the admitted sessions then outgrew the
  blocks and the shrink below demoted the session that had just finished, whose next step
  recomputed its context: 10 and 4 such steps, 2,859 and 1,567 tokens, 1.17x against plain
  vLLM where two steps give 1.33x (and 1.00x either way where the tasks are bound by
  their tool pauses, 1.50x and 1.54x where prefill dominates: bench/RESULTS.md). The
  prediction above is what guards the admitted sessions when memory is short; when it is
  not short, deferring only shrinks the batch: live on
  fit seeds 0-1 (docs/integrations_benchmarks.md, "Where the gate's time went") the gate deferred
  first steps for seconds while vLLM had their blocks free, and that wait, not recompute,
  was the connector's extra task time.
- Room admits a session only while it fits, with `room_fit_steps` (default 3) steps of
  growth, beside the admitted sessions' contexts as they stand: what the shrink below checks
  at every finish. vLLM's free blocks are often an admitted session's released context (its
  step is due back); a session let in on them outgrew the blocks at its first finish and the
  shrink demoted it, whose next step recomputed its context, again and again late in a run
  (the compute-bound replay above, fit seeds 0 and 1: 4 demotions on seed 1). With the check,
  on that replay's fit seeds 0-4, mean TCT over plain vLLM's 1.41, 1.25, 1.33, 1.02, 1.40x ->
  1.44, 1.40, 1.39, 1.28, 1.33x (1 and 2 steps: 1.26 and 1.28x geometric mean against
  1.37x for 3 and 1.35x for 3.5); the tool-bound replay (x2 pauses, 0.15 s + 5 ms) is
  unchanged on seeds 0-4.
- When one does not fit, admitted sessions paused far longer than expected
  (`demote_factor` x the expected pause + `demote_min_s`) are demoted first; if it still
  does not fit it waits. Bounded waiting: it is admitted anyway once nothing has run for
  `idle_admit_s` (the memory would idle), or after `max_wait_s`, counted from its first
  deferral even when its client aborted and resent the step meanwhile (`finished`).
- Whenever the admitted sessions' contexts as they stand (`shrink_horizon_steps` steps of
  growth, default none) outgrow the blocks, the most recently admitted paused sessions are
  demoted until they fit. Admission reserves growth (`horizon_steps`, default 4) and the
  shrink does not: a session admitted is seldom demoted, since a demotion costs both its
  wait for re-admission and the recompute of its context (bench/vllm_scheduler_replay.py on
  seeds 0-4: demotions under the earlier horizon 1 for both were most of the prefill the
  gate left above an unbounded cache's; RESULTS.md, "vLLM's scheduler on a simulated
  clock").

- Reserved growth gives way (`reserve_wait_factor`, default 2): a session that fits beside
  the admitted sessions' contexts as they stand is admitted once the sessions waiting have
  together waited that many times its context's recompute (`gate_waits` has the rule, why,
  and its fit).
- Pauses that outlive the workflow's observed ones expire (`expire`): an unhinted one past
  the `pause_quantile` quantile of them, and one hinted longer than that quantile
  (`expire_long_hints`); `gate_pauses` keeps the observed pauses and has the rules' fits.
- What an admitted session's step is charged (`growth_charge`, `gate_growth`): "step",
  the workflow's growth from finish to finish, for every step in the horizon; "remaining",
  for the step a session has queued or running, its reply alone (its prompt holds the
  tool's observation already).
- Order (`admission_order`, default "predicted"): the least predicted remaining work first,
  with aging, not vLLM's queue order (`gate_order` has the rule and the fit).

Plain Python (no vLLM import): the connector feeds it token counts and the clock. The
working-set rule itself (growth estimate, rounding, demotion deadline, shrink order) is
`kvsaga.scheduler.working_set`, the very code the `workflow` scheduler runs.
"""

from __future__ import annotations

import math

from kvsaga._validate import check_positive_int, is_number
from kvsaga.integrations.vllm.gate_growth import GateGrowth
from kvsaga.integrations.vllm.gate_order import Waiting, WaitingOrder, check_finite
from kvsaga.integrations.vllm.gate_pauses import PauseLog, expiry_bound
from kvsaga.integrations.vllm.gate_sessions import Admitted as _Admitted
from kvsaga.integrations.vllm.gate_sessions import AdmittedTable, SumMemo, resume, writes
from kvsaga.integrations.vllm.gate_waits import GateWaits, WaitTable
from kvsaga.integrations.vllm.gate_yields import GateYields
from kvsaga.scheduler.working_set import demote_deadline, shrink, working_set_blocks


class SessionGate(GateWaits, GateYields):
    """Session-level admission over `capacity` KV blocks (see the module docstring).

    Args:
        capacity: KV blocks the admitted working sets may fill.
        block_size: tokens per block.
        horizon_steps: steps of expected growth counted in a working set at admission.
        prior_growth_tokens: growth per step assumed for a workflow before one is seen.
        growth_alpha: weight of each new observed growth once 1 / growth_alpha were seen.
        demote_factor, demote_min_s: a paused session is demotable once its pause exceeds
            demote_factor x its expected pause + demote_min_s.
        default_pause_s: expected pause when a step gives no `expected_s`.
        idle_admit_s: admit a waiting session anyway once no request has run this long.
        max_wait_s: admit a waiting session anyway once it has waited this long.
        shrink_horizon_steps: steps of growth counted when deciding whether the admitted
            sessions outgrew the blocks (demotion).
        room_admit: admit a session whose step vLLM has room for now (see `admit`).
        room_steps: steps of the admitted sessions' growth that room must cover.
        room_fit_steps: steps of growth a session admitted by room must fit with beside
            the admitted sessions' contexts as they stand (None: no such check).
        pause_quantile: an unhinted pause expires past this quantile (0-1) of the
            workflow's observed pauses (see `expire`).
        pause_min_observed: observed pauses of a workflow before unhinted pauses expire.
        reserve_wait_factor: a session that fits beside the admitted contexts as they stand
            is admitted once the waiting sessions together waited this many times its
            predicted recompute (see `_reserve_paid`); None: never (growth always reserved).
        reserve_fit_steps: steps of its own growth such a session must fit with (0: none).
        expire_long_hints: a hinted pause expected longer than the workflow's observed
            `pause_quantile` expires past it as an unhinted one does (see `expire`).
        admission_order: "fifo" (vLLM's queue order) or "predicted" (the session with the
            least predicted remaining work first, with aging; `gate_order`).
        aging_s: "predicted"'s aging: a factor e of predicted work is worth this many
            seconds of waiting.
        prior_steps: "predicted"'s prior session length (steps) before sessions of a
            workflow were seen to end.
        growth_charge: "step" or "remaining" (`gate_growth`: the growth a session whose
            step is queued or running is charged for that step).
    """

    def __init__(
        self,
        capacity: int,
        block_size: int,
        *,
        horizon_steps: float = 4.0,
        prior_growth_tokens: float = 64.0,
        growth_alpha: float = 0.05,
        demote_factor: float = 4.0,
        demote_min_s: float = 10.0,
        default_pause_s: float = 30.0,
        idle_admit_s: float = 5.0,
        max_wait_s: float = 120.0,
        shrink_horizon_steps: float = 0.0,
        room_admit: bool = True,
        room_steps: float = 2.0,
        room_fit_steps: float | None = 3.0,
        pause_quantile: float = 0.8,
        pause_min_observed: int = 8,
        reserve_wait_factor: float | None = 2.0,
        reserve_fit_steps: float = 0.0,
        expire_long_hints: bool = True,
        admission_order: str = "predicted",
        aging_s: float = 20.0,
        prior_steps: float = 16.0,
        growth_charge: str = "step",
    ) -> None:
        for name, v in (("capacity", capacity), ("block_size", block_size)):
            check_positive_int(f"gate {name}", v)
        # Finite: inf (or an int too large for a float) was accepted here and raised
        # OverflowError at the first admission (math.ceil of the growth), inside vLLM's
        # scheduler. A very large value says "never" (idle_admit_s, max_wait_s).
        for name, v in (("horizon_steps", horizon_steps),
                        ("prior_growth_tokens", prior_growth_tokens),
                        ("demote_factor", demote_factor), ("demote_min_s", demote_min_s),
                        ("default_pause_s", default_pause_s), ("idle_admit_s", idle_admit_s),
                        ("max_wait_s", max_wait_s),
                        ("shrink_horizon_steps", shrink_horizon_steps),
                        ("room_steps", room_steps), ("reserve_fit_steps", reserve_fit_steps)):
            check_finite(f"gate parameter {name}", v, 0.0)
        for name, v in (("room_fit_steps", room_fit_steps),
                        ("reserve_wait_factor", reserve_wait_factor)):
            if v is not None:
                check_finite(f"gate parameter {name}", v, 0.0, " or null")
        for name, v in (("room_admit", room_admit), ("expire_long_hints", expire_long_hints)):
            if not isinstance(v, bool):
                raise ValueError(f"gate parameter {name} must be true or false, got {v!r}")
        if not (is_number(growth_alpha) and 0 < growth_alpha <= 1):
            raise ValueError(f"gate parameter growth_alpha must be in (0, 1], got "
                             f"{growth_alpha!r}")
        self.capacity = capacity
        self.block_size = block_size
        self.horizon_steps = float(horizon_steps)
        self.demote_factor = float(demote_factor)
        self.demote_min_s = float(demote_min_s)
        self.default_pause_s = float(default_pause_s)
        self.idle_admit_s = float(idle_admit_s)
        self.max_wait_s = float(max_wait_s)
        self.shrink_horizon_steps = float(shrink_horizon_steps)
        self.room_admit = room_admit
        self.room_steps = float(room_steps)
        self.room_fit_steps = None if room_fit_steps is None else float(room_fit_steps)
        self.expire_long_hints = expire_long_hints
        self.reserve_wait_factor = (None if reserve_wait_factor is None
                                    else float(reserve_wait_factor))
        self.reserve_fit_steps = float(reserve_fit_steps)
        self.pauses = PauseLog(pause_quantile, pause_min_observed)
        self.num_expired = 0
        self.sessions = AdmittedTable()  # admitted, in admission order (gate_sessions)
        self._sums = SumMemo()  # sums over them, kept between probes
        self._growth = GateGrowth(prior_growth_tokens, growth_alpha, growth_charge)
        self._waiting_since = WaitTable()  # deferred session -> first deferral
        # deferred session whose waiting request was aborted -> its first deferral, until it
        # is resent (`_withdraw_wait`), oldest first
        self._withdrawn_waits: dict[str, float] = {}
        # the sessions the last `admit` demoted to let its session in (`_fits`): the
        # connector releases their retained blocks, or keeps them demoted
        self.last_demoted: list[str] = []
        self._shared: dict[str, int] = {}  # session -> its shared prefix, until it ends
        self._in_flight: dict[str, str | None] = {}  # request id allocated -> its session
        self._flights: dict[str, set[str]] = {}  # session -> its request ids in flight
        # session -> the largest context its step's finished requests reached, while others
        # of the step are in flight (`finished`)
        self._step_context: dict[str, int] = {}
        self._idle_since: float | None = 0.0
        self.num_deferrals = 0
        self.num_demotions = 0
        # Where the waiting went (the connector logs these): deferrals while vLLM had room
        # for the step, seconds waited by the sessions the gate held back (first deferral
        # to admission), and how each waiting session got in at last.
        self.num_deferred_with_room = 0
        self.wait_s = 0.0
        self.admitted_by: dict[str, int] = {}
        self.order = WaitingOrder(admission_order, aging_s, prior_steps)

    # -- working sets -------------------------------------------------------------------------
    def _blocks(self, s: _Admitted, horizon: float | None = None) -> int:
        growth = self._growth.tokens(s.workflow,
                                     self.horizon_steps if horizon is None else horizon,
                                     s.paused_at is None)
        return working_set_blocks(s.context - s.shared, 1.0, growth, self.block_size)

    def committed(self, horizon: float | None = None) -> int:
        """Blocks the admitted sessions are predicted to hold (their shared prefix once),
        with `horizon` steps of growth each (default `horizon_steps`)."""
        if not self.sessions:
            return 0
        shared, blocks = self._working_sets(horizon)
        return math.ceil(shared / self.block_size) + blocks

    def _stamp(self) -> tuple[int, int, int]:
        """What the sums over the admitted sessions read has not changed while this is the
        same (`gate_sessions`)."""
        return writes(), self._growth.changes, id(self.sessions)

    def _working_sets(self, horizon: float | None) -> tuple[int | None, int]:
        """The admitted sessions' largest shared prefix (None: no session) and the sum of
        their working sets' blocks with `horizon` steps of growth each."""
        h = self.horizon_steps if horizon is None else horizon
        return self._sums.get(("sets", h), self._stamp(), lambda: (
            max((s.shared for s in self.sessions.values()), default=None),
            sum(self._blocks(s, h) for s in self.sessions.values())))

    # -- the decision -------------------------------------------------------------------------
    def admit(self, sid: str, workflow: str, num_tokens: int, shared_tokens: int,
              now: float, spare_blocks: int | None = None,
              token_s: float | None = None, last_step: bool = False) -> bool:
        """Whether a step of session `sid` (`num_tokens` of prompt, the first `shared_tokens`
        of them a prefix cached for other sessions) may be allocated now. True admits the
        session (a later `finished` or `ended` must follow).

        `spare_blocks`: the blocks vLLM would still have free (or plain evictable cache, no
        retained block among them) after allocating this step and one block per running
        request; None when unknown. A new session is admitted when they cover `room_steps`
        steps' growth of every admitted session (`room_admit`): it then evicts nothing an
        admitted session holds or is about to need.

        `token_s`: seconds one prefill token adds to vLLM's step (the connector's
        `StepCost` fit; None until fitted): what a recompute costs, for `_reserve_paid`.

        `last_step`: the step is hinted as the session's last (its remaining work is one
        step, for `admission_order` "predicted", which may defer a session otherwise
        admissible to waiting ones ranked ahead of it: `_yields`).

        Sessions paused past their demotion deadline that this call demoted to let `sid` in
        are left in `last_demoted` until the next call (their blocks are not the gate's
        to release)."""
        self.last_demoted = []
        self.pauses.back(sid, workflow, now)
        self.order.seen(sid, workflow)
        s = self.sessions.get(sid)
        if s is not None:
            resume(s, num_tokens)
            return True
        withdrawn = self._withdrawn_waits.pop(sid, None)
        if withdrawn is not None:  # resent after an abort: the wait goes on from then
            self._waiting_since.setdefault(sid, withdrawn)
        shared = self._shared.setdefault(sid, min(shared_tokens, num_tokens))
        new = _Admitted(workflow, num_tokens, shared, now)
        fits = self._fits(new, now)  # (demotes sessions paused past their deadline)
        if not fits:
            self._waiting_since.setdefault(sid, now)
        since = self._waiting_since.get(sid, now)
        reason = self._reason(new, since, now, spare_blocks, token_s, fits)
        mine = Waiting(workflow, num_tokens, shared, since, last_step, self.order.step)
        if reason not in (None, "max_wait") and self._yields(sid, new, mine, now, spare_blocks,
                                                             token_s):
            self._waiting_since.setdefault(sid, now)
            self.order.num_yielded += 1
            reason = None
        if reason is None:
            self.num_deferrals += 1
            self.num_deferred_with_room += spare_blocks is not None and spare_blocks >= 0
            self.order.probed(sid, mine)
            return False
        if self._end_wait(sid, now):
            self.admitted_by[reason] = self.admitted_by.get(reason, 0) + 1
        self.sessions[sid] = new
        return True

    def _reason(self, new: _Admitted, since: float, now: float, spare_blocks: int | None,
                token_s: float | None, fits: bool) -> str | None:
        """Why `new` (waiting since `since`) may be admitted now, or None (see `admit`)."""
        if fits:
            return "fit"
        if (self.room_admit and spare_blocks is not None
                and spare_blocks >= self.next_step_blocks() and self._room_fits(new)):
            return "room"
        if self._reserve_paid(new, now, token_s):
            return "waited"
        if self._idle_since is not None and now - self._idle_since >= self.idle_admit_s:
            return "idle"
        if now - since >= self.max_wait_s:
            return "max_wait"
        return None

    def next_step_blocks(self) -> int:
        """Blocks the admitted sessions' next steps are expected to add: `room_steps` steps
        of their workflow's growth each (as `growth_charge` charges them), rounded up to
        blocks."""
        return self._sums.get(("next", self.room_steps), self._stamp(), lambda: sum(
            math.ceil(self._growth.tokens(s.workflow, self.room_steps, s.paused_at is None)
                      / self.block_size) for s in self.sessions.values()))

    def _fits(self, new: _Admitted, now: float) -> bool:
        if not self.sessions:
            return True
        if self._fits_with(new):
            return True
        key = ("deadline", self.demote_factor, self.demote_min_s, self.default_pause_s)
        if not now > self._sums.get(key, self._stamp(), lambda: min(
                (d for s in self.sessions.values() if s.paused_at is not None
                 if (d := self._deadline(s)) < math.inf), default=math.inf)):
            return False  # (no pause is past its deadline: the scan below would demote none)
        for sid, s in list(self.sessions.items()):
            if s.paused_at is not None and now > self._deadline(s):
                self._demote(sid)
                self.last_demoted.append(sid)
        return not self.sessions or self._fits_with(new)

    def _deadline(self, s: _Admitted) -> float:
        """When paused session `s` becomes demotable (`demote_deadline`)."""
        expected = self.default_pause_s if s.expected_s is None else s.expected_s
        return demote_deadline(s.paused_at, expected, self.demote_factor, self.demote_min_s)

    def _fits_with(self, new: _Admitted) -> bool:
        return self._total_with(new, self.horizon_steps, self.horizon_steps) <= self.capacity

    def _room_fits(self, new: _Admitted) -> bool:
        """Whether `new`, with `room_fit_steps` steps of growth, fits beside the admitted
        sessions' contexts as they stand (`shrink_horizon_steps`): what the shrink checks at
        every finish, so a session admitted by room is not demoted at its first one."""
        return self.room_fit_steps is None or self._total_with(
            new, self.room_fit_steps, self.shrink_horizon_steps) <= self.capacity

    def _total_with(self, new: _Admitted, new_horizon: float, horizon: float) -> int:
        """Blocks of the admitted working sets (`horizon` steps of growth each) and `new`'s
        (`new_horizon`), the shared prefix once."""
        shared, blocks = self._working_sets(horizon)
        shared = new.shared if shared is None else max(new.shared, shared)
        return math.ceil(shared / self.block_size) + self._blocks(new, new_horizon) + blocks

    def _demote(self, sid: str) -> None:
        del self.sessions[sid]
        self.num_demotions += 1

    def pause_limit(self, workflow: str) -> float | None:
        """How long a pause of `workflow` may run before it expires (`PauseLog.limit`)."""
        return self.pauses.limit(workflow)

    def expire(self, now: float, returning: str | None = None) -> list[str]:
        """Demote the admitted sessions paused without a hint for longer than their
        workflow's `pause_limit`, and return them (the connector releases their blocks).
        A session that ended without saying so looks like this; one that was only slow
        comes back as a new one (admitted again if it fits, its context in vLLM's LRU
        cache until then). A hinted pause whose `expected_s` is longer than the limit
        expires past it too (`expire_long_hints`); one expected within it keeps the
        demotion deadline of `admit` (a pause hinted short runs long only if the tool is
        late).
        `returning`: the session whose step is being admitted now; its pause has ended, so
        it never expires here, however long it was.

        Until a workflow has `pause_min_observed` pauses observed (say, one-step sessions
        that never come back) its unhinted pauses do not expire: they wait for the
        demotion deadline or an idle batch, as before this rule.

        The connector asks before every admission probe: the earliest time a pause expires
        is kept (`_expiry_due`), and a call before it answers at once (with 4,000 paused
        sessions the scan cost 2 ms a probe: review s51, vgate finding 3)."""
        if not now >= self._expiry_due():
            return []  # (no pause has run past its limit: the scan below would demote none)
        out = []
        for sid, s in list(self.sessions.items()):
            if s.paused_at is None or sid == returning:
                continue
            limit = self.pause_limit(s.workflow)
            if s.expected_s is not None and not (self.expire_long_hints and limit is not None
                                                 and s.expected_s > limit):
                continue  # a hinted pause expected within the usual ones: its deadline
            if limit is not None and now - s.paused_at > limit:
                self._demote(sid)
                self.num_expired += 1
                out.append(sid)
        return out

    def _expiry_due(self) -> float:
        """A time before which `expire` demotes no session (inf: never, as things stand;
        at most a few floats before the first it would: `expiry_bound`), kept while the
        admitted sessions, the workflows' observed pauses and `expire_long_hints` are the
        same."""
        key = ("expiry", self.expire_long_hints)
        return self._sums.get(key, (self._stamp(), self.pauses.changes), lambda: min(
            (expiry_bound(s.paused_at, limit) for s in self.sessions.values()
             if s.paused_at is not None
             and (limit := self.pause_limit(s.workflow)) is not None
             and (s.expected_s is None or (self.expire_long_hints and s.expected_s > limit))),
            default=math.inf))

    def arrived(self, sid: str, num_tokens: int, now: float) -> None:
        """An admitted session's next step (`num_tokens` of prompt) reached vLLM's queue
        `now` (`KVSagaScheduler` reports it on arrival; without it the gate learns of the
        step at vLLM's first question about it, `admit`). Its pause is over: it is counted
        with that prompt, no longer demotable (`_fits`, the shrink, `expire`) while the
        step waits behind others in vLLM's queue, and its pause is learned as ending now.
        Why: a step that waits there unasked (vLLM stops asking at the first request it
        cannot allocate) looked paused, and the shrink at another session's finish demoted
        it and released the blocks the step was about to hit (bench/RESULTS.md,
        "KVSagaScheduler and the gate"); and its wait in the queue was learned as part of
        the tool pause, lengthening the workflow's expiry limit (review s49, gate
        finding 6)."""
        s = self.sessions.get(sid)
        if s is not None and s.paused_at is not None:
            self.pauses.back(sid, s.workflow, now)
            resume(s, num_tokens)

    # -- what the connector reports -------------------------------------------------------------
    def started(self, request_id: str, sid: str | None = None) -> None:
        """A request (of session `sid`, or none) was allocated."""
        self._in_flight[request_id] = sid
        if sid is not None:
            self._flights.setdefault(sid, set()).add(request_id)
        self._idle_since = None

    def _land(self, request_id: str) -> bool:
        """The request is no longer in flight; whether it was (allocated: it ran)."""
        if request_id not in self._in_flight:
            return False
        sid = self._in_flight.pop(request_id)
        flights = self._flights.get(sid)
        if flights is not None:
            flights.discard(request_id)
            if not flights:
                del self._flights[sid]
        return True

    @property
    def num_in_flight(self) -> int:
        """Requests allocated and not finished."""
        return len(self._in_flight)

    def finished(self, request_id: str, sid: str | None, context_tokens: int, now: float,
                 expected_s: float | None, last_step: bool,
                 withdrawn: bool = False) -> list[str]:
        """A request finished (`sid` None: no session). Returns the sessions demoted because
        the admitted working sets outgrew the blocks (their retained blocks may go).

        One aborted before vLLM allocated it ran no step: the session's admission is undone
        (`_undo_admission`), or, deferred, it stops waiting (`_withdraw_wait`); it neither
        starts a pause (its client's resend would be learned as a tool pause of ~0 s, and
        the workflow's expiry limit shrank to the resend gap) nor makes the batch idle
        (nothing that ran ended: the idle rule's clock restarted at each abort, and a
        session whose client resent on a timeout never got in by it). `withdrawn`: it was
        allocated, then preempted (vLLM freed its blocks) and aborted while requeued (the
        connector tells the policy `resume_withdrawn`): no step either, though it ran, so
        nothing of its partial output is learned and the session is restored as if it had
        never been allocated. The connector flags every such request of a step, not only
        its last (review s52 diffvleft: an earlier one's partial output was learned as the
        step's context). The last request of a step whose others ran and finished ends
        that step, withdrawn or not: it is learned at what those reached (review s51, vgate
        finding 5: it was undone as if no request of it had run); the connector tells the
        policy `step_finished` then, held or not (review s52 diffvleft 3).

        A session's requests in flight together (vLLM's n > 1 children of one request, or
        concurrent steps; the connector says whose each is at `started`) are one step: it is
        counted, its growth learned and its pause begun when the last of them finishes, at
        the largest context any of them reached. Counted per request, the children after the
        first were learned as steps of no growth (n = 3: a third of the true growth) and the
        session's steps n-fold. A request allocated before and finishing after its
        session's step ended (a late child) adds no step either."""
        ran = self._land(request_id)  # allocated: not aborted while waiting
        if ran and not self._in_flight:
            self._idle_since = now
        if sid is None:
            return []
        ran = ran and not withdrawn  # (a step withdrawn ran none)
        if ran and not last_step and sid in self._flights:  # others of its step still run
            self._step_context[sid] = max(self._step_context.get(sid, 0), context_tokens)
            return []
        if ran:
            context_tokens = max(context_tokens, self._step_context.pop(sid, 0))
        elif sid not in self._flights and sid in self._step_context:
            # the last of a step whose other requests ran and finished: the step ran, with
            # what they reached (this one's partial output is not learned)
            ran, context_tokens = True, self._step_context.pop(sid)
        s = self.sessions.get(sid)
        late = ran and s is not None and s.paused_at is not None  # its step ended before
        if ran and not late:  # an aborted step is no step done, nor a session's end
            self.order.step_finished(sid, last_step)
        if last_step:
            self.forget(sid)
            return []
        if not ran:
            if s is not None:
                self._undo_admission(sid, s, now)
            else:  # aborted while deferred: it no longer waits, but may be resent
                self._withdraw_wait(sid)
                self._shared.pop(sid, None)  # not admitted: nothing to keep for it
                if sid not in self._flights:  # (a riding step's last request withdrawn)
                    self._step_context.pop(sid, None)
            return []
        self.pauses.paused(sid, now)
        if s is None:  # e.g. it rode along unadmitted
            self._end_wait(sid, now)
            self._shared.pop(sid, None)
            return []
        s.resumed_from = None
        if late:  # part of the step that ended: nothing more to learn
            context_tokens = max(context_tokens, s.last_finish or 0)
        else:  # s.context: the prompt it was admitted on
            self._growth.finished(s.workflow, s.context, context_tokens, s.last_finish)
        s.context = s.last_finish = context_tokens
        s.paused_at, s.expected_s = now, expected_s
        return self._shrink()

    def _undo_admission(self, sid: str, s: _Admitted, now: float) -> None:
        """A step of admitted session `sid` (`s`) ended before vLLM allocated it (aborted
        while it waited for blocks), or was withdrawn (allocated, preempted, and aborted
        while requeued): no step ran, so nothing is learned, and unless another
        request of the session is in flight its admission is undone. A session that never
        completed a step is dropped (it holds nothing: it kept its prompt and growth
        reserved, a phantom, and a later session waited max_wait_s behind it); one that did
        is paused again as before the step's probe (its context, pause and hint)."""
        if sid in self._flights or s.paused_at is not None:
            return  # its running request's finish ends the step; or this one never resumed it
        self._step_context.pop(sid, None)  # (the step ran none of it)
        if s.last_finish is None:
            del self.sessions[sid]
            self._shared.pop(sid, None)  # (a later step of the id is a new session)
            return
        if s.resumed_from is not None:
            s.context, s.paused_at, s.expected_s = s.resumed_from
            s.resumed_from = None
        else:  # (not seen paused since it was admitted: paused from now)
            s.context, s.paused_at = s.last_finish, now

    def _shrink(self) -> list[str]:
        """Demote the most recently admitted paused sessions until the rest fit (with
        `shrink_horizon_steps` of growth)."""
        return shrink(self.sessions, reversed(list(self.sessions)),
                      lambda: self.committed(self.shrink_horizon_steps) > self.capacity,
                      lambda s: s.paused_at is not None, self._demote)

    def forget(self, sid: str) -> None:
        """The session is over (its last step, or the connector dropped it)."""
        self.sessions.pop(sid, None)
        self._shared.pop(sid, None)
        self._waiting_since.pop(sid, None)
        self._withdrawn_waits.pop(sid, None)
        self.pauses.forget(sid)
        self.order.forget(sid)
        self._step_context.pop(sid, None)
        for request_id in self._flights.pop(sid, ()):
            self._in_flight[request_id] = None  # still allocated, of no session now

    def new_step(self) -> None:
        """vLLM scheduled an engine step (the connector calls this once a step): waiting
        sessions vLLM has not asked about since the step before no longer hold others back."""
        self.order.new_step()

