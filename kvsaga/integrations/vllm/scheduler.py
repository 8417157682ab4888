"""`KVSagaScheduler`: vLLM's own Scheduler with agent sessions' requests ordered by kvsaga's
predicted remaining work, enabled by configuration only:

    --scheduler-cls kvsaga.integrations.vllm.scheduler.KVSagaScheduler
    --scheduling-policy priority

Why: on bench/vllm_scheduler_replay.py's calibrated workload, keeping every prefix hit in
vLLM's first-come-first-served order gains less than the same hits with the session nearest
its end first (bench/RESULTS.md, "every hit kept" against "+ clairvoyant order"). vLLM's
"priority" policy already orders its waiting queue by `Request.priority` (smallest first,
then arrival) and preempts the running request of the largest; what it lacks is a priority
that knows agent sessions. This subclass only sets that number when a request arrives
(`add_request`), for a session's request from what kvsaga's workflow scheduler ranks by
(`kvsaga.scheduler.admission_order`): the session's predicted remaining work, by default
its expected remaining steps (learned per workflow from sessions that ended with
`last_step`), with aging by arrival:

    priority = round(1000 * (aging_s * ln(predicted steps left) + arrival_s))

A factor e of predicted work is worth `aging_s` seconds of arrival, so the order is a
static key (vLLM's heap never needs re-sorting) and a request waits behind later arrivals
for at most aging_s x ln(MAX_COST) seconds' worth of them. A request outside any session is
ranked on the same scale, as one step of work arriving now (ln 1 = 0: round(1000 *
arrival_s)), so it neither jumps every session nor waits behind them all; a client's own
`priority` (vLLM's default 0) is added to either, as milliseconds of arrival. Everything
else is vLLM's: which requests fit, chunked prefill, the preemption mechanics (a running
request of the largest priority is preempted first, session or not); and the retention
connector, when on, decides what stays cached. A request id vLLM already holds (a streaming
input's next chunk) is left as vLLM handles it, unranked. A session's step whose every
request was aborted before it ran (waiting, or preempted and requeued) is taken back from
the ranker (`finish_requests`), as the connector's gate takes it back: the client's resend
is that step again, not the next.

With the retention connector's session gate on (its default), two more rules, each on by
default:

- `admitted_first`: a step of a session the gate has admitted (its context retained, the
  gate lets it in whatever the memory) goes ahead of every step of a session the gate has
  not, by `ADMITTED_AHEAD` milliseconds of priority; each group in the order above. vLLM
  asks about its waiting requests in priority order and stops at the first it cannot
  allocate, so a newcomer ranked ahead (fewer steps predicted) took the blocks the admitted
  session's step needed and its retained blocks stayed exposed to pressure meanwhile.
- `gate_arrivals`: the gate learns that an admitted session's step arrived when vLLM
  receives it (`SessionGate.arrived`), not at vLLM's first question about it. A step
  waiting unasked behind others looked paused, and the gate's shrink at another session's
  finish demoted it, releasing the blocks it was about to hit. Its pause ends there too,
  so the gate's expiry limit learns the tool's pause, not the pause and the queue wait.

On bench/vllm_scheduler_replay.py's calibrated workload (fit seeds 0-4, advance hints)
vLLM + connector + this scheduler without them lost fit seed 0 to the connector alone
(1.09x against 1.31x plain vLLM's mean TCT): a tie between steps arriving together, ordered
by predicted work instead of arrival, left one such step unasked while the shrink demoted
it, and the run went down another path (its big sessions admitted last, their steps alone
at the end). With both: 1.31, 1.35, 1.41, 1.52, 1.60x against the connector alone's
1.31, 1.29, 1.28, 1.42, 1.43x (bench/RESULTS.md, "KVSagaScheduler and the gate"). Behind
vLLM's CPU offload tier the same rules lost that seed (1.22x against 1.38x for the tier and
connector without this scheduler). On fresh seeds 96-98 neither held: 1.23x median against
the connector alone's 1.24x (bench/RESULTS.md, "Fresh seeds 96-98: KVSagaScheduler's
verdict"), so the scheduler is optional, not recommended.

Settings (all optional) come from the connector's `kv_connector_extra_config`
`"scheduler_args"`: `aging_s` (default 60), `prior_steps` (16), `prior_growth_tokens` (64),
`work` ("steps": remaining steps alone, the default; "tokens": remaining steps times the
context held over them, `predicted_cost`), `admitted_first` and `gate_arrivals` (true);
behind vLLM's MultiConnector (the CPU offload tier), from the kvsaga connector's part;
without a `--kv-transfer-config` at all, the defaults.
Defaults from bench/vllm_scheduler_replay.py's ttl+sched fit on fit seeds 0-4
(docs/integrations.md).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request, RequestStatus

from kvsaga.integrations.vllm.connector import KVSagaConnector
from kvsaga.integrations.vllm.connector_config import SCHEDULER_ARGS, check_keys
from kvsaga.integrations.vllm.gate import SessionGate
from kvsaga.integrations.vllm.hints import request_step_info
from kvsaga.integrations.vllm.session_ranker import (  # noqa: F401  (WORK_KINDS: re-exported)
    WORK_KINDS,
    Recorded,
    SessionRanker,
    scheduler_settings,
)

# Priority (milliseconds of arrival) an admitted session's step is moved ahead by
# (`admitted_first`): more than any rank spans (about 31,700 years of arrivals).
ADMITTED_AHEAD = 10**15


@dataclass(slots=True)
class _Step:
    """A session's step under way, as the ranker counted it."""

    requests: list[str]  # its requests' ids, oldest first (finished ones until the next)
    recorded: Recorded | None = None  # what the ranker learned; None once a request ran
    withdrawn: set[str] = field(default_factory=set)  # its requests aborted unrun


