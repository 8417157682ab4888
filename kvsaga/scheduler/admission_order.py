"""The order in which `workflow` admits waiting sessions: by predicted remaining work with
aging ("predicted", the default: `bench/scheduling.py --fit` round 4, seeds 101-106), or
first come first served within a tenant ("fifo"; `WorkflowScheduler(admission_order=...)`),
and the reserve that bounds every session's wait in either order (`max_wait_s`).

Why predicted remaining work: where memory bounds how many sessions run at once, the
sessions waiting for admission queue for memory, and the order that lowers the mean wait is
the one that frees memory soonest: the session holding the least memory for the shortest
time first. A session's remaining work is predicted as its expected remaining steps times
the context it holds over them (its context now plus half its expected growth over them),
in token-steps. The expected remaining steps are the mean residual length of the finished
sessions of its workflow longer than the steps it has done (learned online from the
sessions that end here, with one prior session of the Agent Execution Graph's mean
length), so a session near the typical end of its workflow goes before a new one. Only
signals that both the engine and the simulator have are read: the manager's step count of
the session, the request's context length, the scheduler's own growth and length tables.

Aging bounds the order: the key is ln(cost) + arrival / aging_s (cost clipped to
[1, `MAX_COST`]), so a session that was queued `aging_s` x ln(`MAX_COST`) seconds before
another goes ahead of it whatever their predictions. Order alone does not bound the wait
(backfill lets sessions that fit pass the head): the reserve does, in either order.

The reserve (`max_wait_s`): each session waiting for admission (a new session, or a
demoted one's next step; any tenant) has a deadline, fixed when it queued: its queueing
time + `max_wait_s`, or sooner under the tail guard (`tail_wait_factor`,
`kvsaga.scheduler.tail_guard`: what is left of a budget for all its waits together). Once
the earliest deadline has passed (ties: the one queued earliest), that session is the only
one that may be admitted until it is: no backfill, no other tenant's session, no other
order; only the steps of sessions already admitted go on.
The admitted sessions then only leave (each ends after finitely many steps, or is demoted
at its pause deadline or by the shrink), and the reserved session is admitted as soon as
its working set fits beside theirs, at once when none is admitted, or when the batch has
idled `idle_admit_s` with all of them away on tools. So a session waits at most
`max_wait_s` (its deadline, or sooner), plus the reserves of the sessions due before it
still waiting then (each bounded alike), plus the time until the sessions admitted then
have left or fit it beside them. The reserve starts at a time known in advance
(`reserve_at`), so a refusal's time bound (`refusal_until`) and the simulator's wake-up
(`wake_time`) include it.

The "predicted" key does not change with time, only with events (a step's end updates the
tables). Lengths are learned from the steps the manager counted (`Session.num_steps`): a
session imported from another replica (`kvsaga.migration`) brings its step count along,
so it is neither predicted nor learned as shorter than it was. Known gaps: a move that
carries no KV (no full block cached, or no room on the receiver: the step is recomputed
there) starts the count afresh, and the manager counts a preempted step's retry as a step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from kvsaga.policy.base import EvictionPolicy
from kvsaga.policy.bounded import TRACKED_WORKFLOWS, touch
from kvsaga.scheduler.base import check_choice, check_float
from kvsaga.scheduler.decode_stall import READMIT_ROOM_WHOLE
from kvsaga.scheduler.session_length import SessionLengthModel
from kvsaga.scheduler.tail_guard import WaitBudgets

ADMISSION_ORDERS = ("fifo", "predicted", "gittins")  # `WorkflowScheduler(admission_order=...)`
# `WorkflowScheduler(readmit_order=...)`: where a demoted session's next step stands among
# the waiting sessions under "predicted" / "gittins" (`AdmissionOrder._sort_pending`).
READMIT_ORDERS = ("sorted", "session_age", "first", "waited")
# `WorkflowScheduler(readmit_cost=...)`: the context a demoted session's waiting step is
# ordered by under "predicted" / "gittins" (`AdmissionOrder.remaining_cost`).
READMIT_COSTS = ("context", "uncached")
MAX_REMAINING_STEPS = 1000  # an expected remaining count is capped at this
MAX_COST = 1e12  # token-steps: a prediction is clipped to [1, MAX_COST] (the aging bound)


class SessionLengths:
    """Per workflow, how many finished sessions took each number of steps."""

    def __init__(self) -> None:
        self.counts: dict[str, dict[int, int]] = {}

    def observe(self, workflow: str, steps: int) -> None:
        """A session of `workflow` ended after `steps` steps (>= 1)."""
        if steps < 1:
            raise ValueError(f"a finished session took at least one step, got {steps!r}")
        # (the TRACKED_WORKFLOWS most recently ended workflows: kvsaga/policy/bounded.py)
        c = touch(self.counts, workflow, dict, TRACKED_WORKFLOWS)
        c[steps] = c.get(steps, 0) + 1

    def remaining(self, workflow: str, done: int, prior_steps: float) -> float:
        """Expected steps left (this next one included) of a session of `workflow` that
        has done `done` steps: the mean of n - done over the finished sessions with n > done,
        plus one prior session of `prior_steps` steps (at least done + 1), capped at
        `MAX_REMAINING_STEPS`."""
        num = max(prior_steps, done + 1.0) - done
        den = 1.0
        for n, m in self.counts.get(workflow, {}).items():
            if n > done:
                num += (n - done) * m
                den += m
        return min(num / den, MAX_REMAINING_STEPS)


def predicted_cost(remaining_steps: float, context_tokens: float, growth_tokens: float) -> float:
    """Token-steps a session is predicted to hold until it ends: each of its remaining steps
    holds its context, which grows by `growth_tokens` a step (half of the growth on
    average over them)."""
    return remaining_steps * (max(context_tokens, 0.0) + growth_tokens * remaining_steps / 2)


def order_key(cost: float, arrival: float, aging_s: float) -> float:
    """The admission key (smallest first): ln(cost) + arrival / aging_s, cost clipped to
    [1, MAX_COST]. Equal to ln(cost) - wait / aging_s up to a term every waiting session
    shares, so a session's priority grows with its wait."""
    return math.log(min(max(cost, 1.0), MAX_COST)) + arrival / aging_s


