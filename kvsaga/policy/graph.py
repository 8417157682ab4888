"""`graph`: eviction by expected loss, predicted by the Agent Execution Graph.

Every evictable block is priced by the loss rate its eviction causes:

    loss(b) = P(b is reused) * rebuild_s(b) / E[seconds until b is reused]

and the lowest loss goes first: a block needed soon, surely and at great cost stays; one
needed late, maybe, or cheaply goes. rebuild_s is the marginal prefill of the block behind
its surviving head (`CostModel.recompute_s(block_size, position * block_size)`).

Where P and the time come from:
- a paused session's blocks: the `ExecutionGraph` prediction for its workflow and the tool it
  waits on, given the time already waited (`predict`); a hint wins: `expected_s` sets the
  time (until the tool is late), `last_step` sets P = 0. To that time the policy adds the
  session's expected **admission wait** (below);
- a session whose tool has returned (`resume_hint`) and which waits for admission: P = 1,
  and the time is its expected admission wait less the time it has waited so far;
- a preempted session's blocks: P = 1, needed at once (its retry is queued);
- a plain block (a prefix shared by several sessions): P = uses / (uses + 1) (its creator
  counts as a use), and the time is the larger of the block's own mean gap between hits (an
  EMA; before its second hit, the arrival interval of its workflow's sessions) and the time
  since it was last used;
- an ended session's private blocks: P = 0 (first victims).

Admission wait. A block is read when its session's next step is *admitted*, not when its
tool returns; in between the step waits in the engine's queue. Under KV pressure that wait
can exceed the tool's pause, and a step whose context is resident is admitted at once
(warm-first admission) while one whose context was evicted waits its turn. Priced by the
tool pause alone, a just-paused session ranks below one already queued (its tool done), so
graph would evict contexts whose next use is near in favour of cold queued ones further
still.
So the expected time until reuse is `pause residual + W(state)`, where W is the mean wait
from the resume hint to the step's start, learned online (a running mean that forgets, see
`wait_alpha`) separately for **warm** resumes (at the hint, the session's cached blocks
covered more than half its context, so its middle block, which warm-first admission checks,
is resident) and **cold** ones; a queued session's W shrinks by the time it has waited (FIFO:
the longer it has queued, the nearer its turn). With `residual_wait` the queued session's W
is instead the observed mean residual wait given the time it has queued
(`WaitSamples.residual` over the recent warm or cold waits): no FIFO assumption, so a step
that has queued longer than most expects to queue longer still. Without resume hints both
Ws stay 0 and the pause fits, measured from the pause to the step's start, already include
the wait.

Demotion. A session that the scheduler demoted (`session_deferred`) runs its next step only
once admitted again, which takes as long as the admitted sessions' steps and pauses, not the
tool's: graph learns how long demotions last (demotion to step start, `WaitSamples`) and
prices a demoted session's blocks by the later of the graph's prediction and the mean
residual of the demotions seen, given how long this one has lasted (not as needed at once:
docs/policies.md says what that cost on swe). With `demoted_release` (session 32; the
default since the tune's walk chose it that session, docs/policies.md "Session 32, the
lead") a demoted session whose tool has not returned is released instead, as `ttl` does:
P(reuse) is taken as 0 (its blocks go after the dead ones, tail first, before every live
session's) until its tool returns (`resume_hint`), and from then on it is priced as above: a
demoted session whose tool is back is re-admitted as soon as there is room, so it is the one
to keep (docs/policies.md, "Session 32"). How the waits are recorded and read
(`residual_wait`, `median_returns`, `spread`): kvsaga/policy/return_forecast.py; a demoted
session's residual on its context's size's clock (`demoted_size`, opt-in):
kvsaga/policy/size_effect.py; by its place in the scheduler's admission queue
(`admission_rank`, opt-in): kvsaga/policy/admission_rank.py; by the room it lacks
(`admission_room`, opt-in), or, still paused on its tool, by the room it would lack
(`paused_room`, opt-in): kvsaga/policy/admission_room.py.

Indexed (`GroupedPolicy`): a session's rate P / E[time] reads its elapsed pause and its
time queued rounded down to the grid (`elapsed_grid`), so it changes at grid points, at the
end of a hinted pause, and on the session's events; a block's key is that rate times the
block's rebuild cost.

Self-correction. The graph's time to reuse is checked against what happens: at each pause
the policy notes its prediction (pause residual + admission wait), and when the session
comes back it learns log(observed / predicted), per (workflow, tool) and per workflow. Every
later prediction for that tool is multiplied by exp of the mean error, shrunk towards the
workflow's mean and that towards 0 by `calib_prior` pseudo-observations, so a workflow or
tool whose pauses or queueing the graph misjudges (a workflow never seen in tuning, a
queue the warm/cold wait model does not fit) is corrected from its own data, and one with
no data is left alone. Hinted pauses are not corrected (hints win).

Within a session the tail goes before the head (one stream per session, tail first); the
plain cache drains in LRU order, priced by its oldest block. Each victim is offloaded when a
host tier exists, the block may be reused and reloading it is cheaper than recomputing it;
otherwise it is discarded.
"""

