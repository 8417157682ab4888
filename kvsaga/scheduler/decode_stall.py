"""Prefill that stalls running decodes: a cap on a batch step's prefill tokens while steps
decode (`WorkflowScheduler(decode_prefill_tokens=...)`), and the re-admission of a demoted
session on the pool's room alone (`readmit_charge` "room", "room_queue", "room_fits",
"room_contexts").

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from it by concept.

Why (RESULTS "Scheduling", session 23; `bench/scheduling_bound_gap.py` on the fit seeds
101-106 at bfcl 1x 25%, the point that misses the 2x goal): bench/scheduling_bound.py's
bound there is its solo part, every session run alone as it arrives, and the default's TCT
beyond it is mostly waits to be admitted again after demotions (1.6-14.4 s a session of a
3.3-19.8 s gap; the steps' run time beyond solo 1.2-1.9 s). Each demotion cost its session
0.9-12.0 s of such waits (means by seed) against 0.05-0.26 s of the recomputation keeping it
admitted would have cost, and during 35-51% of the demoted steps' waits their whole prompt
fitted on the GPU beside the running steps' contexts: the bound's schedule would have run
them. Admitting them there (this "room" value alone) did not pay: the runs' time beyond solo
rose to 3.5-5.1 s a session, 1.9-3.0 s of it decodes stalled in batch steps that carried
other steps' prefill, mostly recomputation (the simulator's cost model: a step lasts its
overhead plus the larger of its compute and memory times, so a decode waits for every
prefill token in its step; the bound counts none of that). Recomputation costs its own
compute time times the steps it stalls. So the cap: while any running step decodes, a batch
step computes at most `decode_prefill_tokens` prompt tokens (running prefills first, then
admissions), so a prefill, first-time or recomputed, is spread over steps that each stay
near a decode step's length, and the decodes beside it go on. A step with nothing decoding
takes the whole token budget, as before. 0: off; the default is 128, gated ("The default"
below).

Round 25's cap held always: `--fit` round 25 (fit seeds 101-106) ranked the cap of 128 tokens first
(smallest gain 1.40x -> 1.61x at bfcl 1x 25%, every fit point's gain up) and its non-thrash
check rejected it (swe seed 103 1x p95 +5.8%, web seed 103 1x p95 +4.9%; the AFS veto, read
before 00c1ce0 stopped the cap billing tenants for uncomputed tokens: 17 of 32 mix ratios
up); with "room" the smallest gain fell to 1.36x (swe, web).
docs/scheduling_fit_history.md has the round.

Gated (`decode_prefill_when`, `--fit` round 26): the cap helps where sessions thrash and
hurts where nothing does, so it may hold only under pressure, the non-thrash regime then
scheduled as without it. "always" (round 25's cap); "demoted": only while a
demoted session's step waits to be admitted again; "demoted_queue": only while two or more
do (on the fit seeds' non-thrash runs that round 25's check failed, swe and web seed 103 1x,
the gate "demoted" opened only with one waiting, and there the cap moved a p95 session by a
timing cascade; at bfcl 1x 25% two or more wait in most open steps: by hand, probe not
kept); "recompute": the cap cuts only the prefill of steps that recompute context their
session had computed before (evicted while it paused, or dropped by a preemption), never a
new session's first prefill; a step's new tokens run uncapped but in the chunk where its
recomputation ends, which the cap cuts too. The gates read only the scheduler's queues and
its lookups, so the engine and the simulator (batch steps and decode runs alike) open them
at the same steps, but in a cluster: a session's later step at a replica that never saw the
session counts as a demoted one's (`resumed`) in the simulator only (the engine's `resumed`
means a session it served), so "demoted" / "demoted_queue" may open there in the simulator
alone.
The default: round 26's fit chose "demoted_queue" (smallest gain 1.40x -> 1.58x at bfcl 1x
25%, no non-thrash figure worse; "demoted", ranked first at 1.68x, failed the non-thrash
check at swe seed 103 1x) and the any-rise AFS veto rejected it (13 of 32 mix ratios up).
Session 25 measured that veto's noise floor (bench/scheduling_veto_noise.py: it rejects 8 of
11 null runs, perturbations such as every step time x (1 + 2e-4) that carry no information
about the scheduler) and replaced it with a veto calibrated to the nulls
(`policies_check.afs_noise_veto`, thresholds frozen before any candidate was judged); under
it the candidate passes (mean change of log ratio -0.0345, goal cases 15 -> 15), so the cap
of 128 with "demoted_queue" became the default, and the fresh seeds ran after
(docs/scheduler.md, "The prefill cap the default"). "always", "demoted" and "recompute"
stay opt-in.

Room under pressure (`readmit_charge` "room_queue", `--fit` round 27, opt-in): on today's
default the TCT beyond the bound's schedule at bfcl 1x 25% is still mostly waits to be
admitted again (`bench/scheduling_bound_gap.py`), and "room" paid only with the cap beside it
(round 25: alone it stalled decodes; with the ungated cap it cost swe and web, where nothing
thrashes). "room_queue" admits a demoted session's step on the pool's check alone only while
two or more demoted sessions' steps wait (the one asking among them), the count the default
cap's gate reads, else charges it as "uncached". Round 27 rejected it, so it stays opt-in:
the fit kept the default (smallest gain 1.58x -> 1.27x; bfcl 1x 25% 1.58x -> 1.70x, but web
1x 25% 2.65x -> 1.27x and every other fit point down), and its non-thrash check (web seed
103 1x p95 10.28 -> 25.02 s) and the calibrated AFS veto (all 32 ratios up, goal cases
15 -> 3) reject it too. Its premise, that it acts only where the cap's gate opens, was wrong:
the gate is read only on batch steps that carry prefill beside a decode, this rule at every
admission attempt of a demoted step, and two demoted steps do wait at such attempts on swe
and web. And the condition feeds itself: a step admitted on room whose context does not fit
beside the admitted contexts makes the shrink demote others, whose steps then queue as
demoted ones (web seed 103 1x 50%: demotions 10 -> 15). docs/scheduler.md, "Room under
pressure", has the figures and their commands. The count is `_demoted_waiting`'s, so the
cluster caveat above ("Gated") holds here too: a session's later step at a replica that never
saw the session counts as a demoted one's in the simulator only, so in a cluster simulation
"room_queue" may admit on room where a real replica would charge "uncached". (Counting only
steps whose session is in `_deferred` would avoid that, but is not verified to keep
single-engine decisions identical, so the count is left as the gate's.)
Correction (session 27): until round 28's change, every room value where it did not admit
on room charged "context" (`_readmit_tokens`: the uncached part, and the whole own context
must fit beside the admitted contexts), not "uncached" as stated above; so round 27 measured
"room_queue" with that fallback. Fixed, "room_queue" at web seed 103 1x 50% schedules as the
default (10 demotions, mean TCT 6.9 s): the 10 -> 15 demotions there came from the
fallback, not from a cascade of room admissions.

Room where it cannot cascade (`readmit_charge` "room_fits" / "room_contexts", `--fit`
round 28, opt-in): "room" only where the demoted session's whole own context (its prompt
less a prefix it shares; `_whole_over`) fits within the tiers beside the admitted sessions'
working sets (`_committed`, what the shrink reads: "room_fits") or beside their own contexts
(`_context_blocks`, growth not counted: "room_contexts"), else "uncached". Checked after the
gate refused and the sessions away past their deadlines were demoted, before any session is
demoted to make room (`WorkingSetGate._session_fits`). No rule admitting beyond the gate
can promise that the shrink never demotes for it: once admitted the session is charged its
whole context and its growth, which the gate's "uncached" charge already understates (that
is the re-admission churn `_readmit_tokens` describes), and "full", the charge that
promises it, lost round 10. "room_fits" bounds the overshoot by the session's own growth
charge; "room_contexts" only keeps the held contexts within the tiers. The room deficits told
to a policy read the same rule (the smaller of the gate's deficit and the whole context's).
Counters (`bench/scheduling_bound_gap.py`, fit seeds): web seed 103 1x 50% unchanged under
both (10 demotions); bfcl 1x 25% demotions 0.83-1.19x the default's under "room_fits",
1.18-1.53x under "room_contexts" (mostly for the growth charged), 1.24-1.97x under the fixed
"room_queue". Round 28 chose "room_fits" by the fit (smallest gain 1.58x -> 1.66x; bfcl 1x
25% 1.66x, but web 1x 50% 2.72x -> 2.45x) and its non-thrash check found nothing worse; the
calibrated AFS veto rejected it (mean d log ratio +0.0404 against 0.0270), so it stays
opt-in with "room_contexts" (1.56x). docs/scheduler.md, "Round 28", has the figures and
the commands.
"""

