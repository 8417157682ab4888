"""The mechanics every scheduler shares: the request and executor protocols, one batch
step's output, and `Scheduler` (continuous batching, chunked prefill, preemption of the
newest, admission through a side-effect-free `KVCacheManager.lookup`). See the package
docstring (`kvsaga.scheduler`) for the schedulers built on it."""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kvsaga._validate import check_one_of, check_time, is_int, is_number
from kvsaga.errors import InvalidRequest, OutOfBlocks
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


# Upper bounds far above any sane value, so that a huge one (it may come through
# `scheduler_params` JSON) is refused naming the parameter instead of crashing mid-run.
# MAX_COUNT (windows, token counts): a window wider than any queue tries every waiting
# session, a cap above any prompt caps nothing; `islice` refuses a stop above sys.maxsize
# (2**31 - 1 on 32-bit builds) and token counts are scaled in floats (`decode_stall`,
# `working_set`).
# MAX_HORIZON_STEPS (`horizon_steps`): a billion steps of growth is beyond any session's
# length, and times a growth below MAX_COUNT tokens the product stays finite
# (`working_set`).
MAX_COUNT = 2**31 - 1
MAX_HORIZON_STEPS = 1e9


def _shown(value: object) -> str:
    """`value` for an error message: its repr, or its size for an int too long to print
    (Python refuses to print an int of over 4300 digits)."""
    if is_int(value) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    return repr(value)


