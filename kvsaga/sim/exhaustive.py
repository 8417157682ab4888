"""The true offline optimum of a tiny trace, by exhaustive search over eviction choices.

Belady's rule is optimal for independent, equal-cost pages; KV blocks are neither (a block is
useless without its prefix, rebuilding costs grow with position, and what is evicted changes
when steps run, hence what is evicted next). The only exact reference is to try every choice:
at each eviction decision the manager asks its policy for `n` victims among the `k` CACHED
blocks, and the search follows each of the C(k, n) answers in turn.

The search replays the simulation from the start for every branch (the manager cannot be
copied cheaply), driving a `ScriptedPolicy` that answers from a script of choice indices and
records how many answers each decision had. Depth first, with branch and bound: recomputed
tokens only grow, so a run is cut at the first decision where it already recomputed as many
tokens as the best complete run. The optimum is over eviction choices under the simulator's
scheduler (admission, preemption and timing follow from the choices). Under `fcfs` every
policy is one point of that space, so no policy can beat it.

The `workflow` scheduler also reads the policy's execution graph (`Scheduler._graph`: its
admission order, demotions and working-set gate predict from it) and prices swaps and churn
by the policy's `cost`; the plain search's `ScriptedPolicy` keeps no graph, so a policy that
keeps one (ttl, saga, graph, adaptive, oracle-ttl) runs under admissions that search never
explores, and there the plain optimum bounds only a graph-less policy priced as the search is
(`ScriptedPolicy(cost=config.cost)`: belady; lru takes no cost model, so the schedulers
price its runs with the default `PrefillCost`). `exhaustive_optimum(..., fed=P)` closes the
gap for P: each run's `ScriptedPolicy` wraps a fresh instance of P (`inner`) and hands it
every hook the manager and the scheduler send (pool observer calls, the session lifecycle,
the scheduler's demotion, rank and room tells, ticks), so the inner graph learns on each
branch exactly what P's would on a run that made that branch's choices; the scheduler reads
the inner's `graph` and `cost`, and only `choose_victims` answers from the script. The graph
does depend on the choices (they move step starts, admission waits and hence the pauses it
learns), but only through those hooks, never through `choose_victims` (no policy's graph
learns there), so on the branch whose choices are P's own every hook, hence every graph
state and admission, is P's: P's run is one point of the fed search's space, and the fed
optimum is a true lower bound on P's recomputation under any scheduler. One caveat:
`adaptive`'s `graph` is its leader's, and it elects leaders inside `choose_victims`, which
the fed search never calls (it keeps the first leader's graph). Its default experts' graphs
(graph's and ttl's) are built alike and learn the same hooks, so they hold the same state
whichever leads; with experts whose graphs differ (saga's has its own prior) the fed search
bounds adaptive only while it keeps its first leader. (The script evicts in id order where
P may not; that moves which ids later blocks get, which nothing above reads.) Discard only:
no host tier.

Cost: exponential; meant for 2-3 sessions of 2-3 steps (`random_tiny_trace`), 3 of 3
(`random_wait_trace`), and a pool of a few blocks.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from kvsaga.policy import POLICIES
from kvsaga.policy.base import Action, EvictionPolicy
from kvsaga.sim.cost import PRESETS, StepCostModel
from kvsaga.sim.oracle import TraceOracle
from kvsaga.sim.simulator import SimConfig, Simulator
from kvsaga.sim.tokens import TokenSynthesizer
from kvsaga.sim.trace import Session, SharedPrefix, Step

# Blocks of 4 tokens keep a trace of a few blocks meaningful.
TINY = dataclasses.replace(PRESETS["a100-llama3-8b"], name="tiny-bs4", block_size=4)


class _Pruned(Exception):
    """This run can no longer beat the best one."""


class ScriptedPolicy(EvictionPolicy):
    """Chooses victims by a script of indices into the sorted list of victim sets.

    Decision d (the d-th `choose_victims` call) takes option `script[d]`, or option 0 past
    the end of the script. `branching[d]` records how many options decision d had.

    Args:
        script: the choice index of each decision, in order.
        bound: stop the run (raise `_Pruned`) at a decision reached with at least this many
            recomputed tokens.
        cost: the run's cost model, read as `manager.policy.cost` by the schedulers that
            price swaps and churn (swap_pricing, working_set_gate); None prices them with
            the default `PrefillCost`, as for a policy that takes no cost model (lru).
            Ignored with `inner` (its own `cost` is read).
        inner: a fresh policy whose execution graph the scheduler reads in its place: every
            hook but `choose_victims`, `action` and `prefetch_candidates` (no host tier
            here) reaches it too (see the module docstring; tests/sim/
            test_scripted_hooks.py checks each of `EvictionPolicy`'s), and its `graph`,
            `cost` and trace oracle are this policy's.
    """

    name = "scripted"

    def __init__(self, script: Sequence[int], bound: float = math.inf,
                 cost: StepCostModel | None = None,
                 inner: EvictionPolicy | None = None) -> None:
        super().__init__()
        self.script = list(script)
        self.bound = bound
        self.inner = inner
        self.cost = cost if inner is None else getattr(inner, "cost", None)
        self.taken: list[int] = []
        self.branching: list[int] = []
        self.cached: set[int] = set()
        self.simulator: Simulator | None = None
        if inner is not None:
            self._feed(inner)

    def _feed(self, inner: EvictionPolicy) -> None:
        """Hand `inner` what the manager, the pool and the scheduler tell this policy. The
        room tells are the inner's own bound methods: the scheduler measures and sends them
        only to a policy that overrides them, which this one then does exactly when the
        inner does. A simulator drives the inner's trace oracle (an offline policy's)
        where it finds it, on this policy."""
        self.oracle = getattr(inner, "oracle", None)
        self.session_admission_room = inner.session_admission_room
        self.session_paused_room = inner.session_paused_room

    @property
    def graph(self):
        """The inner policy's Agent Execution Graph (`Scheduler._graph` reads it); None
        without one."""
        return getattr(self.inner, "graph", None)

    def bind(self, view) -> None:
        super().bind(view)
        if self.inner is not None:
            self.inner.bind(view)

    def block_cached(self, block_id: int) -> None:
        self.cached.add(block_id)
        if self.inner is not None:
            self.inner.block_cached(block_id)

    def block_uncached(self, block_id: int) -> None:
        self.cached.discard(block_id)
        if self.inner is not None:
            self.inner.block_uncached(block_id)

    def choose_victims(self, num_blocks: int, now: float) -> list[int]:
        sim = self.simulator
        if sim is not None and sim.recomputed_so_far >= self.bound:
            raise _Pruned
        options = list(combinations(sorted(self.cached), num_blocks))
        d = len(self.taken)
        choice = self.script[d] if d < len(self.script) else 0
        self.taken.append(choice)
        self.branching.append(len(options))
        return list(options[choice])

    def action(self, block_id: int, now: float) -> Action:
        return Action.DISCARD

    # -- the hooks, handed on to the inner policy -----------------------------------------
    def step_started(self, session, now: float) -> None:
        if self.inner is not None:
            self.inner.step_started(session, now)

    def step_finished(self, session, now: float, hint) -> None:
        if self.inner is not None:
            self.inner.step_finished(session, now, hint)

    def pause_hinted(self, session, now: float, hint) -> None:
        if self.inner is not None:
            self.inner.pause_hinted(session, now, hint)

    def resume_hinted(self, session, now: float) -> None:
        if self.inner is not None:
            self.inner.resume_hinted(session, now)

    def resume_withdrawn(self, session, now: float) -> None:
        if self.inner is not None:
            self.inner.resume_withdrawn(session, now)

    def session_ended(self, session, now: float) -> None:
        if self.inner is not None:
            self.inner.session_ended(session, now)

    def blocks_disowned(self, session, block_ids: list[int], now: float) -> None:
        if self.inner is not None:
            self.inner.blocks_disowned(session, block_ids, now)

    def session_forgotten(self, session, now: float) -> None:
        if self.inner is not None:
            self.inner.session_forgotten(session, now)

    def session_deferred(self, session, deferred: bool, now: float) -> None:
        if self.inner is not None:
            self.inner.session_deferred(session, deferred, now)

    def session_admission_rank(self, session, rank: int | None, now: float) -> None:
        if self.inner is not None:
            self.inner.session_admission_rank(session, rank, now)

    def tick(self, now: float) -> None:
        """Every tick reaches the inner policy (none coalesced: a policy that coalesces
        ticks declares the state of the last equal to that of all of them)."""
        if self.inner is not None:
            self.inner.tick(now)


def fed_policy(name: str, sessions: Sequence[Session], config: SimConfig) -> EvictionPolicy:
    """A fresh `name` policy as the simulator builds it for `config` (priced with its cost
    model where it takes one; an offline policy with its own `TraceOracle`), to feed a
    search (`ScriptedPolicy(inner=...)`)."""
    cls = POLICIES.get(name)
    if cls is None:
        raise ValueError(f"fed_policy: unknown policy {name!r}; choose from {sorted(POLICIES)}")
    if getattr(cls, "needs_oracle", False):
        oracle = TraceOracle(sessions, config.cost.kv_spec.block_size, TokenSynthesizer())
        return cls(oracle=oracle, cost=config.cost)
    if "cost" in inspect.signature(cls).parameters:
        return cls(cost=config.cost)
    return cls()


@dataclass(frozen=True)
class Optimum:
    """The result of `exhaustive_optimum`.

    Attributes:
        recomputed_tokens: the least recomputed prompt tokens any eviction choices give.
        script: the choices that reach it (replay with `ScriptedPolicy(script,
            cost=config.cost)`, or fed: `ScriptedPolicy(script, inner=fed_policy(...))`).
        num_runs: simulations run (complete or pruned).
        num_decisions: eviction decisions along the optimal run.
    """

    recomputed_tokens: int
    script: tuple[int, ...]
    num_runs: int
    num_decisions: int


def exhaustive_optimum(sessions: Sequence[Session], config: SimConfig,
                       max_runs: int = 200_000, fed: str | None = None,
                       below: float = math.inf) -> Optimum | None:
    """Search every sequence of eviction choices for the least recomputation.

    Args:
        sessions: a tiny trace.
        config: capacity and preset (its policy and host tier are ignored: the search
            chooses every victim, and discards them).
        max_runs: give up (RuntimeError) after this many simulations.
        fed: a policy name: every run's scheduler reads the graph and cost of a fresh
            instance of it fed the run's hooks (`fed_policy`), so the optimum bounds that
            policy's own runs (module docstring); None: a policy with no graph, priced
            with `config.cost`.
        below: search only for runs recomputing fewer tokens than this (the bound starts
            there): a known run's figure + 1 finds the optimum if it is at most that run's,
            pruning from the first decision, and None says that run beat the search.

    Returns:
        The optimum and how it was found; None when no run recomputes less than `below`.
    """
    best, best_script, best_depth = below, None, 0
    stack: list[list[int]] = [[]]
    runs = 0
    while stack:
        runs += 1
        if runs > max_runs:
            raise RuntimeError(f"exhaustive search exceeded {max_runs} runs; shrink the trace")
        script = stack.pop()
        inner = fed_policy(fed, sessions, config) if fed is not None else None
        policy = ScriptedPolicy(script, bound=best, cost=config.cost, inner=inner)
        sim = Simulator(sessions, config, policy=policy)
        policy.simulator = sim
        try:
            r = sim.run()
        except _Pruned:
            pass
        else:
            if r.recomputed_tokens < best:
                best, best_script = r.recomputed_tokens, tuple(policy.taken)
                best_depth = len(policy.taken)
        # Siblings of every decision this run made beyond its script; a pruned run made
        # none at the decision where it stopped, so nothing below it is queued.
        for d in range(len(script), len(policy.taken)):
            for alt in range(1, policy.branching[d]):
                stack.append(policy.taken[:d] + [alt])
    if best_script is None:
        return None
    return Optimum(int(best), best_script, runs, best_depth)


def tiny_session(sid: str, arrival: float, steps: list[Step], prefix: int = 8) -> Session:
    """One session of a tiny trace (workflow "t", shared prefix "sys" of 8 tokens, or
    "sys-<n>" of another length n: the sessions of a group share its prefix exactly, and
    the simulator refuses one group with two lengths)."""
    group = "sys" if prefix == 8 else f"sys-{prefix}"
    return Session(id=sid, workflow="t", arrival_s=arrival,
                   shared_prefix=SharedPrefix(group, prefix), steps=tuple(steps))


def random_tiny_trace(seed: int) -> list[Session]:
    """2-3 sessions of 2-3 steps, a few 4-token blocks each: small enough to search
    exhaustively (with `TINY`), random enough that policies disagree."""
    rng = random.Random(seed)
    out = []
    for i in range(rng.choice([2, 3])):
        steps = [Step(rng.randint(1, 6), rng.randint(1, 3), "t", rng.choice([0.01, 0.1, 1.0]))
                 for _ in range(rng.choice([2, 3]) - 1)]
        steps.append(Step(rng.randint(1, 4), 1))
        out.append(tiny_session(f"s{i}", rng.uniform(0, 0.05), steps,
                                prefix=rng.choice([4, 8])))
    return out


def random_wait_trace(seed: int) -> list[Session]:
    """3 sessions of 3 steps whose tool pauses (0.01, 0.5 or 3 s) are long against their
    steps (milliseconds with `TINY`), arriving together: at capacities near their working
    sets the `workflow` scheduler demotes paused sessions and queues steps, which
    `random_tiny_trace` rarely makes it do; still small enough to search (a few thousand
    runs at most on bench/policies_reference.py's seeds)."""
    rng = random.Random(seed)
    out = []
    for i in range(3):
        steps = [Step(rng.randint(2, 5), rng.randint(1, 2), "t", rng.choice([0.01, 0.5, 3.0]))
                 for _ in range(2)]
        steps.append(Step(rng.randint(1, 3), 1))
        out.append(tiny_session(f"s{i}", rng.uniform(0, 0.02), steps, prefix=4))
    return out