from __future__ import annotations

import math
from typing import Any

from kvsaga._validate import check_time
from kvsaga.errors import InvalidRequest
from kvsaga.scheduler.base import MAX_COUNT, Executor, SchedulerOutput, check_int
from kvsaga.scheduler.working_set import working_set_blocks

# `readmit_charge` "room": a demoted session's step is admitted again when the pool can take
# it (`BlockRoom._fits`: its first chunk, and with steps running its whole prompt and some
# decode headroom beside theirs), whatever the working sets charged (`_session_fits`).
READMIT_ROOM = "room"
# "room_queue" (`--fit` round 27): "room" only while two or more demoted sessions' steps wait
# to be admitted again (the default cap's gate, "demoted_queue"), else the default charge,
# "uncached" (module docstring, "Room under pressure").
READMIT_ROOM_QUEUE = "room_queue"
# "room_fits" / "room_contexts" (`--fit` round 28): "room" only where the demoted session's
# whole own context fits beside the admitted sessions' working sets (the charge the shrink
# reads) / beside their own contexts (what they hold), else "uncached" (module docstring,
# "Room where it cannot cascade").
READMIT_ROOM_FITS = "room_fits"
READMIT_ROOM_CONTEXTS = "room_contexts"
READMIT_ROOM_WHOLE = (READMIT_ROOM_FITS, READMIT_ROOM_CONTEXTS)
# Every room value: where none of them admits on room, the charge is "uncached".
READMIT_ROOMS = (READMIT_ROOM, READMIT_ROOM_QUEUE, *READMIT_ROOM_WHOLE)
# `decode_prefill_when`: when the cap holds (module docstring, "Gated").
DECODE_PREFILL_WHEN = ("always", "demoted", "demoted_queue", "recompute")
# The defaults (module docstring, "The default"): the cap of 128 tokens while two or more
# demoted sessions' steps wait to be admitted again.
DECODE_PREFILL_TOKENS = 128
DEFAULT_DECODE_PREFILL_WHEN = "demoted_queue"