class KVSagaScheduler(Scheduler):
    """vLLM's Scheduler; a session's request gets `SessionRanker`'s priority on arrival."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.policy != SchedulingPolicy.PRIORITY:
            raise ValueError("KVSagaScheduler orders requests by priority: start vLLM with "
                             "--scheduling-policy priority")
        kv = self.vllm_config.kv_transfer_config
        extra = (kv.kv_connector_extra_config or {}) if kv is not None else {}
        kvsaga = self._kvsaga()
        # Behind vLLM's MultiConnector the settings sit in kvsaga's part; without a kvsaga
        # connector (the scheduler works alone too) the top-level ones, or the defaults.
        args = dict(kvsaga.scheduler_args if kvsaga is not None and "scheduler_args" not in extra
                    else extra.get("scheduler_args", {}))
        # (kvsaga's part was checked when its connector read it; the top-level one was not
        # when no kvsaga connector reads it: an unknown key failed in SessionRanker(**args))
        check_keys("scheduler_args", args, SCHEDULER_ARGS)
        flags, self.ranker = scheduler_settings(args)
        self.admitted_first, self.gate_arrivals = flags["admitted_first"], flags["gate_arrivals"]
        # Seconds arrivals are ranked by; a replay on a simulated clock replaces it.
        self.clock: Callable[[], float] = time.monotonic
        # session -> its latest step (`_join_step`), for TRACKED sessions, oldest first
        self._steps: dict[str, _Step] = {}

    def _kvsaga(self) -> KVSagaConnector | None:
        """The kvsaga connector, alone or inside vLLM's MultiConnector; None without one."""
        subs = getattr(self.connector, "sub_connectors", None)
        return next((c for c in (subs if subs is not None else [self.connector])
                     if isinstance(c, KVSagaConnector)), None)

    def _gate(self) -> SessionGate | None:
        """The kvsaga connector's session gate, or None: no kvsaga connector, or its
        admission off."""
        kvsaga = self._kvsaga()
        return None if kvsaga is None else kvsaga.gate

    def _join_step(self, sid: str, request_id: str) -> _Step | None:
        """Add request `request_id` of session `sid` to the session's step; returns the step
        when the request begins one (None: an earlier request of it is unfinished: vLLM's
        n > 1 children of one request, each arriving with the same hint, or a concurrent
        step). The ranker counts a step once: per child, a session's steps were counted
        n-fold and its growth learned as ~0 for the children after the first. An earlier
        entry of `request_id` itself is a finished request whose id the client reused: it
        was taken for this one, still unfinished (review s57 vtier: a session's step sent
        under its previous step's id was not counted)."""
        step = self._steps.pop(sid, None)
        live = []
        for r in step.requests if step is not None else ():
            q = self.requests.get(r) if r != request_id else None
            if q is not None and not q.is_finished():
                live.append(r)
            elif r not in step.withdrawn:  # finished, having run: the step ran
                step.recorded = None
        new = not live
        if new:
            step = _Step([])
        else:
            step.requests = live
            step.withdrawn.clear()  # (of the ids dropped: every withdrawn one has finished)
        step.requests.append(request_id)
        self._steps[sid] = step  # re-inserted last: oldest first
        if len(self._steps) > SessionRanker.TRACKED:
            del self._steps[next(iter(self._steps))]
        return step if new else None

    def add_request(self, request: Request) -> None:
        """Rank a new request (see the module docstring), then vLLM's own `add_request`; an
        id vLLM already holds goes to vLLM unranked, and nothing is recorded if vLLM raises.
        A step of a session the gate admitted goes ahead (`admitted_first`) and is reported
        to the gate (`gate_arrivals`)."""
        if request.request_id in self.requests:  # a streaming input's next chunk, or a clash
            super().add_request(request)
            return
        try:
            info = request_step_info(request)
        except ValueError:  # a malformed hint: ranked as no session (the connector logs it)
            info = None
        now, own = self.clock(), request.priority
        if info is None:
            request.priority = own + self.ranker.rank(1.0, now)
        else:
            request.priority = own + self.ranker.priority(
                info.session_id, info.workflow, request.num_prompt_tokens,
                info.hint.last_step, now)
        gate = self._gate() if info is not None else None
        admitted = gate is not None and info.session_id in gate.sessions
        if admitted and self.admitted_first:
            request.priority -= ADMITTED_AHEAD
        try:
            super().add_request(request)
        except BaseException:
            request.priority = own
            raise
        if info is not None:
            step = self._join_step(info.session_id, request.request_id)
            if step is not None:
                step.recorded = self.ranker.record(info.session_id, info.workflow,
                                                   request.num_prompt_tokens,
                                                   info.hint.last_step)
            kvsaga = self._kvsaga()
            if kvsaga is not None:  # a step queued: its session is not abandoned
                kvsaga.session_active(info.session_id, kvsaga.clock())
        if admitted and self.gate_arrivals:  # (on the gate's clock: the connector's)
            gate.arrived(info.session_id, request.num_prompt_tokens, self._kvsaga().clock())

    def finish_requests(self, request_ids: str | Iterable[str] | None,
                        finished_status: RequestStatus) -> list[Request]:
        """vLLM's own (a client's abort, most often); then a session's step whose every
        request ended before it ran is withdrawn from the ranker (`_withdraw`). Before it
        ran: not running and holding no computed token (waiting unallocated, or preempted
        and requeued: vLLM dropped what it computed), as the connector's gate counts a step
        (`SessionGate.finished`). Why: the ranker counted it at its arrival, so its resend
        counted a second step (review s57 vtier)."""
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        elif request_ids is not None:
            request_ids = list(request_ids)  # (read twice: an iterator once only)
        unrun = set()
        for r in self.requests if request_ids is None else request_ids:
            q = self.requests.get(r)
            if (q is not None and not q.is_finished() and q.status != RequestStatus.RUNNING
                    and not q.num_computed_tokens):
                unrun.add(r)
        finished = super().finish_requests(request_ids, finished_status)
        for q in finished:
            if q.request_id in unrun:
                self._withdraw(q, unrun)
        return finished

    def _withdraw(self, request: Request, unrun: Collection[str] = ()) -> None:
        """`request` ended before it ran: once no request of its step ran or is left to
        run, the ranker takes the step back (`SessionRanker.withdraw`). `unrun`: the ids of
        the same abort call that had not run; vLLM deleted them all before this runs, so a
        sibling among them must not read as one that ran and finished (n > 1 children are
        aborted in one call; review s57 diffvtier)."""
        try:
            info = request_step_info(request)
        except ValueError:  # (ranked as no session)
            return
        step = self._steps.get(info.session_id) if info is not None else None
        if step is None or request.request_id not in step.requests:
            return  # (no session, or its step no longer tracked)
        step.withdrawn.add(request.request_id)
        others = [r for r in step.requests if r not in step.withdrawn and r not in unrun]
        if any(q is None or q.is_finished() for q in map(self.requests.get, others)):
            step.recorded = None  # one of them ran and finished: the step ran
        if others or step.recorded is None:
            return  # (a request of it unfinished: it may run yet)
        self.ranker.withdraw(step.recorded)
        step.recorded = None
