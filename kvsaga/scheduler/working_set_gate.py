"""The session-level gate of the `workflow` scheduler: the working set an admitted session
is charged, and whether admitting a waiting session keeps the admitted working sets within
the tiers (including a demoted session admitted again: `readmit_charge`).

A mixin of `WorkflowScheduler` (kvsaga/scheduler/workflow.py), split from it by concept: it
reads and updates the scheduler's admitted sessions (`sessions`, `_committed`,
`_tenant_blocks`), its growth table and its parameters (`overcommit`, `horizon_steps`,
`tool_growth`, `paused_growth`, `idle_admit_s`, `readmit_charge`); the demotions it may call
for live in `kvsaga.scheduler.demotion`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kvsaga.manager import StepLookup
from kvsaga.policy.cost import PrefillCost
from kvsaga.scheduler.base import check_choice, check_float
from kvsaga.scheduler.decode_stall import (
    READMIT_ROOM,
    READMIT_ROOM_CONTEXTS,
    READMIT_ROOM_FITS,
    READMIT_ROOM_QUEUE,
    READMIT_ROOMS,
)
from kvsaga.scheduler.growth_calibration import GrowthCalibration
from kvsaga.scheduler.leave_forecast import READMIT_LEAVE
from kvsaga.scheduler.room_swap import READMIT_ROOM_SWAP
from kvsaga.scheduler.working_set import (
    GrowthTable,
    demote_deadline,
    predicted_growth,
    working_set_blocks,
)

# The largest `growth_reserve` z taken (standard deviations of the admitted sessions'
# growth still to come): far past any use, and z x sd stays finite for any real spread.
MAX_GROWTH_RESERVE = 1e6

# `WorkflowScheduler(readmit_charge=...)`: what a demoted session's re-admission is charged.
READMIT_CHARGES = ("uncached", READMIT_ROOM, READMIT_ROOM_QUEUE, READMIT_ROOM_FITS,
                   READMIT_ROOM_CONTEXTS, *READMIT_ROOM_SWAP, "context", "full", "binding",
                   "binding_short", "cost", "cost_ends", *READMIT_LEAVE)
# "binding": "full" only while the pool, not the queue, binds (`WorkingSetGate._pool_binds`).
READMIT_BINDING = "binding"
# "binding_short": "full" only while the queue does not bind and the tiers are short: the
# session's whole context does not fit beside the admitted contexts (`_tiers_short`).
READMIT_BINDING_SHORT = "binding_short"
# "cost": "full" only while the recomputation that admitting it at its uncached charge is
# expected to cause outweighs its expected wait for room (`_churn_outweighs_wait`).
READMIT_COST = "cost"
# "cost_ends": "cost" with the wait from the rate admitted contexts end at (`_hold_wait_s`).
READMIT_COST_ENDS = "cost_ends"
# "cost_leave" / "cost_leave_waits": "cost" with the wait from per-session predictions of
# when admitted contexts leave (`kvsaga.scheduler.leave_forecast`).
# `WorkflowScheduler(growth_charge=...)`: what an admitted (or running) step is charged.
# "step" (the default): the growth predicted from its last finish on top of its prompt,
# which already holds the tool's observation that growth predicts: the observation counts
# twice, and that over-charge is in effect the room the paused contexts keep ("once", the
# growth counted once (`WorkingSetGate._step_blocks`), lifted bfcl 1x 25% 1.40x -> 1.43x on
# the fit seeds but made web seed 105 1x mean TCT +3.8% and raised 17 of 32 AFS mix ratios:
# opt-in, `--fit` round 24); "remaining", "prompt": below.
GROWTH_CHARGES = ("once", "step", "remaining", "prompt")
# "remaining" and "prompt": an admitted step is charged its prompt plus its expected reply
# (learned online); "prompt" charges a queued step the same, on its prompt, known at its
# queueing (`WorkingSetGate._queue_charge`).
ON_REPLY = ("remaining", "prompt")
# `WorkflowScheduler(paused_reserve=...)`'s third value besides True and False: the room
# is kept only while the tiers are short (`WorkingSetGate._paused_reserve_applies`).
PAUSED_RESERVE_SHORT = "short"


def calibration(q_name: str, quantile: object, w_name: str,
                prior_steps: object) -> GrowthCalibration | None:
    """`WorkflowScheduler`'s growth calibration from its parameters (None: quantile 0, off),
    errors naming the parameter."""
    q = check_float(q_name, quantile, 0.0)
    if q > 1:
        raise ValueError(f"scheduler parameter {q_name} must be 0 (off) or in (0, 1], got "
                         f"{quantile!r}")
    w = check_float(w_name, prior_steps, 0.0)
    if w == float("inf"):
        raise ValueError(f"scheduler parameter {w_name} must be finite, got {prior_steps!r}")
    return GrowthCalibration(q, w) if q > 0 else None


class WorkingSetGate:
    """Working sets and the admission gate (see the module docstring)."""

    def _init_growth_charge(self, growth_charge: object, growth_reserve: object,
                            paused_reserve: object) -> None:
        """`growth_charge`, `growth_reserve` and `paused_reserve` checked (errors naming
        them) and their state: the reply table, the admitted sessions' summed growth
        variance and the paused ones' growth to come.

        Why "remaining": the growth table learns the growth from one finish to the next
        (the tool's observation and the step's reply), which is about right for a step
        still queued on its last finish's context (realized / predicted median 0.85 on
        the fit seeds), but an admitted step's prompt already holds its observation: what
        it still adds is its reply, 0.03-0.14 of that charge at the median (RESULTS,
        `--fit` round 12). "remaining" charges it its reply alone, learned per workflow
        and tool from the steps' own prompts and finishes ("step": as before, until the
        workflow's first reply is observed "remaining" too). Why the reserve: with every
        charge near its mean, the working sets fill the tiers and any growth above the
        mean evicts paused admitted sessions' contexts (round 12's calibration at bfcl 2x
        50%: recomputation up 0-90%); the over-charge had been keeping room by accident.
        `growth_reserve` z keeps z standard deviations of the admitted sessions' growth
        still to come free at admission (summed as independent: z sqrt(sum of variances),
        each its step's learned spread), so the chance the growth overflows is bounded
        by the same z whatever the trace; 0: off. `paused_reserve`: admission also keeps
        room for the paused admitted sessions' next growth (their whole predicted working
        sets), which `paused_growth` False does not charge them (the shrink does not
        demote for it: it is room a new session may not take, not a commitment); "short":
        the same room, kept only while the tiers are short (`_paused_reserve_applies`)."""
        self.growth_charge = check_choice("growth_charge", growth_charge, GROWTH_CHARGES)
        # z counts standard deviations: MAX_GROWTH_RESERVE is far past any use, and keeps
        # z x sd finite (1e308 was taken, then `_reserve_blocks` raised OverflowError
        # mid-run once the growth's sd reached 2 tokens: review s50 scheduler 4)
        self.growth_reserve = check_float("growth_reserve", growth_reserve, 0.0)
        if self.growth_reserve == float("inf"):
            raise ValueError(f"scheduler parameter growth_reserve must be finite, got "
                             f"{growth_reserve!r}")
        check_float("growth_reserve", growth_reserve, 0.0, maximum=MAX_GROWTH_RESERVE)
        if growth_charge in ON_REPLY and self._calibration is not None:
            raise ValueError(f"scheduler parameters growth_charge {growth_charge!r} and "
                             "growth_quantile > 0 exclude each other (the calibration "
                             "corrects the 'step' charge)")
        if paused_reserve != PAUSED_RESERVE_SHORT and not isinstance(paused_reserve, bool):
            raise ValueError(f"scheduler parameter paused_reserve must be True, False or "
                             f"{PAUSED_RESERVE_SHORT!r}, got {paused_reserve!r}")
        self.paused_reserve = paused_reserve
        self._reply = GrowthTable(self.prior_growth_tokens, self.growth_alpha)
        self._committed_var = 0.0  # admitted sessions' growth variances summed, tokens^2
        self._paused_extra = 0  # paused admitted sessions' uncharged growth, blocks

    def _session_fits(self, req: Any, lookup: StepLookup, now: float) -> bool:
        """The session-level gate: admitting `req`'s session keeps the admitted working sets
        within the tiers (after demoting sessions away far too long), or nothing else is
        admitted, or the GPU has idled `idle_admit_s` with every admitted session away."""
        if not self.sessions or (req.session_id in self._deferred
                                 and self._readmits_on_room()):
            return True  # "room": the pool's check alone (`kvsaga.scheduler.decode_stall`)
        own, whole = self._readmit_tokens(req, lookup, now)
        ws = self._working_set(req.workflow, own, 0)
        var = self._growth_var(req.workflow, None, True) if self.growth_reserve else 0.0

        def need(victims: Sequence[str] = ()) -> int:
            return ws + self._reserves(req, var, victims)
        limit = self.overcommit * self.capacity
        bs = self.manager.block_size
        whole_blocks = None if whole is None else working_set_blocks(whole, 0.0, 0.0, bs)

        def fits() -> bool:
            if self._committed + need() > limit:
                return False
            return whole_blocks is None or self._context_blocks() + whole_blocks <= limit
        if fits():
            return True
        self._demote(now)
        if (not self.sessions or fits() or self._readmits_whole(req, lookup)
                or self._readmits_swap(req, lookup, now)):
            return True  # "room_fits" / "room_contexts" / "room_ranked" / "room_overdue":
            # before any session is demoted (`decode_stall`, `room_swap`)
        if self._reclaim_share(req, ws, need, limit, now, whole_blocks):
            return True
        if self._idle_long(now):
            return True
        bare = working_set_blocks(own, 0.0, 0.0, bs) if whole_blocks is None else whole_blocks
        self._held_back("contexts" if self._context_blocks() + bare > limit else "growth")
        return False

    def _reserves(self, req: Any, extra_var: float, victims: Sequence[str] = ()) -> int:
        """The room admitting `req`'s session (growth variance `extra_var`) must keep free
        besides its working set: `growth_reserve`'s and `paused_reserve`'s, from the
        admitted sessions as they stand when asked, less `victims` (admitted sessions about
        to be demoted: their variances and paused growth leave with them). Read live, not
        once per admission test: a demotion in between (`_demote`, `_reclaim_share`)
        takes its session's share of the reserves with it, and a stale figure refused
        sessions that fit (a session demoted for nothing: tests/scheduler/test_reserves.py).
        0 when both are off (the default)."""
        n = 0
        gone = [self.sessions[sid] for sid in victims]
        if self.growth_reserve:
            n += self._reserve_blocks(extra_var - sum(i.var for i in gone))
        if self._paused_reserve_applies(req, bool(gone)):
            n += self._paused_extra - sum(i.extra for i in gone)
        return n

    def _paused_reserve_applies(self, req: Any, demoting: bool = False) -> bool:
        """Whether admitting `req`'s session must leave the paused sessions' next growth
        free (`paused_reserve`): always under True; under "short" only while the tiers are
        short, that is while a demoted session has not been admitted again (a demotion is
        the evidence), and then only for a session that is not itself one of those.

        Why "short" (RESULTS "Scheduling", `--fit` round 14; fit seeds 101-106): every
        reserve that always applied delayed admissions in the one fit run without
        pressure (web seed 105 1x, mean TCT +3.5-7.1%), where nobody is demoted; and at
        bfcl 1x 25% most of a session's wait is to be admitted again after a demotion
        (1.6-14.4 s a session against 0.1-5.6 s for its first admission), and 33-64% of
        the demotions follow a paused session's next step coming back to a tier that new
        sessions had filled. So while a demoted session waits, new sessions may not take
        the room the paused sessions come back to; a demoted session's own step, work
        under way, is not held back by it (holding it back too lowered bfcl 1x 25% on the
        fit seeds: RESULTS). `demoting`: as it will be once sessions about to be demoted
        are (then the tiers are short)."""
        if self.paused_reserve != PAUSED_RESERVE_SHORT:
            return bool(self.paused_reserve)
        return (bool(self._deferred) or demoting) and req.session_id not in self._deferred

    def _readmit_tokens(self, req: Any, lookup: StepLookup,
                        now: float | None = None) -> tuple[int, int | None]:
        """The tokens of `req`'s session that the gate charges as its own context, and,
        under `readmit_charge` "context", the whole own context that must also fit beside
        the admitted sessions' contexts (else None). A new session's GPU hits are a prefix
        it shares with others (its own blocks do not exist yet): never charged. A demoted
        session's hits are mostly its own context, still cached: "uncached" (the default,
        kept by `--fit` round 10) charges only the rest, as for a new session, so it is
        admitted again while its cached blocks would take the admitted sessions over the
        tiers, and the next shrink demotes another paused session (on the fit seeds at swe
        1x 25%, 67-84% of the demotions: `bench/scheduling_overflow.py`); "full" charges
        its whole own context (less the prefix it shares); "context" charges as
        "uncached" but admits only while its whole own context fits beside the admitted
        contexts (growth not counted). Round 10 (seeds 101-106): "full" lifts swe 1x 25%
        1.77x -> 1.91x but lowers bfcl 1x 25% 1.40x -> 1.33x (its queue grows) and misses
        p95 at 3 distinct runs against 2; "context" leaves swe as it was; the whole-context
        check also binds when the tail guard or Agent Fair Share demotes to make room
        (`_reclaim_due`, `_reclaim_share`); docs/scheduling_fit_history.md has the round.
        "binding": "full" while no other step waits for admission, else "uncached"
        (`_pool_binds`); "binding_short": "full" while no other step waits and its whole
        own context does not fit beside the admitted contexts, else "uncached"
        (`_tiers_short`); "cost": "full" while the recomputation admitting it at its
        uncached charge is expected to cause exceeds its expected wait for room, else
        "uncached" (`_churn_outweighs_wait`, which needs `now`); "cost_leave" /
        "cost_leave_waits": the same trade, `kvsaga.scheduler.leave_forecast`'s."""
        hit = lookup.gpu_hit_blocks * self.manager.block_size
        own = req.num_tokens - hit
        charge = self.readmit_charge
        # Where a room value does not admit on room (`decode_stall`), it charges "uncached".
        if (charge == "uncached" or charge in READMIT_ROOMS or charge in READMIT_ROOM_SWAP
                or req.session_id not in self._deferred):
            return own, None
        whole = req.num_tokens - min(hit, self._shared_tokens(req.session_id))
        if charge in (READMIT_COST, READMIT_COST_ENDS, *READMIT_LEAVE):
            if now is None:
                raise ValueError("readmit_charge 'cost' needs the time of the admission test")
            self._observe_return(req, hit)
            if not self._churn_outweighs_wait(whole, now):
                return own, None
            charge = "full"
        elif charge in (READMIT_BINDING, READMIT_BINDING_SHORT):
            if not self._pool_binds(req):
                return own, None
            if charge == READMIT_BINDING_SHORT and not self._tiers_short(whole):
                return own, None
            charge = "full"
        return (whole, None) if charge == "full" else (own, whole)

    def _tiers_short(self, whole: int) -> bool:
        """Under `readmit_charge` "binding_short": whether a demoted session's whole own
        context (`whole` tokens, less a prefix it shares) does not fit beside the admitted
        sessions' own contexts within the tiers (round 10's "context" test, growth not
        counted): admitting it at its uncached charge would take the admitted contexts
        alone over the tiers, so the next shrink must demote someone.

        Why (RESULTS "Scheduling", `--fit` round 21; fit seeds 101-106): "binding"'s signal
        (`_pool_binds`, nobody else waits) tells that the queue does not bind, not that the
        pool does; without pressure nobody waits either (web seed 103 1x: at 90% of the
        returns), and charging the whole context there held sessions for nothing (p95
        +29%). This second condition asks the tiers themselves. No constant. Opt-in:
        round 21 ranked it first (smallest gain 1.40x -> 1.42x) and its non-thrash check
        rejected it (web seed 103 1x p95 +118%): there the whole context does not fit
        beside the admitted contexts at the same returns where nobody waits (90%), so
        the tiers are short too, and a session held for its whole context waits for an
        admitted one to end (one waited 13.1 s) while the demotions still come."""
        bs = self.manager.block_size
        limit = self.overcommit * self.capacity
        return self._context_blocks() + working_set_blocks(whole, 0.0, 0.0, bs) > limit

    def _observe_return(self, req: Any, hit: int) -> None:
        """Under "cost": once per step a demoted session sends back (`req`, whose prompt
        has `hit` tokens cached on the GPU), the share of its last context's own part (past
        a prefix it shares) no longer cached, into the mean over the returns so far: what
        a demotion has cost in recomputation on this trace (`_churn_s`)."""
        sid = req.session_id
        if self._returns_seen.get(sid) is req:
            return
        self._returns_seen[sid] = req
        s = self.manager.sessions.get(sid)
        if s is None:
            return
        shared = self._shared_tokens(sid)
        last = len(s.block_hashes) * self.manager.block_size - shared
        if last > 0:
            self._return_lost += 1.0 - min(max(hit - shared, 0), last) / last
            self._return_count += 1

    def _churn_outweighs_wait(self, whole: int, now: float) -> bool:
        """Under `readmit_charge` "cost": whether a demoted session coming back, `whole`
        tokens of own context, is held for its whole context ("full") rather than admitted
        at its uncached charge. Only while the tiers are short (its whole context does not
        fit beside the admitted contexts: admitting it makes the next shrink demote paused
        sessions for the blocks it is over, `over`) and the recomputation those demotions
        are expected to cause (`_churn_s`) exceeds the held session's expected wait for
        that room (`_hold_wait_s`), both in seconds. No constant: the prices are the
        eviction policy's cost model's (its `recompute_s`, the default `PrefillCost`
        for a policy without one), the lost share is learned from the returns so far
        (this one's included), the wait is the pause model's (the paused sessions'
        demotion deadlines).

        Why (RESULTS "Scheduling", `--fit` rounds 20-22; fit seeds 101-106): holding a
        returning session for its whole context ends the re-admission churn where the pool
        binds (swe 1x 25%) and costs a wait of unknown length where it does not (web seed
        103 1x: one session held 13.1 s while the churn it saved cost little); neither the
        queue nor the tiers alone told the two apart, so the trade is priced. Opt-in:
        round 22 (RESULTS "Price the re-admission churn"): "cost" never holds on the fit
        seeds (the deadlines are >= `demote_min_s` away, the churn 0.1-1.3 s) and scores
        as the default; "cost_ends" lifts swe 1x 25% 1.77x -> 1.83x and leaves web seed
        103 1x as it was, but its smallest gain is 1.39x (bfcl 1x 25%) against 1.40x, so
        the rule kept the default (its non-thrash figures: swe seed 103 1x p95 +6.1%)."""
        bs = self.manager.block_size
        over = (self._context_blocks() + working_set_blocks(whole, 0.0, 0.0, bs)
                - self.overcommit * self.capacity)
        if over <= 0 or not self._return_count:
            return False
        paused = [sid for sid, i in self.sessions.items() if not i.active]
        if self.readmit_charge in READMIT_LEAVE:
            return self._leave_trade(paused, over, now)
        churn = self._churn_s(paused, over)
        if self.readmit_charge == READMIT_COST_ENDS:
            return churn > self._ends_wait_s(over, now)
        return churn > self._hold_wait_s(paused, over, now)

    def _churn_s(self, paused: Sequence[str], over: float) -> float:
        """Seconds of recomputation expected from admitting a returning session `over`
        blocks beyond the tiers: the paused sessions the shrink demotes first
        (`_demotion_order`) until their contexts free `over` blocks, each context's mean
        lost share (`_observe_return`) recomputed after the part kept, at the eviction
        policy's prices."""
        cost = getattr(self.manager.policy, "cost", None)
        if not hasattr(cost, "recompute_s"):
            cost = PrefillCost()
        lost = self._return_lost / self._return_count
        total, freed = 0.0, 0
        for sid in self._demotion_order(paused):
            if freed >= over:
                break
            i = self.sessions[sid]
            ctx = max(i.context - i.shared, 0)
            n = round(lost * ctx)
            total += cost.recompute_s(n, i.context - n)
            freed += self._own_blocks(i)
        return total

    def _own_blocks(self, info: Any) -> int:
        """Blocks of an admitted session's own context (past a prefix it shares)."""
        return -(-max(info.context - info.shared, 0) // self.manager.block_size)

    def _ends_wait_s(self, over: float, now: float) -> float:
        """Under "cost_ends": seconds until `over` blocks of admitted contexts end, at the
        rate admitted sessions' own contexts have left the tiers by their sessions' ends
        since the first admission (learned on the trace; inf before the first end)."""
        if not self._ended_blocks or now <= self._ends_since:
            return math.inf
        return over * (now - self._ends_since) / self._ended_blocks

    def _hold_wait_s(self, paused: Sequence[str], over: float, now: float) -> float:
        """Seconds a returning session held for its whole context is expected to wait for
        `over` blocks: until enough paused sessions, earliest deadline first, pass their
        demotion deadlines (`demote_at`: the pause model's expected pause, scaled), when
        `_demote` frees their contexts; inf when they never free enough."""
        freed = 0
        for sid in sorted(paused, key=lambda x: self.sessions[x].demote_at):
            i = self.sessions[sid]
            freed += self._own_blocks(i)
            if freed >= over:
                return max(i.demote_at - now, 0.0)
        return math.inf

    def _pool_binds(self, req: Any) -> bool:
        """Under `readmit_charge` "binding": whether the pool, not the queue, binds the
        re-admission of the demoted session `req` belongs to: no other step waits for
        admission (new or demoted, any tenant); `req` itself may. Then it is charged its
        whole context ("full"), else only its uncached part ("uncached").

        Why (RESULTS "Scheduling", `--fit` round 20; fit seeds 101-106): "full" ends the
        re-admission churn where the pool binds (swe 1x 25%: a demoted session admitted
        again with its cached context takes the admitted sets over the tiers, the next
        finish's shrink demotes another paused session, whose context is recomputed;
        round 10: 1.77x -> 1.91x) but lowers bfcl 1x 25% (1.40x -> 1.33x), where other
        sessions wait at most re-admissions and most demotions follow a queued step's
        growth, not a re-admission (`bench/scheduling_overflow.py`); held there, a
        session waits and the seeds recompute more under "full", not less (by inference,
        not traced: others take the room it waits for while its deferred blocks go). With
        nobody else waiting, nobody can take the room it waits for, and admitting it
        would only displace an admitted session. No constant: the signal is the queue.
        Opt-in: round 20 ranked it first (bfcl 1x 25% 1.40x -> 1.45x) and its non-thrash
        check rejected it: without pressure nobody else waits either, and holding a
        session there costs a wait and saves nothing (web seed 103 1x p95 +29%), so the
        signal tells that the queue does not bind, not that the pool does.
        """
        n = 0
        for q in self._pending.values():
            n += len(q)
            if n > 1:
                return False
        return n == 0 or req in self._pending.get(req.tenant, ())

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

    # -- working sets ---------------------------------------------------------------------
    def _working_set(self, workflow: str, context: int, steps_done: int,
                     tool: str | None = None, phase: str = "admitted") -> int:
        """Blocks a session is predicted to hold over its next steps: its own context (not
        a prefix shared with others) plus its predicted growth (`_growth_tokens`), times
        the calibration's factor for `phase` when `growth_quantile` is on ("queued": the
        context is the last finished step's; "admitted": the current step's prompt;
        `kvsaga.scheduler.growth_calibration`); capped at the tiers' capacity."""
        growth = self._growth_tokens(workflow, steps_done, tool, phase == "admitted")
        if self._calibration is not None:
            growth *= self._calibration.factor(workflow, tool if self.tool_growth else None,
                                               phase)
        blocks = working_set_blocks(context, 1.0, growth, self.manager.block_size)
        return min(blocks, self.capacity)

    def _growth_tokens(self, workflow: str, steps_done: int, tool: str | None,
                       on_prompt: bool = False) -> float:
        """Tokens of growth predicted, uncalibrated: the workflow's mean growth per step
        over `horizon_steps` steps (fewer when the Agent Execution Graph expects fewer
        steps left), the first of them predicted from `tool`, the tool of its last pause,
        when `tool_growth`; under `growth_charge` "remaining" the first of a step admitted
        on its prompt (`on_prompt`) is its expected reply (`_reply_tokens`)."""
        horizon = self.horizon_steps
        graph = self._graph()
        if graph is not None:
            horizon = min(horizon, max(graph.mean_steps(workflow) - steps_done, 1.0))
        first = self._growth.mean(workflow, tool) if self.tool_growth and tool else None
        if on_prompt and self.growth_charge in ON_REPLY:
            first = self._reply_tokens(workflow, tool, first)
        return predicted_growth(horizon, self._growth.mean(workflow), first)

    def _reply_tokens(self, workflow: str, tool: str | None,
                      otherwise: float | None) -> float | None:
        """What an admitted step of `workflow` (after a pause on `tool`) is expected to add
        to its prompt: the mean reply learned from finished steps (per tool under
        `tool_growth`); `otherwise` until the workflow's first reply was observed."""
        if workflow not in self._reply.by_workflow:
            return otherwise
        return self._reply.mean(workflow, tool if self.tool_growth else None)

    def _growth_var(self, workflow: str, tool: str | None, on_prompt: bool) -> float:
        """The variance of the growth a session of `workflow` still adds before its next
        finish: an admitted step's reply under "remaining" (once observed), else the
        growth of a whole step (observation and reply), per tool under `tool_growth`."""
        t = tool if self.tool_growth else None
        if (on_prompt and self.growth_charge in ON_REPLY
                and workflow in self._reply.by_workflow):
            return self._reply.var(workflow, t)
        return self._growth.var(workflow, t)

    def _reserve_blocks(self, extra_var: float = 0.0) -> int:
        """Blocks `growth_reserve` keeps free: z x the standard deviation of the admitted
        sessions' summed growth still to come (independent steps: their variances add),
        with `extra_var` more (a session about to be admitted)."""
        sd = math.sqrt(max(self._committed_var + extra_var, 0.0))
        return math.ceil(self.growth_reserve * sd / self.manager.block_size)

    def _observe_reply(self, info: Any, context: int) -> None:
        """The admitted session `info`'s step finished with `context` tokens: what it added
        to its prompt (its reply) to the reply table (call before `info` is updated)."""
        if info.on_prompt:
            self._reply.observe(info.workflow, max(context - info.context, 0),
                                info.tool if self.tool_growth else None)

    def _calibrate(self, info: Any, context: int) -> None:
        """A step of the admitted session `info` finished with `context` tokens: its growth
        from the last finish (the basis of the charge while it was queued) and from its
        prompt (while admitted), each against the uncalibrated prediction, to the
        calibration (call before `info` is updated for the finish)."""
        pred = self._growth_tokens(info.workflow, info.steps, info.tool)
        tool = info.tool if self.tool_growth else None
        cal = self._calibration
        if info.last_context is not None:
            cal.observe(info.workflow, tool, "queued", context - info.last_context, pred)
        cal.observe(info.workflow, tool, "admitted", context - info.context, pred)

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

    def _set_blocks(self, info: Any) -> None:
        """Charge the session's working set; a paused one only its context, unless
        `paused_growth` (it grows only once its next step comes)."""
        own = info.context - info.shared
        extra = 0
        if info.active or self.paused_growth:
            new = self._step_blocks(info)
        else:
            new = min(working_set_blocks(own, 0.0, 0.0, self.manager.block_size),
                      self.capacity)
            if self.paused_reserve:  # the growth it is not charged, kept free at admission
                extra = self._working_set(info.workflow, own, info.steps, info.tool,
                                          "queued") - new
        self._paused_extra += extra - info.extra
        info.extra = extra
        self._committed += new - info.blocks
        ctx = -(-max(own, 0) // self.manager.block_size)  # (`WaitCauses._context_blocks`)
        self._context_total += ctx - info.ctx
        info.ctx = ctx
        self._tenant_blocks[info.tenant] = self._tenant_blocks.get(info.tenant, 0) + (
            new - info.blocks)
        info.blocks = new
        if self.growth_reserve:  # its growth still to come, paused or not (`_reserve_blocks`)
            var = self._growth_var(info.workflow, info.tool, info.active and info.on_prompt)
            self._committed_var += var - info.var
            info.var = var

    def _step_blocks(self, info: Any) -> int:
        """The working set of an active (or, under `paused_growth`, paused) admitted session
        `info`: its context plus its step's predicted growth (`_working_set`). Under
        `growth_charge` "once", a step admitted on its prompt after a finish of the session
        is charged max(prompt, last finish's context + the growth predicted from it): the
        growth from one finish to the next is the tool's observation and the reply, and the
        prompt already holds the observation, so "step"'s prompt + that growth counted the
        observation twice (once arrived, once predicted). On the fit seeds 101-106 at bfcl 1x
        25% a running step adds 3% of that growth to its prompt (sums over every finish),
        and 34% of the demotions after a queued step's charge (142 of 422) would not have
        happened with the growth counted once (`bench/scheduling_charge_split.py`); but
        that over-charge is the only room "step" keeps for paused contexts, and "once"
        fails the non-thrash check against it, so it is opt-in (RESULTS "Scheduling",
        "Count a step's predicted growth once"). A session admitted anew (no finish
        since its admission) has no last finish to count from: prompt + growth, as before;
        nor has a preempted compacted step's retry (charged below its last finish's context,
        `_preempted_charge`: the blocks past it disowned), was charged that old context."""
        own = info.context - info.shared
        phase = "admitted" if info.on_prompt else "queued"
        if (self.growth_charge != "once" or not info.on_prompt or info.last_context is None
                or info.context < info.last_context):
            return self._working_set(info.workflow, own, info.steps, info.tool, phase)
        at_end = self._working_set(info.workflow, info.last_context - info.shared,
                                   info.steps, info.tool, "queued")
        return max(min(working_set_blocks(own, 0.0, 0.0, self.manager.block_size),
                       self.capacity), at_end)

    def _unqueue(self, info: Any, s: Any, now: float) -> None:
        """The admitted session `info`'s (manager session `s`) waiting step was cancelled
        before it ran (the engine's abort of a waiting, or preempted, request: no
        `finish_step`): it is paused as at its last finish (context, unqueued charge), and
        nothing is learned (reply, growth, step count, cycle), as no step finished. A
        preempted compacted step's (its charge below the last finish's context) goes back to
        the context the session holds, not the old one its preempt disowned (was: charged
        the old context again, and its next step with it: review s56 diffcompact2 LOW-1)."""
        if info.last_context is not None:
            if info.context < info.last_context:  # (`_preempted_charge` lowered it)
                info.last_context = min(info.last_context,
                                        max(info.context, len(s.token_ids)))
            info.context = info.last_context
        info.active = info.on_prompt = False
        if info.demote_at == math.inf:  # admitted, then preempted: its pause starts now
            info.demote_at = demote_deadline(now, self._expected_pause(s), self.demote_factor,
                                             self.demote_min_s)
        self._demote_at = min(self._demote_at, info.demote_at)
        self._set_blocks(info)

    def _queue_charge(self, info: Any, req: Any) -> None:
        """An admitted session's next step `req` queued: charge its growth again. Under
        `growth_charge` "prompt" the step is charged on its prompt, known now (the tool's
        observation in it), plus its expected reply, as once admitted ("remaining"'s
        charge); else on its last finish's context plus the growth predicted from it.
        Why "prompt" (opt-in: `--fit` round 24 ranked it first, smallest gain 1.51x, and
        its non-thrash check rejected it, swe seed 103 1x mean +5.5%): at bfcl 1x 25% on
        the fit seeds, with the growth counted once, 45% of the demotions after a queued
        step's charge (188 of 422) still come from predicted growth the realized contexts
        did not reach, while the observation that prediction stands for is already known
        when the step queues (`bench/scheduling_charge_split.py`)."""
        if self.growth_charge == "prompt" and req.num_tokens >= info.context:
            info.context = req.num_tokens
            info.on_prompt = True
        self._set_blocks(info)
