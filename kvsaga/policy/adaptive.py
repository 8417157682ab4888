"""`adaptive`: follow, online, the ranking whose victims come back least.

No fixed ranking wins everywhere: on held-out traffic `graph` beats the baselines on some
traces and loses to plain `lru` on others (bench/RESULTS.md). `adaptive` runs several
rankings side by side (the *experts*: by default `graph` and `ttl`, each a full policy fed
the same observer calls and hooks) and evicts, at each victim search, the victims of the
expert with the least measured regret. The experts, `realized` and `shadow_share` are what
`python bench/policies.py --tune` picked among its settings (bench/RESULTS.md, "Eviction
policies: tuning"; fourteenth session: graph+ttl with realized regret, 1.50x worst over the
fit set's pressured cases, against 1.71x for graph+ttl+saga+lru, whose saga and lru
turns led 18-53% of the evictions on four of the six fit cases it lost most, and 1.93x /
1.52x for ghost regret over graph and ttl with shadows naming an eighth / all of each
search's victims). No setting beat `graph` alone (1.50x with fewer cases above 1.0x), so
`graph` stayed the default policy then. Fifteenth session: `shadow_cache` (below; graph+ttl,
`switch_margin` 0.1, `shadow_memory` 8) ties `graph` on the rule's first two keys (worst
1.50x, 28 of 71 pressured fit cases above 1.0x) and recomputes less over them (13.022M
tokens against 13.168M), so it is adaptive's setting; it did not become the default policy:
the margin is 1.1% of the tokens, well inside the swing that a pool a few blocks larger gives
one case (bench/RESULTS.md, "Why adaptive lost to both its experts"), and the tune rule's tie
band (bench/policies.py `TIE_SHARE`) keeps the incumbent `graph` among such equals.

The experts that group blocks by session (`graph`, `ttl`, `saga`) track the same blocks in
the same groups, so they keep one copy between them (groups.py `share_blocks`): the pool's
calls go to the first, whose bookkeeping marks the sessions they touch dirty in every one of
them; their keys, indexes and statistics stay their own.

Regret is measured on ghost lists, as ARC and LeCaR do for recency and frequency. At every
search the leader names the `n` victims it evicts and each shadow expert the first
`ceil(shadow_share n)` of its own ranking, skipping blocks it already named that are still
resident (so each walks down its ranking as if it had evicted them); each named full block
goes into that expert's ghost list (by content hash, with its rebuild cost). When a step
begins, every block of its prompt that sits in an expert's ghost list is a block that
expert's eviction would have made a step rebuild: the expert is charged its rebuild cost.
A ghost list keeps the last `ghost_factor` x pool-size names; older ones fall out uncharged
(they were not needed for a long time: good victims).

Score of expert i = decayed rebuild seconds charged / decayed blocks named, shrunk towards
the pooled score of all experts by `prior_blocks` pseudo-names (no data: every expert has the
pooled score, and the first in `experts` leads). Both sums decay by exp(-names /
`memory_blocks`) so a change of workload shows within a few pool turnovers. The lowest score
leads; the leader must be beaten by `switch_margin` (a share of the pooled score) to change,
so that noise does not flip it at each search.

What the score does not see: a shadow expert's victims are the real cache's ranking, not
the cache it would have held (its earlier choices did not happen); admission and timing that
follow from different evictions are not replayed. Partial (unhashed) tail blocks are not
tracked. Offload choices and prefetches follow the leader.

`realized=True` judges each expert only by what happened while it led, so that those
knock-on effects count. The leader alone names victims (no shadows); experts take turns
leading for an *epoch* (`epoch_pools` pool sizes of named victims) until each has led once,
then each epoch goes to the lowest score, where an expert's score is the rebuild seconds of
its own victims that steps read again, per prompt block read by steps started while it led
(both decayed and shrunk to the pooled rate as above). A ranking that evicts contexts which
then queue longer and push out others shows as more rebuilds per block read. Its evidence is
confounded by the traffic of the epochs each expert happened to lead: on swe+bfcl seed 912 at
60% each expert led one epoch inside the one burst of pressure, their scores were equal to
four places, and graph, elected back onto a cache ttl had shaped, lost 6,303 blocks in the
rest of the burst against 4,300 for graph alone and 3,099 for ttl alone (bench/RESULTS.md,
"Why adaptive lost to both its experts").

`shadow_cache=True` replaces both kinds of evidence with miniature simulation
(kvsaga/policy/shadow.py): a second instance of each expert ranks a full-size shadow pool of
its own, fed the real steps; the shadow charges the rebuild seconds of a step's earlier
context that it no longer holds, so each expert is judged on the cache *its own* choices
would have kept, under the same traffic, at every step rather than in turns. Scores are
those seconds, decayed by exp(-prompt blocks read / `shadow_memory` pool sizes); the leader
changes when another expert's score is below (1 - `switch_margin`) of its own (hysteresis:
a switch hands the newcomer a cache shaped by another ranking). What it cannot see is the
timing: a ranking's misses lengthen steps and change the schedule (admission, overlap),
and the shadows replay the schedule of the real run only. The shadows are evidence, never
part of the real cache: the real experts get each hook first, and a shadow that raises is
logged once and the shadows are dropped (the current leader keeps the lead).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from itertools import compress
from operator import not_

from kvsaga._validate import check_number
from kvsaga.policy.base import Action, EvictionPolicy
from kvsaga.policy.cost import CostModel, PrefillCost
from kvsaga.policy.ghost_list import PyGhostList, make_ghost_list
from kvsaga.policy.groups import GroupedPolicy
from kvsaga.policy.shadow import ShadowCache
from kvsaga.pool import all_or_nothing, per_block

log = logging.getLogger("kvsaga.policy")

DEFAULT_EXPERTS = ("graph", "ttl")  # picked by `bench/policies.py --tune` (fourteenth session)


def _as_bool(what: str, x) -> bool:
    """`x` as a bool, for a flag that may come from JSON policy_args: "false" is not true."""
    if isinstance(x, bool):
        return x
    if isinstance(x, int) and x in (0, 1):
        return bool(x)
    if isinstance(x, str) and x.strip().lower() in ("true", "false", "1", "0"):
        return x.strip().lower() in ("true", "1")
    raise ValueError(f"{what} must be a bool (true/false), got {x!r}")


def _fan_out_undone(calls: list, undos: list) -> Callable[[object], None]:
    """One call that makes each of `calls` with the same argument (the pool's calls to
    every member that tracks blocks), all or nothing (`PoolObserver`: a raising pool hook
    has changed nothing): when `calls[j]` raises, `undos[0..j-1]` (each the opposite hook
    of its call) take back what the calls before it did, last first, and the error
    propagates (an undo that raises too stops and adds a note). Undoing a call that
    uncached blocks caches them again: a recency order (lru's, the grouped experts' plain
    queue) then has them at its newest end, not where they were (an ended session's dead
    block comes back as plain cache), so the eviction order after the failed call can
    differ; no block is lost or told twice, and undoing a `blocks_cached` is exact (review
    s50 hooks, item 3: an exact undo of an uncaching needs a queue that relinks a block
    where it was, in both cores). One call is itself, with nothing around it."""
    if len(calls) == 1:
        return calls[0]

    members = range(len(calls))

    def call(arg) -> None:
        all_or_nothing(members, lambda j: calls[j](arg), lambda j: undos[j](arg),
                       lambda j: "a member policy's pool call")
    return call


def _batched(policy: EvictionPolicy, one: str) -> Callable[[list[int]], None]:
    """The policy's batch form of `one` (`blocks_...`), or `one` called per block."""
    many = getattr(policy, one.replace("block_", "blocks_"), None)
    if many is not None:
        return many
    f = getattr(policy, one)
    undo = getattr(policy, "block_uncached" if one == "block_cached" else "block_cached")
    return per_block(f, undo)  # all or nothing, as the pool's own fallback