def check_int(name: str, value: object, minimum: int, maximum: int | None = None) -> int:
    """`value`, an int within [minimum, maximum]; the error names the bound it broke."""
    if is_int(value) and maximum is not None and value > maximum:
        raise ValueError(f"scheduler parameter {name} must be an integer <= {maximum}, "
                         f"got {_shown(value)}")
    if not is_int(value) or value < minimum:
        raise ValueError(f"scheduler parameter {name} must be an integer >= {minimum}, "
                         f"got {_shown(value)}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"scheduler parameter {name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: object, choices: Collection[str]) -> str:
    """`value` when it is one of `choices` (names, listed in the error as given)."""
    return check_one_of(f"scheduler parameter {name}", value, choices)


def check_float(name: str, value: object, minimum: float, *, strict: bool = False,
                finite: bool = False, maximum: float = math.inf) -> float:
    """`value` as a float within its bounds; the error names the bound it broke. An int
    beyond float range is refused too (it raised OverflowError here, naming nothing)."""
    try:
        x = float(value) if is_number(value) else math.nan
    except OverflowError:
        raise ValueError(f"scheduler parameter {name} must be a number within float range, "
                         f"got {_shown(value)}") from None
    ok = not math.isnan(x) and not (finite and math.isinf(x))
    if ok and x > maximum:
        raise ValueError(f"scheduler parameter {name} must be a number <= {maximum:g}, "
                         f"got {_shown(value)}")
    if not ok or x < minimum or (strict and x == minimum):
        op = ">" if strict else ">="
        raise ValueError(f"scheduler parameter {name} must be a {'finite ' if finite else ''}"
                         f"number {op} {minimum:g}, got {_shown(value)}")
    return x


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
        self.max_num_seqs = check_int("max_num_seqs", max_num_seqs, 1)
        self.max_num_batched_tokens = check_int(
            "max_num_batched_tokens", max_num_batched_tokens, 1)
        self.running: list[Any] = []  # in admission order: the newest is preempted first
        self._live: dict[str, Any] = {}  # session id -> its step waiting or running here
        self.num_preemptions = 0
        # Lookups of waiting requests at the manager's current cache_version, by id(req).
        self._lookups: dict[int, tuple[Any, int, StepLookup]] = {}
        self._lookup_version: tuple[int, int] | None = None
        # The last attempt's steps looked up: (request, lookup, chunk limit, block hashes).
        self._asked: list[tuple[Any, StepLookup, int, Any]] = []
        self._asked_head: Any = None  # and its candidate
        self._asked_graph: Any = None  # and the policy's graph then (`_graph`)
        # The last `schedule`'s chunks, by id(req): what `discard` may take back.
        self._last_scheduled: dict[int, tuple[Any, int]] = {}

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

    def _dequeue(self, req: Any, now: float) -> bool:
        """Take a waiting request out of the queues at `now`; False if it was not there."""
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

    def _grant(self, req: Any, n: int) -> int:
        """Tokens a running request computes in this step, of the `n` the budget leaves it
        (0: it sits the step out); all of them here (Agent Fair Share of compute may cut a
        prefill chunk: `fair_share.ComputeShares`)."""
        return n

    def _kept_behind(self, req: Any) -> int:
        """Tokens of this step's budget that the running prefill `req`'s chunk leaves for
        requests queued behind it (none here: the running queue's order, vLLM's; Agent Fair
        Share keeps one per other tenant's decode: `fair_share.ComputeShares`)."""
        return 0

    def _ungrant(self, req: Any, n: int) -> None:
        """The `n` tokens `_grant` just gave the running request `req` are not computed:
        its allocation preempted it. What `_grant` billed for them is taken back (nothing
        here). The step's other grants end there, and it admits nobody, so what `_grant`
        took of the step's own allowances need not be given back."""

    def _uncharge(self, chunks: list[tuple[Any, int]]) -> None:
        """The last `schedule`'s `chunks` ((request, tokens), running requests) were not
        computed (`discard`): take back what `_grant` or `_charge_chunk` counted for them
        beyond the step, so the accounting reads as if they had not been scheduled
        (nothing here). The step's own allowances are over: they need no giving back."""

    def _chunk_limit(self, req: Any, budget: int) -> int:
        """Most tokens a waiting request's first chunk may take of the `budget` left
        (0: it is not admitted in this step)."""
        return budget

    def _charge_chunk(self, req: Any, n: int) -> None:
        """An admitted request's first chunk of `n` tokens was allocated."""

    def _admitted(self, req: Any, now: float, *, instead_of: Any = None) -> None:
        """`req` was begun (its candidate choice is final); `instead_of`: the candidate it
        was backfilled ahead of (None: it was the candidate)."""

    # -- the executor's calls -------------------------------------------------------------
    @property
    def wake_time(self) -> float:
        """When a waiting step may become admissible with nothing running and nothing
        arriving (inf: only an arrival or a finish can change the decision)."""
        return math.inf

    def refusal_until(self, now: float) -> float:
        """After an `admit_waiting` at `now` that admitted nobody: the time before which
        another call would admit nobody too, and change nothing a repeat of this one does
        not (no demotion), while the manager's `cache_version`, the pool's blocks and the
        running requests stay as they are but for their contexts growing by decode (a
        simulator's decode run skips the checks until then). The rule here reads blocks,
        not the time (inf); a scheduler whose admissions depend on the time says when."""
        return math.inf

    def refusal_stands(self, now: float, evicted: list[tuple[int, bytes | None, int]]) -> bool:
        """After an `admit_waiting` that admitted nobody, with its `refusal_until` not
        reached: whether another call now would refuse too and change nothing a repeat of
        it does not, when since the refusal the cache changed only by the evictions
        `evicted` (`KVCacheManager.journal`: each made room for a decode block), blocks
        registered in the prefix index and the running steps' decode blocks. The candidate
        must be the same (`_candidate` may read the cache), every lookup the refusal made
        must be known now (`KVCacheManager.lookup_after`: as it was, or less its last hits;
        a request without `block_hashes`: unknown), and `_refusal_kept` must say yes. The
        refusal then goes on with those lookups. The policy's graph (`_graph`: a
        scheduler may read its predictions) must be the same object too: an adaptive
        policy may switch leaders, and graphs, while it chooses victims."""
        if self._graph() is not self._asked_graph:
            return False  # a policy switched graphs in an eviction: predictions differ
        if self.num_waiting and self._candidate(now) is not self._asked_head:
            return False
        after = self.manager.lookup_after
        asked = []
        for req, found, limit, hashes in self._asked:
            if hashes is None:  # the list only grows: kept while the refusal goes on
                hashes = getattr(req, "block_hashes", None)
            found = None if hashes is None else after(req.session_id, found, hashes, evicted)
            if found is None:
                return False
            asked.append((req, found, limit, hashes))
        if not self._refusal_kept(asked):
            return False
        self._asked = asked
        return True

    def _refusal_kept(self, asked: list[tuple[Any, StepLookup, int, Any]]) -> bool:
        """`refusal_stands`' last word, given the refused steps, their lookups now and
        their chunk limits: here yes, as `_fits` only gets harder. Each free-or-evictable
        block fell by one per decode block; a step whose last k hits were evicted (each for
        a decode block) needs at most k fewer blocks for its first chunk (k fewer cached
        hits to take, up to k more blocks to fill), never fewer than the pool lost."""
        return True

    @staticmethod
    def _first_end(lookup: StepLookup, limit: int) -> int:
        """Where the first chunk of a step with `lookup`'s hits ends, `limit` tokens at most."""
        return min(lookup.num_prompt_tokens, lookup.num_hit_block_tokens + limit)

    @property
    def has_work(self) -> bool:
        return bool(self.running) or self.num_waiting > 0

    def add(self, req: Any, now: float) -> None:
        """Queue a step (a new session's first, or a paused session's next).

        Raises:
            InvalidRequest: `now` not a finite number within +-`MAX_TIME_S`, a session id
                not a non-empty str, a step's `arrival` not a finite number (bool
                refused) within +-`MAX_TIME_S` (the workflow scheduler's reserve deadline,
                wait statistics and aging read it: a NaN one turned bounded waiting off,
                review s50 scheduler 1), a step of the session already waiting or running
                here (it would be begun while the other holds the session open), or a
                prompt needing more blocks than the pool has (`_check_fits`); nothing
                changed.
        """
        check_time("now", now, InvalidRequest)
        sid = getattr(req, "session_id", None)
        if not isinstance(sid, str) or not sid:
            raise InvalidRequest(f"a step's session_id must be a non-empty str, got {sid!r}")
        check_time(f"session {sid!r}: the step's arrival", getattr(req, "arrival", None),
                   InvalidRequest)
        if self._live_step(sid) is not None:
            raise InvalidRequest(f"session {sid!r} already has a step waiting or running "
                                 f"here; finish it before adding the next")
        self._check_fits(req)
        self._enqueue(req, now, retry=False)
        self._live[sid] = req

    def _check_fits(self, req: Any) -> None:
        """Refuse a step whose prompt needs more blocks than the pool has, as the manager
        does when it is begun. Queued, it could never run, and every `schedule` raised on
        its lookup: no other step was served, and one begun in the same call never reached
        the output (review s47 sched 4)."""
        m = self.manager
        need = m.spec.num_blocks_for(max(req.num_tokens, 1))
        if need > m.pool.num_blocks:
            raise InvalidRequest(f"session {req.session_id!r}: prompt of {req.num_tokens} "
                                 f"tokens needs {need} blocks; the pool has only "
                                 f"{m.pool.num_blocks}")

    def finish(self, req: Any, now: float, *, ended: bool = False) -> bool:
        """A step is done or aborted, running or waiting: forget it. Call after the
        manager's `finish_step` / `end_session`; `ended`: the session is over too. True
        when it was running (False: it was cancelled while it waited)."""
        check_time("now", now, InvalidRequest)
        if self._live.get(req.session_id) is req:
            del self._live[req.session_id]
        got = self._last_scheduled.get(id(req))
        if got is not None and got[0] is req:  # computed: no longer `discard`'s to take back
            del self._last_scheduled[id(req)]
        if req in self.running:
            self.running.remove(req)
            return True
        self._dequeue(req, now)
        return False

    def forget_session(self, session_id: str, now: float) -> None:
        """The session left this scheduler while paused: it ended, or it moved to another
        GPU or replica (call after the manager's `end_session`). Whatever the scheduler
        keeps about it goes, so it holds no admission room here; a later step of it here
        is admitted afresh. Unknown sessions are ignored.

        Raises:
            ValueError: a step of the session is still waiting or running here (`finish`
                it first); nothing changed.
        """
        check_time("now", now, InvalidRequest)
        if self._live_step(session_id) is not None:
            raise ValueError(f"session {session_id!r} still has a step waiting or running "
                             f"here; finish it before forgetting the session")

    def _live_step(self, session_id: Any) -> Any:
        """The session's step waiting or running here (None: none). A step taken out of
        the queues by `_dequeue` alone (not `finish`) is found gone here and dropped."""
        req = self._live.get(session_id) if isinstance(session_id, str) else None
        if req is None:
            return None
        if any(r is req for r in self.running) or any(r is req for r in self.waiting):
            return req
        del self._live[session_id]
        return None

    def schedule(self, now: float, executor: Executor) -> SchedulerOutput:
        """Decide one batch step and have `executor` carry it out (begin, allocate,
        preempt); returns what to run."""
        check_time("now", now, InvalidRequest)  # (`DecodeStall` checks it first too)
        self._last_scheduled = {}
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            need = executor.num_new_tokens(req)
            want = min(need, budget)
            if need > 1:  # a prefill chunk leaves the room `_kept_behind` keeps
                kept = self._kept_behind(req)
                if kept:
                    # Checked whatever the budget left (want 1: a later prefill took the
                    # token kept for a decode behind it); a chunk cut below two tokens
                    # sits the step out, as one token would pass `_grant` as a decode's:
                    # unbilled and uncapped (review s57 diffnoisy F1, F2).
                    want = min(want, budget - kept)
                    if want < 2:
                        want = 0
            n = self._grant(req, want)
            if need and not n:  # its tenant's compute share is spent in this step
                i += 1
                continue
            if not self._allocate(req, n, now, executor, out):
                self._ungrant(req, n)  # it computes nothing in this step
                break  # it preempted itself: everything after it is gone too
            out.scheduled.append((req, n))
            budget -= n
            i += 1
        # As vLLM: a step that had to preempt admits nobody.
        if not out.preempted:
            self.admit_waiting(now, budget, executor, out)
        self._last_scheduled = {id(req): (req, n) for req, n in out.scheduled}
        return out

    def discard(self, chunks: Sequence[tuple[Any, int]]) -> None:
        """The batch step's forward pass failed: `chunks`, (request, tokens) pairs of the
        last `schedule`'s `SchedulerOutput.scheduled`, were not computed. What the scheduler
        counted for them when it granted them (Agent Fair Share's compute service, the
        prefill cap's tokens left to recompute) is taken back, so a tenant is not held back
        for work it never got; the requests stay running, and a later step schedules the
        same tokens again (the executor takes their slots back: `discard_writes`).
        Admissions stand: a request begun in the step stays begun, as in the manager.

        Raises:
            ValueError: a pair that is not one of the last `schedule`'s chunks (none since
                `finish`, `admit_waiting` or `decode_run_starts`), or one given twice;
                nothing changed.
        """
        seen: set[int] = set()
        for pair in chunks:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise ValueError(f"discard: chunks must be (request, tokens) pairs, got "
                                 f"{pair!r}")
            req, n = pair
            got = self._last_scheduled.get(id(req))
            if got is None or got[0] is not req or got[1] != n or id(req) in seen:
                sid = getattr(req, "session_id", req)
                raise ValueError(f"discard: ({sid!r}, {n!r}) is not a chunk of the last "
                                 f"schedule still to discard")
            seen.add(id(req))
        if not seen:
            return
        self._uncharge([self._last_scheduled.pop(i) for i in seen])

    def decode_run_starts(self, now: float) -> None:
        """A simulator's decode run (batch steps in which every running request decodes,
        taken without `schedule`) starts at `now`: bring what `schedule` keeps from one
        step to the next up to date as its call at the run's first step would (the set of
        running and waiting requests stays the same through the run, so later steps would
        change nothing more). Nothing here; Agent Fair Share of compute records the
        competing tenants (`fair_share.ComputeShares`)."""
        self._last_scheduled = {}

    def admit_waiting(self, now: float, budget: int, executor: Executor,
                      out: SchedulerOutput) -> None:
        """`schedule`'s admissions, once the running requests have their tokens: begin
        waiting requests (into `out`) while the token budget left and `max_num_seqs` allow.
        A simulator's decode run calls it alone at a step whose running requests only
        decode (their `allocate(req, 1)` calls made), to take exactly `schedule`'s
        decisions there without its per-request loop."""
        self._last_scheduled = {}  # (inside `schedule`, set again as it returns)
        self._asked, self._asked_head, self._asked_graph = [], None, self._graph()
        while budget > 0 and len(self.running) < self.max_num_seqs and self.num_waiting:
            n = self._admit(now, budget, executor, out)
            if not n:
                break
            budget -= n

    # -- mechanics ------------------------------------------------------------------------
    def _graph(self) -> Any:
        """The policy's Agent Execution Graph, if it keeps one (None otherwise)."""
        return getattr(self.manager.policy, "graph", None)

    def lookup(self, req: Any) -> StepLookup:
        """What `begin_step` would find for the request now (no side effects). A waiting
        request asked about again before the manager's cache changed (its `cache_version`)
        gets the answer it got, without a new lookup of its whole prompt."""
        version = self.manager.cache_version
        if version != self._lookup_version:
            self._lookups.clear()
            self._lookup_version = version
        kept = self._lookups.get(id(req))
        if kept is not None and kept[0] is req and kept[1] == req.num_tokens:
            return kept[2]
        lk = self.manager.lookup(req.session_id, req.token_ids, salt=req.salt,
                                 block_hashes=getattr(req, "block_hashes", None))
        self._lookups[id(req)] = (req, req.num_tokens, lk)
        return lk

    def _admit(self, now: float, budget: int, executor: Executor, out: SchedulerOutput) -> int:
        """Begin the next waiting request and allocate its first chunk, if it may go and
        fits; returns the chunk (0: it waits, nothing changed)."""
        head = self._asked_head = self._candidate(now)
        if head is None:
            return 0
        for req in (head, *self._backfill(head)):
            limit = self._chunk_limit(req, budget)
            if not limit:
                continue
            lk = self.lookup(req)
            self._asked.append((req, lk, limit, None))
            end = self._first_end(lk, limit)
            if self._fits(req, lk, end, now):
                break
        else:
            return 0
        start = executor.begin(req, now)  # first: if it raises, the step stays queued
        self._dequeue(req, now)
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
        self._charge_chunk(req, n)
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
                try:
                    executor.preempt(victim, now)
                except BaseException:
                    self._preempt_raised(victim, now, out)
                    raise
                self.num_preemptions += 1
                out.preempted.append(victim)
                self._enqueue(victim, now, retry=True)
                if victim is req:
                    return False

    def _preempt_raised(self, victim: Any, now: float, out: SchedulerOutput) -> None:
        """`executor.preempt(victim)` raised (a policy hook, an interrupt): the request is
        kept, as the manager left its session. The manager's `preempt` raises either with
        nothing done (the session still running: refused, or cut before the release) or
        after the preempt (paused, its table released: a raising `blocks_cached` or
        `blocks_disowned`, a cut after the release). Still running: back at the end of
        `running`, where it was; else preempted, and requeued as a preempt's retry. Was:
        in neither list, never run again (review s56 diffcompact2)."""
        s = self.manager.sessions.get(victim.session_id)
        if s is not None and s.is_running:
            self.running.append(victim)
            return
        self.num_preemptions += 1
        out.preempted.append(victim)
        self._enqueue(victim, now, retry=True)