def sort_queue(queue: Any, cost: Callable[[Any], float], aging_s: float,
               since: Callable[[Any], float] | None = None) -> None:
    """Reorder a deque of waiting requests by `order_key` (stable: ties keep their order),
    aged from `since(r)` (default: when `r` was queued)."""
    since = since or (lambda r: r.arrival)
    items = sorted(queue, key=lambda r: order_key(cost(r), since(r), aging_s))
    queue.clear()
    queue.extend(items)


def demoted_first(queue: Any, cost: Callable[[Any], float], aging_s: float) -> None:
    """Reorder a deque of waiting requests: the demoted sessions' steps (`resumed`) first,
    in the order they are in (`WorkflowScheduler._insert_demoted`'s, which bounds how often
    one is overtaken), then the new sessions by `order_key`."""
    back = [r for r in queue if r.resumed]
    new = sorted((r for r in queue if not r.resumed),
                 key=lambda r: order_key(cost(r), r.arrival, aging_s))
    queue.clear()
    queue.extend(back + new)


class AdmissionOrder:
    """The "predicted" order's state in `WorkflowScheduler` (a mixin, split from it by
    concept): the session-length table it learns from finished sessions, each live
    session's steps so far, and when the waiting queues need sorting again. It reads the
    scheduler's `manager`, `_pending`, `_growth` and `_graph()`."""

    def _init_admission_order(self, order: str, aging_s: float, max_wait_s: float,
                              length_prior: float = 1.0, tail_wait_factor: float = 0.0,
                              readmit_order: str = "sorted",
                              readmit_cost: str = "context") -> None:
        check_choice("admission_order", order, ADMISSION_ORDERS)
        self.readmit_order = check_choice("readmit_order", readmit_order, READMIT_ORDERS)
        self.readmit_cost = check_choice("readmit_cost", readmit_cost, READMIT_COSTS)
        self._started: dict[str, float] = {}  # live session -> when its first step queued
        self._waited: dict[str, float] = {}  # live session -> its admission waits so far
        aging_s = check_float("aging_s", aging_s, 0.0, strict=True)
        if math.isinf(aging_s):  # no aging: a session could wait forever
            raise ValueError("scheduler parameter aging_s must be finite, got inf")
        self.admission_order = order
        self.aging_s = aging_s
        self._lengths = SessionLengths()
        self._length_model = SessionLengthModel(length_prior)  # the "gittins" order's
        self.length_prior = self._length_model.prior_weight
        self._steps_seen: dict[str, int] = {}  # live sessions' steps, as of their last finish
        self._order_stale = False  # a queue or a table changed since the queues were sorted
        self._sorted_version: tuple[int, int] | None = None  # the cache_version sorted at
        self._deferred_waiting: set[str] = set()  # demoted sessions with a step queued
        self._ranks_told: dict[str, int] = {}  # ... their places told the policy (`_tell_ranks`)
        self._ranks_stale = False  # a queue changed since they were told
        self._rooms_told: dict[str, int] = {}  # ... and their room deficits (`_tell_rooms`)
        self._room_key: tuple[int, int, int] | None = None  # what they were measured on
        self._paused_told: dict[str, int] = {}  # demoted sessions on a tool: their rooms
        self._paused_key: tuple | None = None  # ... what they were measured on
        self._candidate_at: float | None = None  # the time of the last admission attempt
        max_wait_s = check_float("max_wait_s", max_wait_s, 0.0)
        if math.isinf(max_wait_s):  # no reserve: backfill could pass a session forever
            raise ValueError("scheduler parameter max_wait_s must be finite, got inf")
        self.max_wait_s = max_wait_s
        self._budgets = WaitBudgets(tail_wait_factor, max_wait_s)  # the tail guard
        self.tail_wait_factor = self._budgets.factor
        self._deadlines: dict[str, float] = {}  # waiting session -> its reserve deadline
        self._first: Any = None  # the waiting session due first (`_first_waiting`)
        self._first_stale = False  # ... unknown: it was admitted or left
        self._holding: Any = None  # the session the reserve holds for, at the last candidate

    # -- the reserve (bounded waiting) ----------------------------------------------------
    def _due(self, req: Any) -> tuple[float, float]:
        """A waiting session's place in the reserve's order: its deadline (fixed when it
        queued, `kvsaga.scheduler.tail_guard`), then its queueing time."""
        return self._deadlines[req.session_id], req.arrival

    def _waiting_added(self, req: Any) -> None:
        """`req` joined a queue of sessions waiting for admission: fix its deadline."""
        self._started.setdefault(req.session_id, req.arrival)
        if req.session_id in self._deferred:  # its mark holds until it leaves the queue
            self._deferred_waiting.add(req.session_id)
        self._ranks_stale = True
        b = self._budgets  # off: the old deadline (and no need of the request's workflow)
        self._deadlines[req.session_id] = (b.deadline(req.session_id, req.workflow, req.arrival)
                                           if b.factor else req.arrival + self.max_wait_s)
        if not self._first_stale and (self._first is None
                                      or self._due(req) < self._due(self._first)):
            self._first = req

    def _waiting_removed(self, req: Any) -> None:
        """`req` left the queues of sessions waiting for admission."""
        self._deadlines.pop(req.session_id, None)
        self._backfills_past.pop(req.session_id, None)  # `max_backfill`'s count of this wait
        self._deferred_waiting.discard(req.session_id)
        self._ranks_stale = True
        if req is self._first:
            self._first, self._first_stale = None, True

    def _first_waiting(self) -> Any | None:
        """The session waiting for admission with the earliest deadline (with the tail
        guard off, the one queued earliest; ties: the first found)."""
        if self._first_stale:
            self._first_stale = False
            self._first = min((r for q in self._pending.values() for r in q),
                              key=self._due, default=None)
        return self._first

    @property
    def reserve_at(self) -> float:
        """When the reserve starts for the session due first (inf: none waits)."""
        first = self._first_waiting()
        return math.inf if first is None else self._deadlines[first.session_id]

    def _reserved(self, now: float) -> Any | None:
        """The session the reserve holds admission for at `now`, if any (remembered for
        `_backfill`, which runs right after `_candidate`)."""
        first = self._first_waiting()
        held = first if first is not None and now >= self._deadlines[first.session_id] else None
        self._holding = held
        self._candidate_at = now  # (`_sort_pending` tells the ranks as of now)
        return held

    def _order_changed(self) -> None:
        self._order_stale = True

    def _sort_pending(self) -> None:
        """Sort each tenant's waiting sessions by predicted remaining work ("predicted"),
        if anything it reads changed since the last sort, a demoted session's next step
        placed by `readmit_order`: "sorted" (with the new sessions, aged from when it
        queued), "session_age" (with them, aged from when its session's first step queued)
        or "first" (ahead of every new session, `demoted_first`).

        Why not "sorted" alone: on the fit seeds at bfcl 1x 25% a session's TCT beyond its
        unloaded time is mostly waits to be admitted again after a demotion (1.6-14.4 s a
        session against 0.1-5.6 s for new sessions; the slowest 5% wait 22-83 s, after 2.8-3.8
        demotions), because a session part-way through holds a larger context than a new
        one and sorts behind the stream of new ones (a factor e of predicted work is worth
        `aging_s` of waiting, counted from its re-queueing): RESULTS "Scheduling".

        Then the policy is told the waiting demoted steps' places (`_tell_ranks`), as of
        the admission attempt that sorts (`_candidate`, which `_reserved` timed)."""
        self._sort_queues()
        if self._candidate_at is not None:
            self._tell_ranks(self._candidate_at)
            self._refresh_rooms(self._candidate_at)
            self._tell_paused_rooms(self._candidate_at)

    def _sort_queues(self) -> None:
        """`_sort_pending`'s sort, where the order needs it."""
        if self.admission_order == "fifo":
            return
        if (self.readmit_cost == "uncached" and self._deferred_waiting
                and self.manager.cache_version != self._sorted_version):
            # A demoted step's key reads its GPU hits, which a change of the cache (an
            # eviction, a block registered) may change without an event here; between two
            # such changes every lookup answers as before (`cache_version`).
            self._order_stale = True
        if not self._order_stale:
            return
        self._order_stale = False
        self._ranks_stale = True
        self._sorted_version = self.manager.cache_version
        for q in self._pending.values():
            if self.readmit_order == "first":
                demoted_first(q, self.remaining_cost, self.aging_s)
            elif self.readmit_order in ("session_age", "waited"):
                sort_queue(q, self.remaining_cost, self.aging_s,
                           lambda r: self._aged_since(r.session_id, r.arrival))
            else:
                sort_queue(q, self.remaining_cost, self.aging_s)

    def _tell_ranks(self, now: float) -> None:
        """Tell the policy each waiting demoted step's place in its tenant's queue as
        ordered (`EvictionPolicy.session_admission_rank`: how many steps go before it), only
        where it changed since last told; None to one whose step left the queue while it
        is still demoted. A scan of the queues only after one changed (a step queued or left,
        a sort) while a demoted step waits or was told: the policy's keys change on these
        events alone. Why: which demoted session is back first is this order's choice, which
        the policy cannot see (RESULTS "Eviction policies: graph's demoted sessions on the swe
        family")."""
        if not self._ranks_stale or not (self._deferred_waiting or self._ranks_told):
            return
        self._ranks_stale = False
        ranks: dict[str, int] = {}
        reqs: dict[str, Any] = {}
        if self._deferred_waiting:
            for q in self._pending.values():
                for i, r in enumerate(q):
                    if r.session_id in self._deferred_waiting:
                        ranks[r.session_id] = i
                        reqs[r.session_id] = r
        told, sessions, policy = self._ranks_told, self.manager.sessions, self.manager.policy
        for sid, i in ranks.items():
            s = sessions.get(sid)
            if told.get(sid) != i and s is not None:
                policy.session_admission_rank(s, i, now)
        for sid in told:  # (in the order told: no set order reaches the policy)
            s = None if sid in ranks else sessions.get(sid)
            if s is not None and sid in self._deferred:
                policy.session_admission_rank(s, None, now)
        self._ranks_told = ranks
        self._tell_rooms(reqs, now)

    def _tell_rooms(self, reqs: dict[str, Any], now: float) -> None:
        """Tell the policy each waiting demoted step's room deficit (`room_deficit`,
        `EvictionPolicy.session_admission_room`) at `_tell_ranks`' scans, only where it
        changed since last told; None to one whose step left the queue still demoted.
        Nothing is computed for a policy that does not override the hook. Between queue
        changes `_refresh_rooms` measures them again where the pool changed.

        Why: on the fit seeds the place in the queue had no rank skill for when a demoted
        session's step starts (Spearman -0.42..+0.32), this deficit has (+0.50..+0.76 on
        six fit cases: `python bench/policies_demoted.py`; docs/policies.md, "The room
        the scheduler lacks for a demoted session")."""
        policy = self.manager.policy
        tell = getattr(policy, "session_admission_room", None)
        if tell is None or getattr(tell, "__func__", None) is \
                EvictionPolicy.session_admission_room:
            self._rooms_told = {}  # a policy that stopped listening keeps nothing told
            return
        rooms: dict[str, int] = {}
        if reqs:
            running = self._running_reserve() if self.running else 0
            rooms = {sid: self.room_deficit(r, running) for sid, r in reqs.items()}
        told, sessions = self._rooms_told, self.manager.sessions
        for sid, b in rooms.items():
            s = sessions.get(sid)
            if told.get(sid) != b and s is not None:
                tell(s, b, now)
        for sid in told:
            s = None if sid in rooms else sessions.get(sid)
            if s is not None and sid in self._deferred:
                tell(s, None, now)
        self._rooms_told = rooms
        self._room_key = self._room_state()

    def _room_state(self) -> tuple[int, int, int]:
        """What a room deficit reads that changes without a queue change: the cache (its
        lookups' hits), the free-or-evictable blocks and the running steps."""
        return (self.manager.cache_version, self.manager.pool.num_available, len(self.running))

    def _refresh_rooms(self, now: float) -> None:
        """Between queue changes, measure the told rooms again at an admission attempt where
        that state changed (running steps decode, blocks free): without it the tell is a
        snapshot of the last queue change, out of date by many blocks on a small swe run.
        Only where rooms were told (a listening policy, a demoted step waiting)."""
        if not self._rooms_told or not self._deferred_waiting \
                or self._room_state() == self._room_key:
            return
        reqs = {r.session_id: r for q in self._pending.values() for r in q
                if r.session_id in self._deferred_waiting}
        self._tell_rooms(reqs, now)

    def _tell_paused_rooms(self, now: float) -> None:
        """Tell the policy each demoted session paused on its tool (no step queued) the room
        its next step would lack were it queued now (`paused_room_deficit`,
        `EvictionPolicy.session_paused_room`), at admission attempts that sort the queues
        where the pool's state or the set of such sessions changed, only where the figure
        changed; None once its step queues or it is admitted again (still here). Nothing is
        computed for a policy that does not override the hook. Not measured between
        attempts: while nothing waits, the figure told last stands.

        Why: only 12-33% of the demoted blocks graph evicts on the swe fit cases belong to
        steps in the queue; for the rest, paused on a tool, this deficit ranks the time to
        their next step's start at Spearman +0.15..+0.48 on six fit cases where graph's
        forecast ranks it at -0.27..+0.11 (`python bench/policies_demoted_paused.py`,
        "told now"; docs/policies.md)."""
        tell = getattr(self.manager.policy, "session_paused_room", None)
        if tell is None or getattr(tell, "__func__", None) is EvictionPolicy.session_paused_room:
            if self._paused_told:  # the policy changed: nothing is told any more
                self._paused_told = {}
            return
        paused = tuple(sid for sid in self._deferred if sid not in self._deferred_waiting)
        key = (self._room_state(), paused, self._readmits_on_room(1))
        if key == self._paused_key:
            return
        self._paused_key = key
        rooms: dict[str, int] = {}
        if paused:
            running = self._running_reserve() if self.running else 0
            for sid in paused:
                b = self.paused_room_deficit(sid, running)
                if b is not None:
                    rooms[sid] = b
        told, sessions = self._paused_told, self.manager.sessions
        for sid, b in rooms.items():
            if told.get(sid) != b:
                tell(sessions[sid], b, now)
        for sid in told:
            s = None if sid in rooms else sessions.get(sid)
            if s is not None:
                tell(s, None, now)
        self._paused_told = rooms

    def paused_room_deficit(self, sid: str, running_reserve: int) -> int | None:
        """`room_deficit` of demoted `sid`'s next step were it queued now, its tool still
        running: its prompt taken as its context plus the mean growth of its workflow
        after its last tool (per tool under `tool_growth`), its decode reserve as
        `reserve_decode_tokens` past that, the lookup of its context as it stands (under
        "room_queue", its step counted as queued; under "room_fits" / "room_contexts" the
        gate's deficit is the smaller of its charge's and its whole context's,
        `_whole_over`). None: no such paused session here
        (gone, empty, or a step open)."""
        m = self.manager
        s = m.sessions.get(sid)
        if s is None or s.is_running or not s.token_ids:
            return None
        bs = m.block_size
        tool = s.hint.tool if s.hint is not None and self.tool_growth else None
        prompt = len(s.token_ids) + math.ceil(self._growth.mean(s.workflow, tool))
        lk = m.lookup(sid, s.token_ids, block_hashes=s.block_hashes)
        need = lk.blocks_to_admit(prompt + self.reserve_decode_tokens)
        pool = need + running_reserve - m.pool.num_available
        if not self.sessions or self._readmits_on_room(1):
            return pool
        own = prompt - lk.gpu_hit_blocks * bs
        var = self._growth_var(s.workflow, None, True) if self.growth_reserve else 0.0
        gate = math.ceil(self._committed + self._working_set(s.workflow, own, 0)
                         + self._reserves(s, var) - self.overcommit * self.capacity)
        if self.readmit_charge in READMIT_ROOM_WHOLE:  # either check admits (`_session_fits`)
            gate = min(gate, self._whole_over(sid, prompt, lk.gpu_hit_blocks))
        return max(pool, gate)

    def room_deficit(self, req: Any, running_reserve: int) -> int:
        """Blocks that must free before `req`'s waiting step (a demoted session's) passes
        both the working-set gate and the pool, the larger of the two deficits (<= 0: it
        fits both now). The gate's: the admitted working sets plus its charge (at the
        "uncached" re-admission charge: its prompt less its GPU hits, over the horizon,
        with the reserves; `WorkingSetGate._session_fits`) less overcommit x the tiers;
        none with nobody admitted or under `readmit_charge` "room" ("room_queue": while it
        holds, `_readmits_on_room`; "room_fits" / "room_contexts": the smaller of that and
        its whole own context's beside the admitted sets, `_whole_over`). The pool's: its whole
        prompt's blocks to admit plus `running_reserve` (the running steps'
        `_running_reserve`) less the free-or-evictable GPU blocks (`BlockRoom._fits`).
        Read only: a lookup answers from its cache until the cache changes."""
        lk = self.lookup(req)
        pool = (lk.blocks_to_admit(self._reserve_target(req, req.num_tokens))
                + running_reserve - self.manager.pool.num_available)
        if not self.sessions or self._readmits_on_room():
            return pool
        own = req.num_tokens - lk.gpu_hit_blocks * self.manager.block_size
        var = self._growth_var(req.workflow, None, True) if self.growth_reserve else 0.0
        gate = math.ceil(self._committed + self._working_set(req.workflow, own, 0)
                         + self._reserves(req, var) - self.overcommit * self.capacity)
        if self.readmit_charge in READMIT_ROOM_WHOLE and req.session_id in self._deferred:
            gate = min(gate, self._whole_over(req.session_id, req.num_tokens, lk.gpu_hit_blocks))
        return max(pool, gate)

    def _session_since(self, req: Any) -> float:
        """When `req`'s session's first step queued here (its own queueing if unknown)."""
        return self._started.get(req.session_id, req.arrival)

    def _aged_since(self, sid: str, queued: float) -> float:
        """The time a step of session `sid` queued (or forecast to queue) at `queued` is
        aged from, by `readmit_order`: "session_age", its session's first queueing here;
        "waited", `queued` less the admission waits its session has had so far (its
        earlier ones, `_waited`); else `queued` itself.

        Why "waited" (round 42, session 34): aging is what bounds a session's wait under the
        predicted order, but "sorted" restarts it at every queueing, so a session demoted k
        times can wait k times what the aging allows one wait: on the fit seeds at bfcl 1x
        25% the sessions over the p95 TCT were demoted 2-6 times and waited 24-84 s in all
        to be admitted again, each wait far below `max_wait_s` (RESULTS "Scheduling",
        session 34). "waited" carries the aging over: the key is ln(cost) less the
        session's whole admission wait over `aging_s`, not since its session began
        ("session_age", which credits its steps and tool calls too)."""
        if self.readmit_order == "session_age":
            return self._started.get(sid, queued)
        if self.readmit_order == "waited":
            return queued - self._waited.get(sid, 0.0)
        return queued

    def remaining_cost(self, req: Any) -> float:
        """Token-steps `req`'s session is predicted to hold until it ends (`predicted_cost`);
        under "gittins", the Gittins rank of that work (`kvsaga.scheduler.session_length`).
        Under `readmit_cost` "uncached", a demoted session's step (not admitted again yet)
        is costed on the part of its prompt not cached on the GPU (`_readmit_context`)."""
        context = req.num_tokens
        if self.readmit_cost == "uncached" and req.session_id in self._deferred:
            context = self._readmit_context(req)
        return self.session_cost(req.session_id, req.workflow, context)

    def _readmit_context(self, req: Any) -> int:
        """The tokens of demoted `req`'s prompt that admitting it adds to the GPU: those past
        its leading full blocks resident on the GPU (`lookup`'s `gpu_hit_blocks`, which
        the gate charges alike: `_readmit_tokens`; at least 1 token, which a step always
        computes). Read off the prompt, not the session's old context: a resumed prompt may
        rewrite its context (`begin_step` keeps only the common prefix).

        Why (`readmit_cost` "uncached"; RESULTS "Scheduling", `--fit` round 17): the order
        puts first the session that holds the least memory for the shortest time, and a
        demoted session's cached blocks already occupy the GPU (nobody is charged for them,
        and the gate charges its re-admission only the rest: `readmit_charge` "uncached").
        Costed on its whole context, a session part-way through sorts behind the stream of
        new sessions while its cached blocks, deferred, are the policy's first victims; on
        the fit seeds at bfcl 1x 25% its waits to be admitted again are most of its TCT
        beyond its unloaded time. Costed on what it adds, a demoted session whose context is
        still cached comes back soon (it adds little), one whose context is gone sorts as
        a new session of that size would."""
        hit = self.lookup(req).gpu_hit_blocks * self.manager.block_size
        return max(req.num_tokens - hit, 1)

    def session_cost(self, sid: str, workflow: str, context: int) -> float:
        """`remaining_cost` of session `sid` of `workflow` holding `context` tokens: also
        the shrink's key under `shrink_order` "least_work" (`Demotions._demotion_order`),
        for an admitted session that has no waiting request."""
        s = self.manager.sessions.get(sid)
        done = s.num_steps if s is not None else 0
        graph = self._graph()
        if self.admission_order == "gittins":
            return self._length_model.gittins_rank(
                workflow, done, context, self._growth.mean(workflow),
                graph.mean_steps(None) if graph is not None else None)
        prior = graph.mean_steps(workflow) if graph is not None else done + 1.0
        left = self._lengths.remaining(workflow, done, prior)
        return predicted_cost(left, context, self._growth.mean(workflow))

    def _step_admitted(self, req: Any, now: float) -> None:
        """A session admission (the session not admitted yet) adds its wait to the tail
        guard's sum. At a session's first step here (just begun), count the steps it ran
        before: a session whose earlier steps ran elsewhere (imported with its count,
        `kvsaga.migration`) is learned at its full length, even if its only step here is
        its last. Later counts come from `_step_done`."""
        if req.session_id not in self.sessions:
            self._budgets.admitted(req.session_id, req.arrival, now)
            if self.readmit_order == "waited":
                self._waited[req.session_id] = (self._waited.get(req.session_id, 0.0)
                                                + max(now - req.arrival, 0.0))
        s = self.manager.sessions.get(req.session_id)
        if s is not None and req.session_id not in self._steps_seen:
            self._steps_seen[req.session_id] = s.num_steps - 1
            if s.num_steps > 1:  # steps it ran elsewhere: reached, the session goes on
                self._length_model.steps_done(req.workflow, 0, s.num_steps - 1)

    def _step_done(self, req: Any, ended: bool, now: float) -> None:
        """Count the finished step; at the session's end, learn its length and its time
        less its admission waits (the tail guard's)."""
        sid = req.session_id
        if ended:
            self._started.pop(sid, None)
            self._waited.pop(sid, None)
            self._budgets.ended(sid, req.workflow, now)
            before = self._steps_seen.pop(sid, 0)
            self._lengths.observe(req.workflow, before + 1)
            self._length_model.ended_after(req.workflow, before, before + 1)
        else:
            s = self.manager.sessions.get(sid)
            if s is not None:
                before = self._steps_seen.get(sid, 0)
                self._steps_seen[sid] = s.num_steps
                if s.num_steps > before:  # censored: its length is > s.num_steps so far
                    self._length_model.steps_done(req.workflow, before, s.num_steps)
        self._order_stale = True

    def _session_left(self, sid: str) -> None:
        self._steps_seen.pop(sid, None)
        self._started.pop(sid, None)
        self._waited.pop(sid, None)
        self._budgets.forget(sid)