from __future__ import annotations

import math

from kvsaga._validate import check_number
from kvsaga.policy import graph_fast
from kvsaga.policy.aeg import NO_TOOL, ExecutionGraph, FeedsExecutionGraph, Prediction
from kvsaga.policy.base import Action
from kvsaga.policy.bounded import TRACKED_KINDS, TRACKED_WORKFLOWS, touch
from kvsaga.policy.cost import CostModel
from kvsaga.policy.graph_timed import GraphTimedKeys
from kvsaga.policy.groups import DEAD, OWNED, PLAIN, GroupedPolicy
from kvsaga.policy.queue_tells import QueueTells
from kvsaga.policy.return_forecast import ReturnForecast
from kvsaga.policy.size_effect import SizeElasticity
from kvsaga.policy.trust import PredictionTrust, flag

LOG_CLIP = 5.0  # one resume moves a log error by at most this (e^5 = 148x)


def _check_numbers(min_wait_s, plain_interval_s, alpha, prefetch_lead_s, calib_prior) -> None:
    """Refuse a numeric parameter of `GraphPolicy` that is no finite number in its range,
    naming it. Unchecked, each broke a later hook with an error that named none of them
    (JSON policy_args may bring any of them as a str): an infinite `min_wait_s` failed
    every victim search, a str `alpha` raised a TypeError in `step_started` on a shared
    block's fourth hit, and a NaN one made the shared blocks' keys NaN (their order
    undefined)."""
    check_number("min_wait_s", min_wait_s, lambda v: v > 0, "> 0")
    check_number("plain_interval_s", plain_interval_s, lambda v: v > 0, "> 0")
    check_number("alpha", alpha, lambda v: 0 < v <= 1, "in (0, 1]")
    check_number("prefetch_lead_s", prefetch_lead_s, lambda v: v >= 0, ">= 0")
    if calib_prior is not None:
        check_number("calib_prior", calib_prior, lambda v: v > 0, "> 0 (or None)")