class DecodeStall:
    """The prefill cap (see the module docstring)."""

    def _init_decode_stall(self, decode_prefill_tokens: object,
                           decode_prefill_when: object = None) -> None:
        """None for `decode_prefill_when`: the default gate, which a cap of 0 turns off
        with the cap; a gate named with the cap off is refused (it would gate nothing)."""
        cap = check_int("decode_prefill_tokens", decode_prefill_tokens, 0, MAX_COUNT)
        if decode_prefill_when is None:
            decode_prefill_when = DEFAULT_DECODE_PREFILL_WHEN if cap else "always"
        elif decode_prefill_when not in DECODE_PREFILL_WHEN:
            raise ValueError(f"scheduler parameter decode_prefill_when must be one of "
                             f"{', '.join(map(repr, DECODE_PREFILL_WHEN))}, "
                             f"got {decode_prefill_when!r}")
        if decode_prefill_when != "always" and not cap:
            raise ValueError(f"scheduler parameter decode_prefill_when "
                             f"{decode_prefill_when!r} gates the prefill cap, which is off: "
                             f"set decode_prefill_tokens > 0 too")
        self.decode_prefill_tokens = cap
        self.decode_prefill_when = decode_prefill_when
        self._prefill_left: int | None = None  # prompt tokens left to this batch step
        self._favoured_keep = 0  # cap tokens the favoured tenant still keeps (`_grant`)
        self._in_schedule = False
        # "recompute": per running step (by id, with the step), its prompt tokens still to
        # compute that its session had computed before (`_to_recompute`).
        self._recompute: dict[int, tuple[Any, int]] = {}
        self._asked_recompute: dict[int, tuple[Any, int]] = {}  # ... of waiting steps asked
        # "recompute": per paused session, its computed tokens when its last step finished
        # (a preemption cuts `Session.num_computed` back to what the retried attempt
        # computed, so the retry would find nothing left to recompute).
        self._paused_computed: dict[str, int] = {}
        # "recompute": the last step's changes to `_recompute`, by id(req): each step's
        # entry as it would stand had its chunk not been computed (None: none), for
        # `_uncharge`.
        self._recompute_undo: dict[int, tuple[Any, tuple[Any, int] | None]] = {}

    def _decoding(self, executor: Executor) -> bool:
        """Whether a running step computes one token in this batch step: a decode, or a
        prefill with one prompt token left, which costs a step what a decode costs and is
        likewise never cut (`_grant`), so it turns the cap on just as a decode does."""
        return any(executor.num_new_tokens(r) == 1 for r in self.running)

    def _cap_open(self) -> bool:
        """The gate (`decode_prefill_when`): "demoted" holds the cap only while a demoted
        session's step waits to be admitted again (re-admissions queued: the pressure that
        thrash builds), "demoted_queue" only while two or more do (one at a time is the
        demotions' churn where nothing thrashes); "always" and "recompute" (which gates per
        step instead: `_capped`) always."""
        when = self.decode_prefill_when
        if when not in ("demoted", "demoted_queue"):
            return True
        return self._demoted_waiting(1 if when == "demoted" else 2)

    def _demoted_waiting(self, need: int) -> bool:
        """Whether `need` or more demoted sessions' steps wait to be admitted again; `need`
        must be 1 or more (the callers ask for 1 or 2: fewer would always hold, which no
        caller means, so it is refused rather than answered)."""
        if not isinstance(need, int) or isinstance(need, bool) or need < 1:
            raise ValueError(f"_demoted_waiting: need must be an int >= 1, got {need!r}")
        # The count `WaitingQueues._enqueue` / `_dequeue` keep: this was the scan below,
        # every step waiting read per decode step (review s50 scheduler 3).
        return self._pending_resumed >= need

    def _demoted_waiting_scanned(self) -> int:
        """The resumed steps in the admission queues, counted afresh (tests check
        `_pending_resumed` with it)."""
        return sum(1 for q in self._pending.values() for r in q if r.resumed)

    def _readmits_on_room(self, queued: int = 0) -> bool:
        """Whether a demoted session's step is admitted again on the pool's check alone,
        the working sets not charged: always under `readmit_charge` "room", under
        "room_queue" while two or more demoted sessions' steps wait (the step asking among
        them; `queued` more counted, for a step not queued yet), as the default cap's gate
        reads the queues (so the engine and the simulator decide alike; in a cluster the
        simulator alone may count a step as demoted: the module docstring, "Gated").
        `queued` is 0 or 1."""
        charge = self.readmit_charge
        return charge == READMIT_ROOM or (charge == READMIT_ROOM_QUEUE
                                          and self._demoted_waiting(2 - queued))

    def _whole_over(self, sid: str, tokens: int, hit_blocks: int) -> int:
        """Under `readmit_charge` "room_fits" / "room_contexts": blocks by which the demoted
        session `sid`'s whole own context (`tokens` of prompt less the prefix it shares
        with others, `hit_blocks` of it cached on the GPU: as `_readmit_tokens` counts it)
        exceeds the tiers (overcommit x capacity) beside the admitted sessions' working
        sets (`_committed`, "room_fits") or beside their own contexts (`_context_blocks`,
        "room_contexts"); <= 0: it fits. Read only."""
        charge = self.readmit_charge
        if charge not in READMIT_ROOM_WHOLE:
            raise ValueError(f"_whole_over: readmit_charge {charge!r} is not one of "
                             f"{', '.join(map(repr, READMIT_ROOM_WHOLE))}")
        bs = self.manager.block_size
        whole = tokens - min(hit_blocks * bs, self._shared_tokens(sid))
        beside = self._committed if charge == READMIT_ROOM_FITS else self._context_blocks()
        return math.ceil(beside + working_set_blocks(whole, 0.0, 0.0, bs)
                         - self.overcommit * self.capacity)

    def _readmits_whole(self, req: Any, lookup: Any) -> bool:
        """Whether `req`, a demoted session's waiting step whose lookup is `lookup`, is
        admitted again on the pool's check alone under "room_fits" / "room_contexts": its
        session's whole own context fits (`_whole_over`), so admitting it cannot take the
        admitted working sets ("room_fits") or contexts ("room_contexts") over the tiers
        by more than the growth charged for it. False under any other value."""
        return (self.readmit_charge in READMIT_ROOM_WHOLE and req.session_id in self._deferred
                and self._whole_over(req.session_id, req.num_tokens,
                                     lookup.gpu_hit_blocks) <= 0)

    def _capped(self, req: Any) -> bool:
        """Whether the cap cuts `req`'s prefill: under "recompute" only while it recomputes
        context its session had computed before (evicted while it paused, or dropped by a
        preemption), so a new session's first prefill runs as without the cap, and a step's
        new tokens too but in the chunk where its recomputation ends (cut to the cap)."""
        if self.decode_prefill_when != "recompute":
            return True
        got = self._recompute.get(id(req)) or self._asked_recompute.get(id(req))
        return got is not None and got[0] is req and got[1] > 0

    def _to_recompute(self, req: Any, lookup: Any) -> int:
        """Prompt tokens of a waiting step that its session had computed before and that
        `lookup` (what `begin_step` would find) does not find cached: its session's
        computed tokens at its pause (recorded by `finish`, or `Session.num_computed` if
        more), past the cached ones."""
        s = self.manager.sessions.get(req.session_id)
        if s is None or s.is_running:
            return 0
        computed = max(self._paused_computed.get(req.session_id, 0), s.num_computed)
        return max(min(computed, lookup.num_prompt_tokens) - lookup.num_cached_tokens, 0)

    def schedule(self, now: float, executor: Executor) -> SchedulerOutput:
        check_time("now", now, InvalidRequest)  # before `ComputeShares` catches tenants up
        cap = self.decode_prefill_tokens
        self._prefill_left = (cap if cap and self._decoding(executor) and self._cap_open()
                              else None)
        self._favoured_keep = int(cap * self.share_within_cap)
        self._in_schedule = True
        self._recompute_undo = {}
        try:
            return super().schedule(now, executor)
        except BaseException:  # nothing of the step is computed
            self._undo_recompute(self._recompute_undo)
            raise
        finally:
            self._in_schedule = False
            self._prefill_left = None

    def admit_waiting(self, now: float, budget: int, executor: Executor,
                      out: SchedulerOutput) -> None:
        self._asked_recompute = {}
        if self._in_schedule:
            super().admit_waiting(now, budget, executor, out)
            return
        # A simulator's decode run calls it alone at a step whose running steps decode.
        self._recompute_undo = {}
        cap = self.decode_prefill_tokens
        self._prefill_left = cap if cap and self.running and self._cap_open() else None
        try:
            super().admit_waiting(now, budget, executor, out)
        finally:
            self._prefill_left = None

    def _grant(self, req: Any, n: int) -> int:
        # The cap cuts `n` before the classes after this one see it: Agent Fair Share of
        # compute (`fair_share.ComputeShares._grant`) bills the tenant what it grants, so a
        # cut after it would bill prompt tokens never computed. One token (a decode, or a
        # prefill's last prompt token: see `_decoding`) is never cut, as there.
        # Under Agent Fair Share of compute, the favoured tenant's running prefills not
        # reached yet keep up to `share_within_cap` of the cap (`ComputeShares.favoured_room`).
        left = self._prefill_left
        if left is None or n <= 1 or not self._capped(req):
            n = super()._grant(req, n)
        else:
            favoured = self.is_favoured(req)
            keep = min(self.favoured_room(req), self._favoured_keep)
            n = super()._grant(req, min(n, max(left - keep, 0)))
            self._prefill_left = left - n
            if favoured:
                self._favoured_keep = max(self._favoured_keep - n, 0)
        self._recomputed(req, n)
        return n

    def _chunk_limit(self, req: Any, budget: int) -> int:
        limit = super()._chunk_limit(req, budget)
        left = self._prefill_left
        if self.decode_prefill_when == "recompute" and self.decode_prefill_tokens:
            self._asked_recompute[id(req)] = (req, self._to_recompute(req, self.lookup(req)))
        return limit if left is None or not self._capped(req) else min(limit, left)

    def _charge_chunk(self, req: Any, n: int) -> None:
        super()._charge_chunk(req, n)
        if self._prefill_left is not None and self._capped(req):
            self._prefill_left = max(self._prefill_left - n, 0)
        self._recompute.pop(id(req), None)  # a retry: counted again from its lookup
        got = self._asked_recompute.pop(id(req), None)
        if got is not None and got[0] is req:
            self._recompute_undo[id(req)] = (req, got if got[1] > 0 else None)
            if got[1] > n:
                self._recompute[id(req)] = (req, got[1] - n)

    def _recomputed(self, req: Any, n: int) -> None:
        """A running step computes `n` prompt tokens: fewer of them are left to recompute."""
        got = self._recompute.get(id(req))
        if got is None or n <= 0:
            return
        self._recompute_undo.setdefault(id(req), (req, got))
        if got[0] is not req or got[1] <= n:
            del self._recompute[id(req)]
        else:
            self._recompute[id(req)] = (req, got[1] - n)

    def _uncharge(self, chunks: list[tuple[Any, int]]) -> None:
        super()._uncharge(chunks)
        undo = self._recompute_undo
        self._undo_recompute({id(r): undo.pop(id(r)) for r, _ in chunks if id(r) in undo})

    def _undo_recompute(self, undo: dict[int, tuple[Any, tuple[Any, int] | None]]) -> None:
        """Put `_recompute`'s entries back as `undo` (`_recompute_undo`'s) says they stood
        before their chunks, which were not computed, counted against them."""
        for key, (_, entry) in undo.items():
            if entry is None:
                self._recompute.pop(key, None)
            else:
                self._recompute[key] = entry
        undo.clear()

    def _allocate(self, req: Any, n: int, now: float, executor: Executor,
                  out: SchedulerOutput) -> bool:
        k = len(out.preempted)
        ok = super()._allocate(req, n, now, executor, out)
        for victim in out.preempted[k:]:  # waiting again: its retry's lookup counts anew
            self._recompute_undo.pop(id(victim), None)
            got = self._recompute.get(id(victim))
            if got is not None and got[0] is victim:
                del self._recompute[id(victim)]
        return ok

    def finish(self, req: Any, now: float, *, ended: bool = False) -> bool:
        check_time("now", now, InvalidRequest)  # before anything changes
        got = self._recompute.get(id(req))
        if got is not None and got[0] is req:
            del self._recompute[id(req)]
        ran = super().finish(req, now, ended=ended)
        if self.decode_prefill_when == "recompute":
            s = self.manager.sessions.get(req.session_id)
            if ended or s is None:
                self._paused_computed.pop(req.session_id, None)
            elif ran:
                self._paused_computed[req.session_id] = s.num_computed
        return ran

    def forget_session(self, session_id: str, now: float) -> None:
        super().forget_session(session_id, now)
        self._paused_computed.pop(session_id, None)

    def _refusal_kept(self, asked: list[tuple[Any, Any, int, Any]]) -> bool:
        # "recompute": a refused step whose hits were evicted since may recompute now, and
        # its first chunk, capped, need fewer blocks: then the refusal need not stand.
        if self._asked_recompute:
            for req, found, _, _ in asked:
                got = self._asked_recompute.get(id(req))
                if got is not None and (got[1] > 0) != (self._to_recompute(req, found) > 0):
                    return False
        return super()._refusal_kept(asked)
