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
input's next chunk) is left as vLLM handles it, unranked.

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
  finish demoted it, releasing the blocks it was about to hit.

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

import math
import time
from collections.abc import Callable
from typing import Any

from vllm.v1.core.sched.request_queue import SchedulingPolicy
from vllm.v1.core.sched.scheduler import Scheduler
from vllm.v1.request import Request

from kvsaga._validate import check_one_of
from kvsaga.integrations.vllm.connector import KVSagaConnector
from kvsaga.integrations.vllm.connector_config import SCHEDULER_ARGS, check_keys
from kvsaga.integrations.vllm.gate import SessionGate
from kvsaga.integrations.vllm.hints import step_info
from kvsaga.policy.bounded import TRACKED_WORKFLOWS, touch
from kvsaga.scheduler.admission_order import SessionLengths, order_key, predicted_cost

WORK_KINDS = ("tokens", "steps")
# Priority (milliseconds of arrival) an admitted session's step is moved ahead by
# (`admitted_first`): more than any rank spans (about 31,700 years of arrivals).
ADMITTED_AHEAD = 10**15


class SessionRanker:
    """Each session's steps begun and context growth, the lengths of the sessions that said
    they ended, and the priority of a session's next request (see the module docstring).
    Plain Python: the scheduler below feeds it."""

    TRACKED = 8192  # live sessions remembered (one that never says it ended is dropped)

    def __init__(self, aging_s: float = 60.0, prior_steps: float = 16.0,
                 prior_growth_tokens: float = 64.0, work: str = "steps") -> None:
        for name, v, low in (("aging_s", aging_s, 0.0), ("prior_steps", prior_steps, 1.0),
                             ("prior_growth_tokens", prior_growth_tokens, 0.0)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool)
                    and low <= v < math.inf and (name != "aging_s" or v > 0)):
                raise ValueError(f"scheduler_args {name} must be a finite number "
                                 f"{'> 0' if name == 'aging_s' else f'>= {low:g}'}, got {v!r}")
        check_one_of("scheduler_args work", work, WORK_KINDS)
        self.aging_s = float(aging_s)
        self.prior_steps = float(prior_steps)
        self.work = work
        self.lengths = SessionLengths()
        self.growth: dict[str, float] = {}  # workflow -> mean prompt growth a step
        self.seen: dict[str, int] = {}  # workflow -> growths observed
        self.prior_growth = float(prior_growth_tokens)
        self.live: dict[str, tuple[int, int]] = {}  # session -> (steps begun, last prompt)

    def priority(self, sid: str, workflow: str, prompt_tokens: int, last_step: bool,
                 now: float) -> int:
        """The priority of session `sid`'s step arriving `now` with `prompt_tokens` (no state
        changes: `record` the step once vLLM accepted it)."""
        done, last_prompt = self.live.get(sid, (0, 0))
        growth = self._growth(workflow, done, prompt_tokens, last_prompt)
        left = 1.0 if last_step else self.lengths.remaining(workflow, done, self.prior_steps)
        work = (left if self.work == "steps"
                else predicted_cost(left, prompt_tokens, growth))
        return self.rank(work, now)

    def _growth(self, workflow: str, done: int, prompt_tokens: int, last_prompt: int) -> float:
        """The workflow's mean prompt growth a step, with this step's counted when it follows
        one of the session's (the context grew by the reply and this message since)."""
        growth = self.growth.get(workflow, self.prior_growth)
        if not done:
            return growth
        n = self.seen.get(workflow, 0) + 1
        return growth + (max(prompt_tokens - last_prompt, 0) - growth) / n

    def rank(self, work: float, now: float) -> int:
        """The priority of `work` (predicted steps or token-steps) arriving `now`."""
        return round(1000 * self.aging_s * order_key(work, now, self.aging_s))

    def record(self, sid: str, workflow: str, prompt_tokens: int, last_step: bool) -> None:
        """Session `sid`'s step was accepted: count it and its context's growth (its
        session's length is learned when `last_step`)."""
        done, last_prompt = self.live.pop(sid, (0, 0))
        if done:
            growth = self._growth(workflow, done, prompt_tokens, last_prompt)
            n = self.seen.get(workflow, 0) + 1
            # Bounded: the TRACKED_WORKFLOWS most recently updated workflows keep their
            # growth (kvsaga/policy/bounded.py); a forgotten one starts again from the
            # prior, as a new one does.
            touch(self.growth, workflow, lambda: growth, TRACKED_WORKFLOWS,
                  lambda wf, _: self.seen.pop(wf, None))
            self.growth[workflow], self.seen[workflow] = growth, n
        if last_step:
            self.lengths.observe(workflow, done + 1)
        else:
            self.live[sid] = (done + 1, prompt_tokens)
            if len(self.live) > self.TRACKED:
                del self.live[next(iter(self.live))]


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
        self.admitted_first = args.pop("admitted_first", True)
        self.gate_arrivals = args.pop("gate_arrivals", True)
        for name, v in (("admitted_first", self.admitted_first),
                        ("gate_arrivals", self.gate_arrivals)):
            if not isinstance(v, bool):
                raise ValueError(f"scheduler_args {name} must be true or false, got {v!r}")
        self.ranker = SessionRanker(**args)
        # Seconds arrivals are ranked by; a replay on a simulated clock replaces it.
        self.clock: Callable[[], float] = time.monotonic
        # session -> ids of its requests accepted and maybe unfinished (`_same_step`)
        self._session_requests: dict[str, list[str]] = {}

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

    def _same_step(self, sid: str, request_id: str) -> bool:
        """Whether a request of session `sid` accepted before is still unfinished, so the
        new one (`request_id`) belongs to the same session step: vLLM's n > 1 children of
        one request (each child arrives here with the same hint), or a concurrent step. The
        ranker counts a step once: per child, a session's steps were counted n-fold and its
        growth learned as ~0 for the children after the first."""
        live = [r for r in self._session_requests.pop(sid, ())
                if (q := self.requests.get(r)) is not None and not q.is_finished()]
        same = bool(live)
        live.append(request_id)
        self._session_requests[sid] = live  # re-inserted last: oldest first
        if len(self._session_requests) > SessionRanker.TRACKED:
            del self._session_requests[next(iter(self._session_requests))]
        return same

    def add_request(self, request: Request) -> None:
        """Rank a new request (see the module docstring), then vLLM's own `add_request`; an
        id vLLM already holds goes to vLLM unranked, and nothing is recorded if vLLM raises.
        A step of a session the gate admitted goes ahead (`admitted_first`) and is reported
        to the gate (`gate_arrivals`)."""
        if request.request_id in self.requests:  # a streaming input's next chunk, or a clash
            super().add_request(request)
            return
        try:
            info = step_info(request.kv_transfer_params, getattr(request, "session_id", None))
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
            if not self._same_step(info.session_id, request.request_id):
                self.ranker.record(info.session_id, info.workflow, request.num_prompt_tokens,
                                   info.hint.last_step)
            kvsaga = self._kvsaga()
            if kvsaga is not None:  # a step queued: its session is not abandoned
                kvsaga.session_active(info.session_id, kvsaga.clock())
        if admitted and self.gate_arrivals:
            gate.arrived(info.session_id, request.num_prompt_tokens)