class GraphPolicy(GraphTimedKeys, QueueTells, FeedsExecutionGraph, GroupedPolicy):
    """Expected-loss eviction over Agent Execution Graph predictions.

    Args:
        cost: prices rebuilding and reloading (default: `PrefillCost`).
        graph: the execution graph to learn into and predict from (default: a fresh one).
        min_wait_s: floor of every predicted time until reuse (no division by zero).
        plain_interval_s: assumed gap between uses of a plain block with no history.
        alpha: EMA weight of each new gap between uses of a plain block.
        prefetch_lead_s: how long before a paused session's predicted resume its offloaded
            blocks start loading back (on top of the copy's own duration).
        relearn_share: see `GroupedPolicy`.
        calib_prior: pseudo-observations (of no error) that each self-correction factor
            starts from (`correction`); None turns self-correction off.
        trust: learn the log errors of the predicted time to reuse of every session graph
            evicts from, per workflow and state, and multiply the loss rate by the factor
            they call for (`PredictionTrust`, kvsaga/policy/trust.py; its prior is
            `calib_prior`, 4 pseudo-observations when that is None).
        wait_alpha, residual_wait, median_returns, spread, spread_states, demoted_mean: how
            admission and demotion waits are learned and read (`ReturnForecast`, documents
            each).
        demoted_size: price a demoted session's residual demotion by its context's size,
            on the slope of log(demotion length) on log(context blocks) learned from the
            demotions seen (`SizeElasticity`, kvsaga/policy/size_effect.py; prior
            `calib_prior`, 4 when that is None).
        admission_rank: price a demoted session whose step waits for admission by its place
            in the scheduler's queue (`AdmissionRanks`, kvsaga/policy/admission_rank.py).
        admission_room: price it by the room the scheduler lacks for it (`AdmissionRooms`).
        paused_room: price a demoted session paused on its tool by the room its step would
            lack were it queued now (`AdmissionRooms`; kvsaga/policy/queue_tells.py).
        demoted_release: release a demoted session's blocks until its tool returns (loss
            0: after the dead blocks, before every live session's), as ttl does (module
            docstring, "Demotion").
    """

    name = "graph"
    indexed = True

    def __init__(
        self,
        cost: CostModel | None = None,
        graph: ExecutionGraph | None = None,
        min_wait_s: float = 1e-3,
        plain_interval_s: float = 60.0,
        alpha: float = 0.2,
        prefetch_lead_s: float = 0.1,
        wait_alpha: float = 0.02,
        relearn_share: float = 0.125,
        calib_prior: float | None = 4.0,
        residual_wait: bool = True,
        trust: bool = False,
        median_returns: bool = True,
        spread: bool = False,
        spread_states: tuple[str, ...] = ("queued", "demoted"),
        demoted_mean: bool = False,
        demoted_size: bool = False,
        admission_rank: bool = False,
        admission_room: bool = False,
        paused_room: bool = False,
        demoted_release: bool = True,
    ) -> None:
        super().__init__(cost, relearn_share)
        _check_numbers(min_wait_s, plain_interval_s, alpha, prefetch_lead_s, calib_prior)
        self.graph = graph if graph is not None else ExecutionGraph()
        self.min_wait_s = min_wait_s
        self.plain_interval_s = plain_interval_s
        self.alpha = alpha
        self.prefetch_lead_s = prefetch_lead_s
        self._on_host: dict[str, int] = {}  # sessions with blocks offloaded: how many
        self.calib_prior = calib_prior
        # Admission waits (warm and cold) and demotions' lengths, learned and read.
        self.returns = ReturnForecast(residual_wait, wait_alpha, median_returns, spread,
                                      spread_states, calib_prior or 4.0,
                                      demoted_mean=demoted_mean)
        self._ready: dict[str, tuple[float, bool]] = {}  # hinted: (when, warm then)
        self._ctx_blocks: dict[str, int] = {}  # blocks of each paused session's context
        # Self-correction: (workflow, tool or None) -> [resumes, sum of log(observed /
        # predicted)]; per paused session, what was predicted at its pause.
        self._calib: dict[tuple[str, str | None], list] = {}
        self._calib_pending: dict[str, tuple[str, str | None, float, float]] = {}
        # Sessions the scheduler demoted (session_deferred), and since when; and since when
        # each session demoted since its last step start was, kept until its next start,
        # which tells `returns` how long a demotion lasts.
        self._deferred: dict[str, float] = {}
        self._deferred_since: dict[str, float] = {}
        self._learned_waits = 0  # changes of the corrections and admission waits
        # Self-scoring against recency (`trust`): per session evicted from and not yet back,
        # (workflow, state, graph's forecast, recency's, when).
        self.trust = PredictionTrust(calib_prior or 4.0) if flag("trust", trust) else None
        self._trust_pending: dict[str, tuple[str, str, float, float, float]] = {}
        # `demoted_size`: the slope learned, and each demoted session's context at demotion.
        self.size_effect = SizeElasticity(calib_prior or 4.0) \
            if flag("demoted_size", demoted_size) else None
        self._demoted_ctx: dict[str, int] = {}
        self.demoted_release = flag("demoted_release", demoted_release)
        self._init_queue_tells(calib_prior or 4.0, admission_rank, admission_room, paused_room)
        graph_fast.enable(self, GraphPolicy)  # the usual search in one function, counted

    def bind(self, view) -> None:
        super().bind(view)
        n = view.num_gpu_blocks
        # Use history of each block's current content; `_gen` tells a stale record apart.
        self._gen = [-1] * n
        self._uses = [0] * n
        self._last_use = [0.0] * n
        self._interval: list[float | None] = [None] * n
        self._workflow: list[str | None] = [None] * n

    # -- learning -----------------------------------------------------------------------------
    def step_started(self, session, now: float) -> None:
        since = self._deferred_since.pop(session.session_id, None)
        ctx = self._demoted_ctx.pop(session.session_id, None)
        if since is not None:
            self.demotion_ended(max(now - since, 0.0), session.workflow, ctx)
        pending = self._calib_pending.pop(session.session_id, None)
        if pending is not None:
            self._calibrate(*pending, now)
        scored = self._trust_pending.pop(session.session_id, None)
        if scored is not None:
            wf, state, graph_s, recency_s, at = scored
            self.trust.add(wf, state, max(now - at, 0.0), graph_s, recency_s)
        ready = self._ready.pop(session.session_id, None)
        if self._queue_admitted(session, now):  # `QueueTells`
            self._learned_waits += 1
        if pending is not None or ready is not None:
            self._learned_waits += 1  # corrections or admission waits: keys change
        if ready is not None:
            self.returns.admitted(ready[1], max(now - ready[0], 0.0), session.workflow)
        super().step_started(session, now)
        self.graph.step_started(session.session_id, session.workflow, now)
        owner, gen = self.view.block_owner, self.view.block_generation
        for b in session.block_ids:  # the hits: shared blocks record a use
            if owner[b] is None:
                self._record_use(b, gen[b], now, session.workflow)

    def demotion_ended(self, lasted_s: float, workflow: str, context_blocks: int | None
                       ) -> None:
        """A demotion lasted `lasted_s`; with `demoted_size`, of a session holding
        `context_blocks` then: the slope learns it and the record keeps it on the common
        clock (divided by the session's factor), which `_deferred_time` reads back."""
        if self.size_effect is not None and context_blocks is not None:
            self.size_effect.add(context_blocks, lasted_s, workflow, self.min_wait_s)
            lasted_s /= self.size_effect.factor(context_blocks, workflow)
        self.returns.demotion_ended(lasted_s, workflow)

    def _record_use(self, b: int, gen: int, now: float, workflow: str) -> None:
        if self._gen[b] != gen:
            # First hit on this content: count its creator's use too (time unknown).
            self._gen[b], self._uses[b], self._interval[b] = gen, 1, None
        else:
            gap = max(now - self._last_use[b], 0.0)
            i = self._interval[b]
            self._interval[b] = gap if i is None else i + self.alpha * (gap - i)
        self._uses[b] += 1
        self._last_use[b] = now
        self._workflow[b] = workflow

    def step_finished(self, session, now: float, hint) -> None:
        super().step_finished(session, now, hint)
        # The context's size, for `is_warm` (its cached share decides the admission wait).
        sid = session.session_id
        self._ctx_blocks[sid] = len(session.block_ids)
        v = self.views[sid]
        if hint.expected_s is None and not hint.last_step:
            raw = self._predict_session(sid, now, True, True, calibrated=False)[0]
            self._calib_pending[sid] = (v.workflow, v.tool, raw.expected_s, now)

    # -- self-correction ----------------------------------------------------------------------
    def _calibrate(self, workflow: str, tool: str | None, predicted_s: float, paused_at: float,
                   now: float) -> None:
        """A paused session came back: learn log(observed / predicted) time to reuse, per
        (workflow, tool) and per workflow."""
        lo = self.min_wait_s
        r = math.log(max(now - paused_at, lo) / max(predicted_s, lo))
        r = min(max(r, -LOG_CLIP), LOG_CLIP)
        for key in ((workflow, NO_TOOL if tool is None else tool), (workflow, None)):
            # (bounded: the least recently corrected keys go first, kvsaga/policy/bounded.py)
            c = touch(self._calib, key, lambda: [0, 0.0], TRACKED_WORKFLOWS + TRACKED_KINDS)
            c[0] += 1
            c[1] += r

    def correction(self, workflow: str, tool: str | None) -> float:
        """Factor on the graph's predicted time to reuse: exp of the mean log(observed /
        predicted) of this workflow's tool, shrunk towards the workflow's, which is shrunk
        towards 1, each by `calib_prior` pseudo-observations: no data, no correction."""
        k0 = self.calib_prior
        wf = self._calib.get((workflow, None))
        m = wf[1] / (wf[0] + k0) if wf else 0.0
        kt = self._calib.get((workflow, NO_TOOL if tool is None else tool))
        if kt:
            m = (kt[1] + k0 * m) / (kt[0] + k0)
        return math.exp(m)

    def resume_hinted(self, session, now: float) -> None:
        super().resume_hinted(session, now)
        sid = session.session_id
        v = self.views.get(sid)
        if v is not None and v.imminent and sid not in self._ready:
            self._ready[sid] = (now, self.is_warm(sid))

    def resume_withdrawn(self, session, now: float) -> None:
        """The hinted step was aborted unscheduled: no admission wait to learn from."""
        super().resume_withdrawn(session, now)
        self._ready.pop(session.session_id, None)

    def session_deferred(self, session, deferred: bool, now: float) -> None:
        """A demoted session's blocks are needed once it is admitted again and its step
        starts: `deferred_time`."""
        sid = session.session_id
        if deferred:
            self._deferred.setdefault(sid, now)
            self._deferred_since.setdefault(sid, now)
            if self.size_effect is not None:
                self._demoted_ctx.setdefault(sid, len(session.block_ids))
        else:
            self._deferred.pop(sid, None)
        if sid in self.groups:
            self._dirty.add(sid)

    def session_ended(self, session, now: float) -> None:
        self._deferred.pop(session.session_id, None)
        self._deferred_since.pop(session.session_id, None)
        self._demoted_ctx.pop(session.session_id, None)
        self._queue_forget(session.session_id)
        self._on_host.pop(session.session_id, None)
        self._ready.pop(session.session_id, None)
        self._ctx_blocks.pop(session.session_id, None)
        self._calib_pending.pop(session.session_id, None)
        self._trust_pending.pop(session.session_id, None)
        super().session_ended(session, now)

    # -- predictions --------------------------------------------------------------------------
    def is_warm(self, session_id: str) -> bool:
        """Whether most of a paused session's context is resident: its cached blocks cover
        more than half of it (tails go first, so then its middle block is cached too)."""
        g = self.groups.get(session_id)
        return g is not None and 2 * len(g) > self._ctx_blocks.get(session_id, 0)

    def expected_wait(self, session_id: str, now: float) -> float:
        """Expected seconds from now to the session's step's admission (learned, by whether
        the session is warm now), given what it has already queued (`residual_wait`)."""
        return self._expected_wait(session_id, now, True)[0]

    def _workflow_of(self, session_id: str) -> str | None:
        v = self.views.get(session_id)
        return None if v is None else v.workflow

    def _since(self, t0: float, now: float, exact: bool) -> tuple[float, float]:
        if exact:
            return max(now - t0, 0.0), math.inf
        return self.elapsed_since(t0, now)

    def _expected_wait(self, session_id: str, now: float, exact: bool) -> tuple[float, float]:
        warm = self.is_warm(session_id)
        ready = self._ready.get(session_id)
        queued, until = (0.0, math.inf) if ready is None else self._since(ready[0], now, exact)
        wf = self._workflow_of(session_id)
        return self.returns.admission_left(warm, queued, wf, ready is not None), until

    def predict_session(self, session_id: str, now: float, admission: bool = True) -> Prediction:
        """P(reuse) and expected seconds until the session's blocks are needed again.

        Args:
            session_id: the session.
            now: the current time.
            admission: add the expected admission wait (`expected_wait`) to the pause; False
                gives the time until the tool returns (what a prefetch races against).
        """
        return self._predict_session(session_id, now, admission, True)[0]

    def _predict_session(self, session_id: str, now: float, admission: bool, exact: bool,
                         calibrated: bool = True, hedged: bool = False
                         ) -> tuple[Prediction, float]:
        """`predict_session`, with times read exactly or on the grid (`elapsed_grid`), and
        the time by which the prediction must be made again (inf: only on events)."""
        v = self.views.get(session_id)
        if v is None or v.running:
            return Prediction(1.0, self.min_wait_s), math.inf
        wait, until = self._expected_wait(session_id, now, exact) if admission \
            else (0.0, math.inf)
        if v.imminent:
            return Prediction(1.0, max(wait, self.min_wait_s)), until
        if v.hint.last_step:
            return Prediction(0.0, math.inf), math.inf
        e, until_e = self._since(v.paused_at, now, exact)
        until = until_e if until_e < until else until  # min(until, until_e): keyed per session
        x = v.hint.expected_s
        if x is not None and now - v.paused_at < x:
            kind = NO_TOOL if v.tool is None else v.tool
            return (Prediction(self.graph.resume_share(v.workflow, kind), x - e + wait),
                    min(until, v.paused_at + x))
        p = self.graph.predict(v.workflow, v.tool, e)
        t = p.expected_s + wait
        if calibrated and admission and self.calib_prior is not None:  # learned with the wait
            t *= self.correction(v.workflow, v.tool)
        if hedged and self.trust is not None and session_id not in self._deferred:
            t /= self.trust.factor(v.workflow, "paused")  # (one hedge: demoted in `_graph_time`)
        return Prediction(p.p_resume, t), until

    def predict_plain(self, block_id: int, now: float) -> Prediction:
        """P(reuse) and expected seconds until a plain block is needed by any session."""
        b = block_id
        fresh = self._gen[b] == self.view.block_generation[b]
        uses = self._uses[b] if fresh else 0
        last = max(self._last_use[b] if fresh else 0.0, self._cached_at[b])
        interval = self._interval[b] if fresh else None
        if interval is None:
            wf = self._workflow[b] if fresh else None
            interval = (self.graph.arrival_interval(wf) if wf is not None else None)
            if interval is None:
                interval = self.plain_interval_s
        wait = max(interval, now - last, self.min_wait_s)
        return Prediction(uses / (uses + 1.0), wait)

    def action(self, block_id: int, now: float) -> Action:
        if not self.view.num_host_blocks or self._where[block_id] == DEAD:
            return Action.DISCARD
        if self._where[block_id] == OWNED:
            p = self.predict_session(self._owner[block_id], now).p_resume
        elif self._where[block_id] == PLAIN:
            p = self.predict_plain(block_id, now).p_resume
        else:
            p = 1.0  # already gone from our books: assume it matters
        if p <= 0 or self.cost.reload_s(1) >= self.block_cost(self._pos[block_id]):
            return Action.DISCARD
        if self._where[block_id] == OWNED:
            sid = self._owner[block_id]
            self._on_host[sid] = self._on_host.get(sid, 0) + 1
        return Action.OFFLOAD

    def prefetch_candidates(self, now: float) -> list[str]:
        """Paused sessions with offloaded blocks, likely to resume within the time their
        reload takes plus `prefetch_lead_s`. Each is named once per offload."""
        out = []
        for sid, n in list(self._on_host.items()):
            v = self.views.get(sid)
            if v is None or v.running:
                del self._on_host[sid]  # gone, or its begin_step loads from the host itself
                continue
            p = self.predict_session(sid, now, admission=False)
            if p.p_resume >= 0.5 and p.expected_s <= self.cost.reload_s(n) + self.prefetch_lead_s:
                del self._on_host[sid]
                out.append(sid)
        return out

    # -- keys: the loss itself ----------------------------------------------------------------
    def _session_base(self, sid: str, group: list[int], now: float
                      ) -> tuple[float, float]:
        p_resume, wait, until = self._graph_time(sid, now, not self.indexed, True)
        return p_resume / wait, until

    def _graph_time(self, sid: str, now: float, exact: bool, hedged: bool
                    ) -> tuple[float, float, float]:
        """(P(reuse), expected seconds until the session's blocks are read, the time by
        which to ask again), demotion included; `hedged`: divided by `trust`'s factor (the
        rate's, for the forecast's own errors), else the forecast itself."""
        if self.demoted_release and sid in self._deferred and not self.views[sid].needed_now:
            return 0.0, math.inf, math.inf  # released until its tool returns (an event)
        p, until = self._predict_session(sid, now, True, exact, hedged=hedged)
        wait = p.expected_s
        wait = self.min_wait_s if self.min_wait_s > wait else wait  # max(), without a call
        if sid in self._deferred:
            wait, until_d = self._deferred_time(sid, wait, now, exact)
            until = min(until, until_d)
        if hedged and self.trust is not None:  # (paused: inside `_predict_session`)
            state = "demoted" if sid in self._deferred else (
                "queued" if self.views[sid].imminent else None)
            if state is not None:
                wait /= self.trust.factor(self.views[sid].workflow, state)
        return p.p_resume, wait, until

    def _trust_state(self, sid: str, now: float) -> str | None:
        """Which `PredictionTrust` state prices a session: None for a running one, one on
        its last step, and one within a hinted pause (hints win; the blend leaves them)."""
        v = self.views.get(sid)
        if v is None or v.running:
            return None
        if sid in self._deferred:
            return "demoted"
        if v.imminent:
            return "queued"
        x = v.hint.expected_s
        if v.hint.last_step or (x is not None and now - v.paused_at < x):
            return None
        return "paused"

    def choose_victims(self, num_blocks: int, now: float, runs: bool = False
                       ) -> list[int] | None:
        """The search, and with `trust`, each session it takes from (and was not taken
        from since its last step) noted with graph's forecast, to be scored when it is back.
        An infinite forecast (a demoted session released until an event, a hint of
        `expected_s=inf`) is not one: no finite return scores against it, and it is not
        noted. (`runs`, without `trust`: graph_fast.py `search`.)"""
        if self.trust is None:
            return graph_fast.search(self, num_blocks, now, runs)
        victims = graph_fast.search(self, num_blocks, now)  # (or the general path)
        if not victims:
            return victims
        plan, pending = self._plan if self.indexed else None, self._trust_pending
        if plan is not None:  # this search's whole runs off tails: no walk over blocks
            sids = [sid for sid, _ in plan[1]]
        else:
            where, owner = self._where, self._owner
            sids = list(dict.fromkeys(owner[b] for b in victims if where[b] == OWNED))
        for sid in sids:
            if sid not in pending:
                state = self._trust_state(sid, now)
                if state is not None:
                    v = self.views[sid]
                    graph_s = self._graph_time(sid, now, True, False)[1]
                    if graph_s < math.inf:  # (0 <= graph_s: never NaN)
                        idle = max(now - v.paused_at, self.min_wait_s)
                        pending[sid] = (v.workflow, state, graph_s, idle, now)
        return victims

    def _keys_token(self) -> tuple[int, int, int]:
        return (self.graph.version, self._learned_waits,
                0 if self.trust is None else self.trust.version)

    def deferred_time(self, session_id: str, predicted_s: float, now: float) -> float:
        """Expected seconds until a demoted session's blocks are read, given the graph's
        `predicted_s`: the later of it and how much longer the demotions seen say one that
        has lasted this long still lasts (`ReturnForecast.demoted_time`)."""
        return self._deferred_time(session_id, predicted_s, now, True)[0]

    def _deferred_time(self, sid: str, predicted_s: float, now: float, exact: bool
                       ) -> tuple[float, float]:
        lasted, until = self._since(self._deferred[sid], now, exact)
        wf = self._workflow_of(sid)
        clock = 1.0 if self.size_effect is None else \
            self.size_effect.factor(self._ctx_blocks.get(sid, 0), wf)
        t, seen = self.returns.demoted_time(predicted_s, lasted, wf, self.min_wait_s, clock)
        t = self._queue_time(sid, wf, t)
        return t, (until if seen else math.inf)

    # -- keys: (0, 0) dead, (1, loss) sessions and other plain, (2, loss) shared prefix in use
    def _entry_key(self, base: float, position: int) -> tuple[int, float]:
        return 1, base * self.block_cost(position)

    def _keys_nonincreasing(self) -> bool:
        # Tails first: rebuild costs fall along a session's blocks when they rise with
        # position, and the session's rate is >= 0.
        return self._costs_rise

    def _plain_key(self, block_id: int, now: float) -> tuple[int, float]:
        p = self.predict_plain(block_id, now)
        loss = p.p_resume * self.block_cost(self._pos[block_id]) / p.expected_s
        return (2 if self.shared_in_use(block_id, now) else 1), loss

    def shared_in_use(self, block_id: int, now: float) -> bool:
        """A plain block that several steps hit, last within twice its mean gap between
        hits: a prefix that live sessions still read. Its own rebuild is cheap, but every
        cached context behind it is useless without it, which its loss does not count, so
        it goes after every session's blocks."""
        b = block_id
        if self._gen[b] != self.view.block_generation[b] or self._uses[b] < 2:
            return False
        i = self._interval[b]
        return i is not None and now - self._last_use[b] <= 2.0 * i

    def _dead_key(self, block_id: int, now: float) -> tuple[int, float]:
        return 0, 0.0
