"""The scheduler that `LLMEngine` and the simulator both drive. Pure Python, no torch.

Each batch step an executor (the engine runs the model; the simulator a cost model) calls
`schedule(now, executor)`; the scheduler decides which running steps compute how many
tokens under the token budget (chunked prefill), whom to preempt when blocks run out, and
which waiting steps to admit, and asks the executor to carry each decision out through
four calls (`Executor`). The executor runs the batch, and reports each finished step with
`finish`. The scheduler reads the cache through `KVCacheManager.lookup`, which changes
nothing, and `begin_step`s (through the executor) only the steps it admits.

Schedulers by name (`make_scheduler(name, manager, **params)`):

- `fcfs`: vLLM v1's rule. Requests are admitted in arrival order while the blocks for their
  prefix hits and first chunk are free or evictable (head-of-line blocking); when a running
  request cannot get a block, the newest running request is preempted (its full blocks stay
  cached) and requeued at the front; a step that preempted admits nobody.
- `workflow` (default): workflow-atomic admission. The unit is the agent session: a new
  session is admitted only while the predicted working sets of the admitted sessions
  (context + expected growth over their next steps) and its own fit the KV tiers; an
  admitted session keeps its place across tool calls, and its resumed steps go before any
  new session. A session paused far longer than predicted is demoted so others may enter.
  New sessions are ordered across tenants by Agent Fair Share (below), FIFO within one.

Agent Fair Share. Each tenant (the salt's owner; `None` is one tenant) has a weight (1 by
default) and a deficit. At each session admission, every backlogged tenant (one with a
session waiting for admission) is credited its weight share of that admission and the
admitted tenant is debited 1; the tenant with the largest deficit goes first (ties: the
oldest waiting session). Deficits restart at 0 whenever the backlogged set changes. Bound:
the deficits of the backlogged tenants sum to 0 and each stays above -1, so while the
backlogged set stays the same, every tenant's admissions differ from its weighted fair
share of all admissions by less than 1 below and by less than k - 1 above (k tenants):
for two tenants, by less than one session either way.

Bounded waiting (`workflow`): within a tenant sessions are admitted in order, except that
while the head of the chosen tenant does not fit, a session among the next
`backfill_window` behind it that fits may go first (backfilling: a short session is not held
behind a long one), at most `max_backfill` times ahead of one head; the head waits only for
admitted sessions to finish or be demoted (and is admitted whenever no session is admitted
at all), and by the bound above each backlogged tenant is chosen at least once every k
admissions; so a waiting session is admitted after finitely many admissions. Resumed
steps of admitted sessions go first, warm ones (context still resident) before cold ones,
but the head of their queue is bypassed at most `max_bypass` times.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kvsaga._validate import is_int, is_number
from kvsaga.errors import OutOfBlocks
from kvsaga.manager import KVCacheManager, StepLookup, StepStart


@runtime_checkable
class StepRequest(Protocol):
    """One LLM step of an agent session, as the scheduler sees it (engine and simulator
    requests both satisfy it).

    Attributes:
        session_id: the manager's session id.
        salt: tenant salt for prefix sharing (None: unsalted).
        workflow: workflow type (for the Agent Execution Graph and growth estimates).
        tenant: who is served (for Agent Fair Share); None is one default tenant.
        arrival: when this step was queued (seconds, the executor's clock).
        resumed: a later step of a session that already ran one (False: a new session).
        token_ids: the context the next `begin_step` gets: prompt plus tokens sampled so far.
        num_tokens: len(token_ids), without building it.
        max_num_tokens: the context length at which the step ends at the latest (prompt +
            output limit); admission reserves room towards it.
        block_hashes: optional cache of token_ids' full-block hashes (None: hashed by lookup).
    """

    session_id: str
    salt: str | None
    workflow: str
    tenant: str | None
    arrival: float
    resumed: bool

    @property
    def token_ids(self) -> Sequence[int]: ...

    @property
    def num_tokens(self) -> int: ...

    @property
    def max_num_tokens(self) -> int: ...


class Executor(Protocol):
    """What carries out the scheduler's decisions (the engine, or the simulator)."""

    def num_new_tokens(self, req: Any) -> int:
        """Tokens a running request computes before it samples next (the rest of its
        prompt, or 1 while decoding)."""

    def begin(self, req: Any, now: float) -> StepStart:
        """Open the admitted step: `manager.begin_step` with the request's context."""

    def allocate(self, req: Any, num_tokens: int, now: float) -> None:
        """KV slots for the request's next `num_tokens` tokens (`manager.allocate_slots`);
        raises OutOfBlocks having changed nothing the scheduler depends on."""

    def preempt(self, req: Any, now: float) -> None:
        """Take the running step's blocks back (`manager.preempt`); it will be begun again."""


@dataclass
class SchedulerOutput:
    """One batch step's decisions.

    Attributes:
        scheduled: (request, tokens to compute) in batch order: running requests first (in
            admission order), then the ones admitted in this step.
        admitted: requests begun in this step, in order.
        preempted: requests preempted in this step, in order (they are waiting again).
    """

    scheduled: list[tuple[Any, int]] = field(default_factory=list)
    admitted: list[Any] = field(default_factory=list)
    preempted: list[Any] = field(default_factory=list)


def _check_int(name: str, value: object, minimum: int) -> int:
    if not is_int(value) or value < minimum:
        raise ValueError(f"scheduler parameter {name} must be an integer >= {minimum}, "
                         f"got {value!r}")
    return value


def _check_float(name: str, value: object, minimum: float, *, strict: bool = False) -> float:
    ok = is_number(value) and not math.isnan(value)
    if not ok or value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise ValueError(f"scheduler parameter {name} must be a number {op} {minimum:g}, "
                         f"got {value!r}")
    return float(value)


class Scheduler:
    """Continuous batching over a `KVCacheManager`: the parts every scheduler shares.

    Subclasses decide the order of waiting steps (`_candidate`), what must fit besides the
    first chunk (`_fits`) and how waiting steps are queued (`_enqueue`).

    Args:
        manager: the KV cache manager (owns every block decision).
        max_num_seqs: most requests running at once.
        max_num_batched_tokens: token budget of one batch step (chunked prefill).
    """

    name = ""

    def __init__(self, manager: KVCacheManager, *, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192) -> None:
        if not isinstance(manager, KVCacheManager):
            raise ValueError(f"manager must be a KVCacheManager, got {type(manager).__name__}")
        self.manager = manager
        self.max_num_seqs = _check_int("max_num_seqs", max_num_seqs, 1)
        self.max_num_batched_tokens = _check_int(
            "max_num_batched_tokens", max_num_batched_tokens, 1)
        self.running: list[Any] = []  # in admission order: the newest is preempted first
        self.num_preemptions = 0

    # -- queueing (per scheduler) ---------------------------------------------------------
    @property
    def waiting(self) -> list[Any]:
        """The waiting requests, in the order they would be considered (roughly)."""
        raise NotImplementedError

    @property
    def num_waiting(self) -> int:
        raise NotImplementedError

    def _enqueue(self, req: Any, now: float, *, retry: bool) -> None:
        raise NotImplementedError

    def _dequeue(self, req: Any) -> bool:
        """Take a waiting request out of the queues; False if it was not there."""
        raise NotImplementedError

    def _candidate(self, now: float) -> Any | None:
        """The waiting request to admit next, or None to admit nobody more now."""
        raise NotImplementedError

    def _backfill(self, head: Any) -> Sequence[Any]:
        """Waiting requests that may be admitted instead of `head` when it does not fit
        (in order; none: head-of-line blocking)."""
        return ()

    def _fits(self, req: Any, lookup: StepLookup, end: int, now: float) -> bool:
        """Whether admitting `req` with slots up to `end` is allowed (blocks included)."""
        return lookup.blocks_to_admit(end) <= self.manager.pool.num_available

    def _admitted(self, req: Any, now: float, *, instead_of: Any = None) -> None:
        """`req` was begun (its candidate choice is final); `instead_of`: the candidate it
        was backfilled ahead of (None: it was the candidate)."""

    # -- the executor's calls -------------------------------------------------------------
    @property
    def wake_time(self) -> float:
        """When a waiting step may become admissible with nothing running and nothing
        arriving (inf: only an arrival or a finish can change the decision)."""
        return math.inf

    @property
    def has_work(self) -> bool:
        return bool(self.running) or self.num_waiting > 0

    def add(self, req: Any, now: float) -> None:
        """Queue a step (a new session's first, or a paused session's next)."""
        self._enqueue(req, now, retry=False)

    def finish(self, req: Any, now: float, *, ended: bool = False) -> None:
        """A step is done or aborted, running or waiting: forget it. Call after the
        manager's `finish_step` / `end_session`; `ended`: the session is over too."""
        if req in self.running:
            self.running.remove(req)
        else:
            self._dequeue(req)

    def forget_session(self, session_id: str, now: float) -> None:
        """The session left this scheduler while paused: it ended, or it moved to another
        GPU or replica (call after the manager's `end_session`). Whatever the scheduler
        keeps about it goes, so it holds no admission room here; a later step of it here
        is admitted afresh. Unknown sessions are ignored.

        Raises:
            ValueError: a step of the session is still waiting or running here (`finish`
                it first); nothing changed.
        """
        if any(r.session_id == session_id for r in self.running) or any(
                r.session_id == session_id for r in self.waiting):
            raise ValueError(f"session {session_id!r} still has a step waiting or running "
                             f"here; finish it before forgetting the session")

    def schedule(self, now: float, executor: Executor) -> SchedulerOutput:
        """Decide one batch step and have `executor` carry it out (begin, allocate,
        preempt); returns what to run."""
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            n = min(executor.num_new_tokens(req), budget)
            if not self._allocate(req, n, now, executor, out):
                break  # it preempted itself: everything after it is gone too
            out.scheduled.append((req, n))
            budget -= n
            i += 1
        # As vLLM: a step that had to preempt admits nobody.
        while (not out.preempted and budget > 0 and len(self.running) < self.max_num_seqs
               and self.num_waiting):
            n = self._admit(now, budget, executor, out)
            if not n:
                break
            budget -= n
        return out

    # -- mechanics ------------------------------------------------------------------------
    def lookup(self, req: Any) -> StepLookup:
        """What `begin_step` would find for the request now (no side effects)."""
        return self.manager.lookup(req.session_id, req.token_ids, salt=req.salt,
                                   block_hashes=getattr(req, "block_hashes", None))

    def _admit(self, now: float, budget: int, executor: Executor, out: SchedulerOutput) -> int:
        """Begin the next waiting request and allocate its first chunk, if it may go and
        fits; returns the chunk (0: it waits, nothing changed)."""
        head = self._candidate(now)
        if head is None:
            return 0
        for req in (head, *self._backfill(head)):
            lk = self.lookup(req)
            end = min(lk.num_prompt_tokens, lk.num_hit_block_tokens + budget)
            if self._fits(req, lk, end, now):
                break
        else:
            return 0
        self._dequeue(req)
        start = executor.begin(req, now)
        self.running.append(req)
        self._admitted(req, now, instead_of=None if req is head else head)
        # A reused tail may cover tokens past `end`: compute at least one token, inside
        # the tail's block, so that no block beyond the check is needed.
        n = max(end - start.num_cached_tokens, 1)
        try:
            executor.allocate(req, n, now)
        except OutOfBlocks as e:  # the check above promised room
            raise RuntimeError(f"admission of session {req.session_id!r} found no room for "
                               f"its first chunk: {e}") from e
        out.admitted.append(req)
        out.scheduled.append((req, n))
        return n

    def _allocate(self, req: Any, n: int, now: float, executor: Executor,
                  out: SchedulerOutput) -> bool:
        """Slots for a running request, preempting the newest until they fit; False if
        `req` itself was preempted."""
        while True:
            try:
                executor.allocate(req, n, now)
                return True
            except OutOfBlocks:
                victim = self.running.pop()
                executor.preempt(victim, now)
                self.num_preemptions += 1
                out.preempted.append(victim)
                self._enqueue(victim, now, retry=True)
                if victim is req:
                    return False


class FCFSScheduler(Scheduler):
    """vLLM v1's rule: request-level FCFS, admit while blocks are free, preempt the newest
    running request and recompute it (see the module docstring)."""

    name = "fcfs"

    def __init__(self, manager: KVCacheManager, **limits: Any) -> None:
        super().__init__(manager, **limits)
        self._queue: deque[Any] = deque()

    @property
    def waiting(self) -> list[Any]:
        return list(self._queue)

    @property
    def num_waiting(self) -> int:
        return len(self._queue)

    def _enqueue(self, req: Any, now: float, *, retry: bool) -> None:
        if retry:
            self._queue.appendleft(req)
        else:
            self._queue.append(req)

    def _dequeue(self, req: Any) -> bool:
        if self._queue and self._queue[0] is req:
            self._queue.popleft()
            return True
        try:
            self._queue.remove(req)
            return True
        except ValueError:
            return False

    def _candidate(self, now: float) -> Any | None:
        return self._queue[0]


class _Admitted:
    """An admitted session: what its working set is predicted from."""

    __slots__ = ("tenant", "workflow", "context", "shared", "steps", "active",
                 "last_context", "demote_at", "blocks")

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


class _Growth:
    """Mean context growth per step of one workflow: a plain mean over the first
    1 / alpha observations, an exponential moving average afterwards."""

    __slots__ = ("mean", "n")

    def __init__(self, prior: float) -> None:
        self.mean = prior
        self.n = 0

    def add(self, x: float, alpha: float) -> None:
        self.n += 1
        self.mean += (x - self.mean) / min(self.n, 1.0 / alpha)


class WorkflowScheduler(Scheduler):
    """Workflow-atomic admission with Agent Fair Share (see the module docstring).

    Args:
        manager, max_num_seqs, max_num_batched_tokens: as `Scheduler`.
        overcommit: admit while predicted working sets <= overcommit x (GPU + host blocks).
        horizon_steps: steps of expected growth counted in an admitted session's working
            set (fewer when the Agent Execution Graph expects the session to end sooner).
        prior_growth_tokens: context growth per step assumed for a workflow until one is
            observed (too small a guess is corrected by demotion, below).
        growth_alpha: weight of each new observed growth once 1 / growth_alpha were seen.
        demote_factor, demote_min_s: a paused admitted session whose pause exceeds
            demote_factor x its expected pause + demote_min_s is demoted when a waiting
            session does not fit (its blocks stay cached; its next step must be admitted
            again, ahead of its tenant's new sessions). Independently, whenever the
            admitted working sets outgrow the tiers, the most recently admitted paused
            sessions are demoted until they fit.
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
            small session is not held behind a large one (0: never).
        max_backfill: how many sessions may be backfilled ahead of one waiting session.
        idle_admit_s: once the batch has been empty this long with every admitted session
            away on a tool call, the next session is admitted even if the working sets do
            not fit (the GPU would idle; `inf`: never). Demotion then makes room.
        tenant_weights: Agent Fair Share weight per tenant (default 1 each).
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
        tenant_weights: Mapping[str | None, float] | None = None,
        **limits: Any,
    ) -> None:
        super().__init__(manager, **limits)
        self.overcommit = _check_float("overcommit", overcommit, 0.0, strict=True)
        self.horizon_steps = _check_float("horizon_steps", horizon_steps, 0.0)
        self.prior_growth_tokens = _check_int("prior_growth_tokens", prior_growth_tokens, 0)
        self.growth_alpha = _check_float("growth_alpha", growth_alpha, 0.0, strict=True)
        if self.growth_alpha > 1:
            raise ValueError(f"scheduler parameter growth_alpha must be in (0, 1], got "
                             f"{growth_alpha!r}")
        self.demote_factor = _check_float("demote_factor", demote_factor, 0.0)
        self.demote_min_s = _check_float("demote_min_s", demote_min_s, 0.0)
        self.default_pause_s = _check_float("default_pause_s", default_pause_s, 0.0)
        self.reserve_decode_tokens = _check_int("reserve_decode_tokens",
                                                reserve_decode_tokens, 0)
        self.admission_window = _check_int("admission_window", admission_window, 0)
        self.max_bypass = _check_int("max_bypass", max_bypass, 0)
        self.backfill_window = _check_int("backfill_window", backfill_window, 0)
        self.max_backfill = _check_int("max_backfill", max_backfill, 0)
        self.idle_admit_s = _check_float("idle_admit_s", idle_admit_s, 0.0)
        weights = dict(tenant_weights or {})
        for t, w in weights.items():
            _check_float(f"tenant_weights[{t!r}]", w, 0.0, strict=True)
        self.tenant_weights = weights
        self.capacity = manager.num_gpu_blocks + manager.num_host_blocks
        self.sessions: dict[str, _Admitted] = {}  # admitted sessions
        self._resumed: deque[Any] = deque()  # steps of admitted sessions (retries first)
        self._bypassed = 0  # warm steps admitted ahead of the resumed queue's current head
        self._head: Any = None
        self._backfill_head: Any = None  # the waiting session last backfilled ahead of
        self._backfilled = 0  # sessions admitted ahead of it
        self._retries: set[int] = set()  # preempted steps (by id): they keep their place
        self._pending: dict[str | None, deque[Any]] = {}  # per tenant: sessions to admit
        self.deficits: dict[str | None, float] = {}  # backlogged tenants' AFS deficits
        self._growth: dict[str, _Growth] = {}
        self._committed = 0  # sum of admitted sessions' working sets, blocks
        self._demote_at = math.inf  # no paused session is demotable before this
        self._idle_since: float | None = None  # the batch is empty and nobody resumed since
        self.num_demotions = 0
        self._deferred: set[str] = set()  # demoted sessions not admitted again yet

    # -- queues ---------------------------------------------------------------------------
    @property
    def waiting(self) -> list[Any]:
        out = list(self._resumed)
        for q in self._pending.values():
            out.extend(q)
        return out

    @property
    def num_waiting(self) -> int:
        return len(self._resumed) + sum(len(q) for q in self._pending.values())

    def _enqueue(self, req: Any, now: float, *, retry: bool) -> None:
        info = self.sessions.get(req.session_id)
        if info is not None:
            if retry:
                self._resumed.appendleft(req)
                self._retries.add(id(req))
            else:
                self._resumed.append(req)
                info.active = True
            return
        q = self._pending.get(req.tenant)
        if q is None:
            q = self._pending[req.tenant] = deque()
            self._backlog_changed()
        if req.resumed:
            q.appendleft(req)  # a demoted session's next step: its task is under way
        else:
            q.append(req)

    def _dequeue(self, req: Any) -> bool:
        self._retries.discard(id(req))
        if self._resumed and self._resumed[0] is req:
            self._resumed.popleft()
            return True
        if req in self._resumed:
            self._resumed.remove(req)
            return True
        q = self._pending.get(req.tenant)
        if q is None or req not in q:
            return False
        q.remove(req)
        if not q:
            del self._pending[req.tenant]
            self._backlog_changed()
        return True

    def _backlog_changed(self) -> None:
        """The set of backlogged tenants changed: their deficits restart (AFS)."""
        self.deficits = dict.fromkeys(self._pending, 0.0)

    @property
    def wake_time(self) -> float:
        if not self._pending:
            return math.inf
        idle = math.inf if self._idle_since is None else self._idle_since + self.idle_admit_s
        return min(self._demote_at, idle)

    # -- admission order ------------------------------------------------------------------
    def _candidate(self, now: float) -> Any | None:
        if self._resumed:
            return self._pick_resumed()
        if not self._pending:
            return None
        return self._pending[self._next_tenant()][0]

    def _backfill(self, head: Any) -> Sequence[Any]:
        """Sessions queued behind `head`, a session waiting for admission, in its tenant's
        queue (at most `backfill_window`, and none once `max_backfill` went ahead of it)."""
        q = self._pending.get(head.tenant)
        passed = self._backfilled if head is self._backfill_head else 0
        if not q or q[0] is not head or passed >= self.max_backfill:
            return ()
        return list(itertools.islice(q, 1, 1 + self.backfill_window))

    def _session_fits(self, req: Any, lookup: StepLookup, now: float) -> bool:
        """The session-level gate: admitting `req`'s session keeps the admitted working sets
        within the tiers (after demoting sessions away far too long), or nothing else is
        admitted, or the GPU has idled `idle_admit_s` with every admitted session away."""
        if not self.sessions:
            return True
        own = req.num_tokens - lookup.gpu_hit_blocks * self.manager.block_size
        need = self._working_set(req.workflow, own, 0)
        limit = self.overcommit * self.capacity
        if self._committed + need <= limit:
            return True
        self._demote(now)
        if not self.sessions or self._committed + need <= limit:
            return True
        return self._idle_long(now)

    def _idle_long(self, now: float) -> bool:
        """Whether the batch has been empty, with no admitted session's step waiting (the
        admitted sessions all away on tool calls), for `idle_admit_s` up to `now`. Compared
        as `wake_time` computes it, so that waking at that time admits (no float drift)."""
        if self.running or self._resumed:
            self._idle_since = None
            return False
        if self._idle_since is None:
            self._idle_since = now
        return now >= self._idle_since + self.idle_admit_s

    def _pick_resumed(self) -> Any:
        """The head of the resumed queue, or a warm step among the first
        `admission_window` (at most `max_bypass` times ahead of one head)."""
        head = self._resumed[0]
        if head is not self._head:
            self._head, self._bypassed = head, 0
        if id(head) in self._retries or self._bypassed >= self.max_bypass or self._is_warm(head):
            return head
        for i in range(1, min(self.admission_window, len(self._resumed))):
            if self._is_warm(self._resumed[i]):
                return self._resumed[i]
        return head

    def _is_warm(self, req: Any) -> bool:
        """Whether most of a paused session's context is still on the GPU: the block at
        the middle of its prompt is resident (policies evict tails first, so the head up to
        it almost surely is too). O(1), unlike a lookup."""
        s = self.manager.sessions.get(req.session_id)
        if s is None:
            return False
        mid = req.num_tokens // (2 * self.manager.block_size)
        return mid < len(s.block_hashes) and self.manager.index.get(s.block_hashes[mid]) is not None

    def _next_tenant(self) -> str | None:
        """The backlogged tenant with the largest AFS deficit (ties: oldest head)."""
        if len(self._pending) == 1:
            return next(iter(self._pending))
        d = self.deficits
        return max(self._pending, key=lambda t: (d[t], -self._pending[t][0].arrival))

    def _weight(self, tenant: str | None) -> float:
        return self.tenant_weights.get(tenant, 1.0)

    # -- working sets ---------------------------------------------------------------------
    def _growth_of(self, workflow: str) -> _Growth:
        g = self._growth.get(workflow)
        if g is None:
            g = self._growth[workflow] = _Growth(float(self.prior_growth_tokens))
        return g

    def _graph(self):
        return getattr(self.manager.policy, "graph", None)

    def _working_set(self, workflow: str, context: int, steps_done: int) -> int:
        """Blocks a session is predicted to hold over its next steps: its own context (not
        a prefix shared with others) plus the workflow's mean growth per step over
        `horizon_steps` steps (fewer when the Agent Execution Graph expects fewer steps
        left), capped at the tiers' capacity."""
        horizon = self.horizon_steps
        graph = self._graph()
        if graph is not None:
            horizon = min(horizon, max(graph.mean_steps(workflow) - steps_done, 1.0))
        tokens = context + horizon * self._growth_of(workflow).mean
        return min(-(-int(tokens) // self.manager.block_size), self.capacity)

    def _shared_tokens(self, sid: str) -> int:
        """Tokens of the session's context held in leading blocks that other sessions share
        (a common prefix): they are counted once, not in each session's working set."""
        m = self.manager
        get, owner = m.index.get, m.block_owner
        n = 0
        for h in m.sessions[sid].block_hashes:
            b = get(h)
            if b is None or owner[b] is not None:
                break
            n += 1
        return n * m.block_size

    def _set_blocks(self, info: _Admitted) -> None:
        new = self._working_set(info.workflow, info.context - info.shared, info.steps)
        self._committed += new - info.blocks
        info.blocks = new

    def _admitted(self, req: Any, now: float, *, instead_of: Any = None) -> None:
        if instead_of is not None:
            if instead_of is not self._backfill_head:
                self._backfill_head, self._backfilled = instead_of, 0
            self._backfilled += 1
        if self._resumed and req is not self._head and self._head is self._resumed[0]:
            self._bypassed += 1  # a warm step went ahead of the head
        sid = req.session_id
        info = self.sessions.get(sid)
        if info is None:  # a session admission: charge its tenant (AFS)
            self._charge(req.tenant)
            if sid in self._deferred:
                self._set_deferred(sid, False, now)
            info = self.sessions[sid] = _Admitted(req.tenant, req.workflow, req.num_tokens)
            info.shared = self._shared_tokens(sid)
        info.context = max(info.context, req.num_tokens)
        info.active = True
        info.demote_at = math.inf
        self._set_blocks(info)

    def _charge(self, tenant: str | None) -> None:
        d = self.deficits
        if tenant not in d:
            return
        total = sum(self._weight(t) for t in d)
        for t in d:
            d[t] += self._weight(t) / total
        d[tenant] -= 1.0

    def finish(self, req: Any, now: float, *, ended: bool = False) -> None:
        super().finish(req, now, ended=ended)
        sid = req.session_id
        info = self.sessions.get(sid)
        if info is None:
            return
        s = self.manager.sessions.get(sid)
        if ended or s is None:
            self._forget(sid)
            return
        info.steps += 1
        context = req.num_tokens
        if info.last_context is not None:
            self._growth_of(info.workflow).add(context - info.last_context, self.growth_alpha)
        info.last_context = context
        info.context = context
        info.shared = self._shared_tokens(sid)
        info.active = False
        info.demote_at = now + self.demote_factor * self._expected_pause(s) + self.demote_min_s
        self._demote_at = min(self._demote_at, info.demote_at)
        self._set_blocks(info)
        self._shrink(now)

    def forget_session(self, session_id: str, now: float) -> None:
        super().forget_session(session_id, now)
        self._deferred.discard(session_id)
        if session_id in self.sessions:
            self._forget(session_id)

    def _shrink(self, now: float) -> None:
        """While the admitted working sets outgrow the tiers (contexts grew more than
        predicted), demote the most recently admitted paused sessions: their next steps
        wait for room instead of evicting the older sessions' contexts."""
        limit = self.overcommit * self.capacity
        if self._committed <= limit:
            return
        for sid in reversed(list(self.sessions)):
            if self._committed <= limit or len(self.sessions) == 1:
                return
            if not self.sessions[sid].active:
                self._demote_session(sid, now)

    def _forget(self, sid: str) -> None:
        info = self.sessions.pop(sid)
        self._committed -= info.blocks
        self._deferred.discard(sid)

    def _demote_session(self, sid: str, now: float) -> None:
        """Demote a paused admitted session, and tell the policy that its blocks are needed
        only after it is admitted again (`EvictionPolicy.session_deferred`)."""
        self._forget(sid)
        self.num_demotions += 1
        self._set_deferred(sid, True, now)

    def _set_deferred(self, sid: str, deferred: bool, now: float) -> None:
        s = self.manager.sessions.get(sid)
        if s is None:
            return
        if deferred:
            self._deferred.add(sid)
        else:
            self._deferred.discard(sid)
        self.manager.policy.session_deferred(s, deferred, now)

    def _demote(self, now: float) -> None:
        """Demote admitted sessions paused far longer than predicted (and forget those
        ended behind the scheduler's back), so that waiting sessions may be admitted."""
        if now < self._demote_at:
            return
        self._demote_at = math.inf
        sessions = self.manager.sessions
        for sid, info in list(self.sessions.items()):
            if info.active:
                continue
            if sid not in sessions:
                self._forget(sid)
            elif now >= info.demote_at:
                self._demote_session(sid, now)
            else:
                self._demote_at = min(self._demote_at, info.demote_at)

    def _expected_pause(self, s) -> float:
        """Seconds the session's pause is expected to last: its hint, else the Agent
        Execution Graph's prediction (the median pause of its tool), else the default."""
        hint = s.hint
        if hint is not None and hint.expected_s is not None:
            return hint.expected_s
        graph = self._graph()
        if graph is not None:
            return graph.predict(s.workflow, hint.tool if hint else None, 0.0).expected_s
        return self.default_pause_s

    # -- block-level check ----------------------------------------------------------------
    def _fits(self, req: Any, lookup: StepLookup, end: int, now: float) -> bool:
        available = self.manager.pool.num_available
        if lookup.blocks_to_admit(end) > available:
            return False
        if req.session_id not in self.sessions and not self._session_fits(req, lookup, now):
            return False
        if self.running and self.reserve_decode_tokens:
            # The whole prompt and some decode headroom, for it and for every running step:
            # admitting what the pool cannot carry to completion only defers a preemption.
            # With nothing running the first chunk suffices (progress is guaranteed).
            full = lookup.blocks_to_admit(self._reserve_target(req, req.num_tokens))
            if full + self._running_reserve() > available:
                return False
        return True

    def _reserve_target(self, req: Any, context: int) -> int:
        """Tokens a step holds after `reserve_decode_tokens` more decode tokens (never past
        its output limit)."""
        last = req.max_num_tokens - 1  # the last output is not fed back
        return max(context, min(context + self.reserve_decode_tokens, last))

    def _running_reserve(self) -> int:
        """Blocks the running steps will take soon: the rest of each prompt and its next
        `reserve_decode_tokens` decode tokens."""
        bs = self.manager.block_size
        sessions = self.manager.sessions
        total = 0
        for r in self.running:
            held = len(sessions[r.session_id].block_ids)
            total += max(0, -(-self._reserve_target(r, r.num_tokens) // bs) - held)
        return total


SCHEDULERS: dict[str, type[Scheduler]] = {
    cls.name: cls for cls in (FCFSScheduler, WorkflowScheduler)
}
DEFAULT_SCHEDULER = "workflow"


def make_scheduler(name: str, manager: KVCacheManager, **params: Any) -> Scheduler:
    """Build a scheduler by name.

    Args:
        name: a `SCHEDULERS` name ("fcfs", "workflow").
        manager: the KV cache manager it schedules over.
        params: `max_num_seqs`, `max_num_batched_tokens`, and the scheduler's own
            parameters (see its class).
    Raises:
        ValueError: an unknown name (listing the known ones), an unknown parameter (listing
            the scheduler's), or a bad value (naming it).
    """
    cls = SCHEDULERS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    known = scheduler_params(name)
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"scheduler {name!r} has no parameter {unknown[0]!r}; its "
                         f"parameters: {', '.join(known)}")
    return cls(manager, **params)


def scheduler_params(name: str) -> list[str]:
    """The parameter names `make_scheduler(name, ...)` accepts."""
    cls = SCHEDULERS[name]
    names = ["max_num_seqs", "max_num_batched_tokens"]
    for p in inspect.signature(cls.__init__).parameters.values():
        if p.kind is p.KEYWORD_ONLY:
            names.append(p.name)
    return names