_POOL_CALLS = ("block_cached", "blocks_cached", "block_uncached", "blocks_uncached")


def _tracks_groups(policy: EvictionPolicy) -> bool:
    """Whether `policy` keeps the grouped policies' block tracking as it is (groups.py), so
    that one copy of it can serve several experts (`share_blocks`): a subclass that keeps
    its own per-block state in the pool's calls (belady) does not share."""
    return isinstance(policy, GroupedPolicy) and all(
        getattr(type(policy), f) is getattr(GroupedPolicy, f) for f in _POOL_CALLS)


class _Expert:
    """One ranking and what it is charged."""

    __slots__ = ("name", "policy", "runs", "ghost", "charged", "named")

    def __init__(self, name: str, policy: EvictionPolicy) -> None:
        self.name = name
        self.policy = policy
        # its last search's runs (`victim_runs`), None for a policy without them: read once
        # here, not by a `getattr` call at every search (`_expect`)
        self.runs = getattr(policy, "victim_runs", None)
        self.ghost = PyGhostList(1)  # hash -> rebuild seconds; bind sizes it
        self.charged = 0.0  # decayed rebuild seconds its names caused
        # decayed blocks named, or (`realized`) prompt blocks read while it led
        self.named = 0.0


class AdaptivePolicy(EvictionPolicy):
    """Evicts by the expert ranking with the least ghost regret (module docstring).

    Args:
        cost: prices rebuilding (default: `PrefillCost`), shared by every expert.
        experts: names of the expert policies (online ones from `POLICIES`), a list or a
            tuple; the first leads until data says otherwise.
        ghost_factor: each ghost list holds this many pool sizes of names.
        memory_blocks: decay scale of the scores, in pool sizes of names.
        prior_blocks: pseudo-names (at the pooled score) each expert's score starts from.
        switch_margin: share of the pooled score by which a challenger must beat the leader.
        shadow_share: a shadow expert names this share of the victims asked for (at least
            one) at each search: the ghost evidence accrues more slowly, and a search costs
            the leader's plus that share of each shadow's naming.
        realized: score by what happened while each expert led (experts lead in turns;
            rebuilds per block read), not by ghost lists of every expert's names (module
            docstring).
        epoch_pools: with `realized`, how many pool sizes of victims one leadership lasts.
        shadow_cache: judge experts by shadow caches of their own (module docstring);
            overrides `realized` and the ghost lists (none are allocated). A bool, or
            "true"/"false"/1/0 as JSON policy_args give it (as is `realized`).
        shadow_memory: with `shadow_cache`, the decay scale of the shadows' rebuild seconds,
            in pool sizes of prompt blocks read.
    """

    name = "adaptive"
    # The grouped experts share one block tracking (`bind`); False: each keeps its own (the
    # reference tests/policy/test_adaptive.py compares with: the same victims).
    share_tracking = True

    def __init__(
        self,
        cost: CostModel | None = None,
        experts: tuple[str, ...] = DEFAULT_EXPERTS,
        ghost_factor: float = 8.0,
        memory_blocks: float = 32.0,
        prior_blocks: float = 2.0,
        switch_margin: float = 0.1,
        shadow_share: float = 0.125,
        realized: bool = True,
        epoch_pools: float = 1.0,
        shadow_cache: bool = True,
        shadow_memory: float = 8.0,
    ) -> None:
        super().__init__()
        from kvsaga.policy import POLICIES, make_policy  # the registry imports this module

        realized = _as_bool("realized", realized)
        shadow_cache = _as_bool("shadow_cache", shadow_cache)
        if not isinstance(experts, (list, tuple)):  # one name would be split into letters
            raise ValueError(f"experts must be a list of policy names, got {experts!r}")
        if not experts:
            raise ValueError("experts must name at least one policy")
        online = sorted(n for n, c in POLICIES.items()
                        if not getattr(c, "needs_oracle", False) and c is not AdaptivePolicy)
        for e in experts:
            if e not in online:
                raise ValueError(f"expert {e!r} is not an online policy; choose from {online}")
        if len(set(experts)) != len(experts):
            raise ValueError(f"experts must be distinct, got {experts!r}")
        # (an infinite one broke at `bind`, an int of an infinite ghost list or epoch, or
        # made the scores NaN)
        for what, x in (("ghost_factor", ghost_factor), ("memory_blocks", memory_blocks),
                        ("prior_blocks", prior_blocks), ("epoch_pools", epoch_pools),
                        ("shadow_memory", shadow_memory)):
            check_number(what, x, lambda v: v > 0, "> 0")
        check_number("switch_margin", switch_margin, lambda v: v >= 0, ">= 0")
        check_number("shadow_share", shadow_share, lambda v: 0 < v <= 1, "in (0, 1]")
        self.cost: CostModel = cost if cost is not None else PrefillCost()
        self.experts = [_Expert(e, make_policy(e, cost=self.cost)) for e in experts]
        self.leader = self.experts[0]
        self.ghost_factor = ghost_factor
        self.memory_blocks = memory_blocks
        self.prior_blocks = prior_blocks
        self.switch_margin = switch_margin
        self.shadow_share = shadow_share
        self.realized = realized
        self.epoch_pools = epoch_pools
        self.shadow_cache = shadow_cache
        self.shadow_memory = shadow_memory
        self._shadows: list[ShadowCache] = []
        self._turns = 1  # epochs led so far, while the experts take their first turns
        self._block_costs: list[float] = []

    def bind(self, view) -> None:
        super().bind(view)
        self._ghost_cap = max(int(self.ghost_factor * view.num_gpu_blocks), 1)
        self._decay_scale = self.memory_blocks * view.num_gpu_blocks
        self._prior = self.prior_blocks * view.num_gpu_blocks
        self._epoch = max(self.epoch_pools * view.num_gpu_blocks, 1.0)
        self._epoch_left = self._epoch
        cpp = getattr(getattr(view, "core", None), "name", "") == "cpp"
        # Room for the names of one leadership at once (realized: an epoch's victims; else
        # a pool's worth): a list filled name by name rehashed its table at every doubling,
        # each rehash landing inside one victim search.
        room = int(self._epoch) if self.realized else view.num_gpu_blocks
        for e in self.experts:
            e.policy.bind(view)
            if not self.shadow_cache:  # shadows are the evidence: no ghost list to fill
                e.ghost = make_ghost_list(self._ghost_cap, cpp, room)  # C++ on the C++ core
        if self.shadow_cache:  # each expert's own cache, ranked by a second instance of it
            from kvsaga.policy import make_policy  # the registry imports this module
            self._shadows = [
                ShadowCache(make_policy(e.name, cost=self.cost), view.num_gpu_blocks,
                            view.block_size, self.block_costs, getattr(view, "core", None))
                for e in self.experts]
            self._shadow_scale = self.shadow_memory * view.num_gpu_blocks
        # The grouped experts (graph, ttl, saga) track the same blocks in the same groups:
        # the first keeps them for all (`share_blocks`, groups.py), so a victim leaves one
        # set of groups, not one per expert; their keys and indexes stay their own.
        pols = [e.policy for e in self.experts]
        grouped = [p for p in pols if _tracks_groups(p)] if self.share_tracking else []
        if len(grouped) > 1:
            grouped[0].share_blocks(grouped[1:])
            pols = [p for p in pols if p not in grouped[1:]]
        # The pool's calls go to every expert that tracks blocks, batched where it batches.
        self._followers = [p for p in pols if hasattr(p, "expect_runs")]
        # All or nothing: a member that raises has the members before it undo theirs.
        cached, uncached = [p.block_cached for p in pols], [p.block_uncached for p in pols]
        self.block_cached = _fan_out_undone(cached, uncached)
        self.block_uncached = _fan_out_undone(uncached, cached)
        cached = [_batched(p, "block_cached") for p in pols]
        uncached = [_batched(p, "block_uncached") for p in pols]
        self.blocks_cached = _fan_out_undone(cached, uncached)
        self.blocks_uncached = _fan_out_undone(uncached, cached)

    # -- scores ---------------------------------------------------------------------------
    def scores(self) -> dict[str, float]:
        """Each expert's shrunk regret: rebuild seconds per named block (lower is better);
        with `shadow_cache`, the decayed rebuild seconds of its shadow."""
        if self.shadow_cache:
            return {e.name: e.charged for e in self.experts}
        named = sum(e.named for e in self.experts)
        pooled = sum(e.charged for e in self.experts) / named if named > 0 else 0.0
        k = self._prior
        return {e.name: (e.charged + k * pooled) / (e.named + k) for e in self.experts}

    def _elect(self) -> None:
        if self.shadow_cache:  # hysteresis: the leader changes when beaten by switch_margin
            if not self._shadows:  # dropped after a failure (`_on_shadows`): keep the leader
                return
            # min(experts, key=charged), without the builtin's generic call and a lambda
            # frame per expert (run at every search): the first of the least, as min() gives
            experts = self.experts
            best = experts[0]
            for e in experts:
                if e.charged < best.charged:
                    best = e
            if best.charged < (1.0 - self.switch_margin) * self.leader.charged:
                self.leader = best
            return
        s = self.scores()
        named = sum(e.named for e in self.experts)
        pooled = sum(e.charged for e in self.experts) / named if named > 0 else 0.0
        best = min(self.experts, key=lambda e: s[e.name])
        if s[best.name] < s[self.leader.name] - self.switch_margin * pooled:
            self.leader = best

    def block_cost(self, position: int) -> float:
        """Seconds to rebuild the block at `position` behind its surviving head."""
        memo = self._block_costs
        if position >= len(memo):
            bs = self.view.block_size
            memo.extend(self.cost.recompute_s(bs, p * bs) for p in range(len(memo), position + 1))
        return memo[position]

    def block_costs(self, lo: int, hi: int) -> list[float]:
        """`block_cost` of positions lo..hi-1 (hi > lo >= 0), in order: a shadow's charge
        sums them (the same floats, added in the same order, as a call per position)."""
        if hi > len(self._block_costs):
            self.block_cost(hi - 1)
        return self._block_costs[lo:hi]

    # -- victims --------------------------------------------------------------------------
    def choose_victims(self, num_blocks: int, now: float) -> list[int]:
        if num_blocks <= 0:
            return []
        if self.shadow_cache:
            return self._follow(num_blocks, now)
        if self.realized:
            return self._lead(num_blocks, now)
        self._elect()
        shadow_n = max(1, math.ceil(self.shadow_share * num_blocks))
        out: list[int] = []
        for e in self.experts:
            if e is self.leader:
                out = self._name(e, num_blocks, now, shadow=False)
            else:
                self._name(e, shadow_n, now, shadow=True)
        return out

    def _lead(self, num_blocks: int, now: float) -> list[int]:
        """`realized`: the leader names every victim; at the end of its epoch the
        next expert in turn leads (first round), then the one with the lowest score."""
        if self._epoch_left <= 0:
            self._epoch_left = self._epoch
            if self._turns < len(self.experts):
                self.leader = self.experts[self._turns]
                self._turns += 1
            else:
                self._elect()
        out = self._name(self.leader, num_blocks, now, shadow=False)
        self._epoch_left -= len(out)
        self._expect(out)
        return out

    def _follow(self, num_blocks: int, now: float) -> list[int]:
        """`shadow_cache`: the expert whose shadow cache rebuilt least leads; it names every
        victim (no ghosts: the shadows are the evidence)."""
        self._elect()
        out = self.leader.policy.choose_victims(num_blocks, now)
        self._expect(out)
        return out

    def _expect(self, out: list[int]) -> None:
        """Tell the experts that did not search how the leader's victims leave."""
        # The other experts see these victims leave as runs of session tails, as the
        # leader does: they take the runs from its search, not from each victim's marks.
        runs = self.leader.runs
        plan = runs() if runs is not None else None
        for p in self._followers:
            if p is not self.leader.policy:
                p.expect_runs(plan)

    def _name(self, e: _Expert, n: int, now: float, shadow: bool) -> list[int]:
        """The expert's `n` victims, entered in its ghost list. A shadow expert skips the
        blocks it already named (it would have evicted them): when its first `n` hold some,
        it takes the rest from its first 4n (no more, so a search stays O(n)).
        The ghost list reads the victims' hashes, positions and rebuild costs off the
        view's tables itself, in one call (kvsaga/policy/ghost_list.py; O(1) per victim)."""
        ghost = e.ghost
        chosen = self._shadow_names(e, n, now) if shadow else e.policy.choose_victims(n, now)
        # Each full block's hash enters with its rebuild cost unless it is a ghost already
        # (the first name stays); the oldest names, not needed for a pool turnover (good
        # names), fall out.
        v = self.view
        new = ghost.enter_blocks(chosen, v.block_hash, v.block_position, self._block_costs)
        if new < 0:  # a position past the memo of costs: extend it, enter again
            self.block_cost(-1 - new)
            new = ghost.enter_blocks(chosen, v.block_hash, v.block_position, self._block_costs)
        if new:
            d = math.exp(-new / self._decay_scale)
            for x in self.experts:
                x.charged *= d
                x.named *= d
            if not self.realized:
                e.named += new
        return chosen

    def _shadow_names(self, e: _Expert, n: int, now: float) -> list[int]:
        """A shadow expert's `n` names: its first victims that are not ghosts already,
        from its first 4n at most."""
        hashes, ghost = self.view.block_hash, e.ghost
        want = n
        victims: list[int] = []
        keep: list[bool] = []
        while True:
            seen = victims
            victims = e.policy.choose_victims(want, now)
            if victims[:len(seen)] != seen:  # not an extension of the last answer: redo
                keep = []
            more = list(map(hashes.__getitem__, victims[len(keep):]))
            keep += map(not_, map(ghost.__contains__, more))  # None is never a ghost
            chosen = list(compress(victims, keep))
            if len(chosen) >= n or len(victims) < want or want >= 4 * n:
                return chosen[:n]
            # A ranking's first `want` victims begin its first 4n: one more search, at most.
            want = 4 * n

    def action(self, block_id: int, now: float) -> Action:
        return self.leader.policy.action(block_id, now)

    @property
    def graph(self):
        """The leader's Agent Execution Graph (None under `lru`): the workflow scheduler
        predicts working sets from the policy's `graph`, so while an expert leads,
        admission is the one that expert has when it runs alone. Without it every expert
        ran under graph-less admission inside `adaptive` and was not the policy it was
        judged as (`saga` inside adaptive recomputed 1.34x saga's tokens alone on
        swe-slow seed 202 at 30%)."""
        return getattr(self.leader.policy, "graph", None)

    # -- hooks: every expert learns; prompts charge the ghosts ------------------------------
    def _on_shadows(self, call: Callable[[ShadowCache], None]) -> None:
        """`call` on each shadow, after the real experts had the hook. The shadows are
        evidence only: one that raises must not break the real cache, so the error is
        logged (once: the shadows are dropped with it) and the current leader stays."""
        if not self._shadows:
            return
        try:
            for sh in self._shadows:
                call(sh)
        except Exception:
            log.exception("adaptive: a shadow cache failed; shadows dropped, %r keeps the lead",
                          self.leader.name)
            self._shadows = []

    def step_started(self, session, now: float) -> None:
        if self.shadow_cache:
            for e in self.experts:
                e.policy.step_started(session, now)
            d = math.exp(-len(session.block_hashes) / self._shadow_scale)
            charged = []
            self._on_shadows(lambda sh: charged.append(sh.step_started(session, now)))
            if self._shadows:  # every shadow answered: the scores move together
                for e, c in zip(self.experts, charged, strict=True):
                    e.charged = e.charged * d + c
            return
        if self.realized:
            self.leader.named += len(session.block_hashes)
        for e in self.experts:
            if e.ghost:
                e.charged = e.ghost.charge(e.charged, session.block_hashes)
            e.policy.step_started(session, now)

    def step_finished(self, session, now: float, hint) -> None:
        for e in self.experts:
            e.policy.step_finished(session, now, hint)
        self._on_shadows(lambda sh: sh.step_finished(session, now, hint))

    def session_deferred(self, session, deferred: bool, now: float) -> None:
        for e in self.experts:
            e.policy.session_deferred(session, deferred, now)
        self._on_shadows(lambda sh: sh.policy.session_deferred(sh.seen(session), deferred, now))

    def pause_hinted(self, session, now: float, hint) -> None:
        for e in self.experts:
            e.policy.pause_hinted(session, now, hint)
        self._on_shadows(lambda sh: sh.policy.pause_hinted(sh.seen(session), now, hint))

    def resume_hinted(self, session, now: float) -> None:
        for e in self.experts:
            e.policy.resume_hinted(session, now)
        self._on_shadows(lambda sh: sh.policy.resume_hinted(sh.seen(session), now))

    def resume_withdrawn(self, session, now: float) -> None:
        for e in self.experts:
            e.policy.resume_withdrawn(session, now)
        self._on_shadows(lambda sh: sh.resume_withdrawn(session, now))

    def session_ended(self, session, now: float) -> None:
        for e in self.experts:
            e.policy.session_ended(session, now)
        self._on_shadows(lambda sh: sh.session_ended(session, now))

    def blocks_disowned(self, session, block_ids: list[int], now: float) -> None:
        # (each shadow disowns its own, by the manager's rule, at its `step_finished`; a
        # preempt's, which it learns of only at the retry, here)
        for e in self.experts:
            e.policy.blocks_disowned(session, block_ids, now)
        self._on_shadows(lambda sh: sh.blocks_disowned(session, now))

    def session_forgotten(self, session, now: float) -> None:
        for e in self.experts:
            e.policy.session_forgotten(session, now)
        self._on_shadows(lambda sh: sh.session_forgotten(session, now))

    def tick(self, now: float) -> None:
        for e in self.experts:
            e.policy.tick(now)
        self._on_shadows(lambda sh: sh.policy.tick(now))

    def prefetch_candidates(self, now: float) -> list[str]:
        return self.leader.policy.prefetch_candidates(now)

    def check_integrity(self) -> None:
        """Each expert's own integrity check, where it has one, and each shadow's."""
        for p in [e.policy for e in self.experts]:
            check = getattr(p, "check_integrity", None)
            if check is not None:
                check()
        for sh in self._shadows:
            sh.check_integrity()
