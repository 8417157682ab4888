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
policy is one point of that space, so no policy can beat it. The `workflow` scheduler also
reads the policy's execution graph (`Scheduler._graph`), which `ScriptedPolicy` lacks: a
policy that keeps one (ttl, saga, graph, oracle-ttl) runs under admission decisions this
search never explores, so there the optimum bounds exactly only a graph-less policy priced
by the run's cost model, as the search is (`ScriptedPolicy(cost=config.cost)`: belady; lru
takes no cost model, so the schedulers that price swaps and churn by the policy's
`cost` price its runs with the default `PrefillCost`); for the others it is a measured
reference (bench/policies.py --reference counts the cases below it). Discard only: no
host tier.

Cost: exponential; meant for 2-3 sessions of 2-3 steps and a pool of a few blocks.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations

from kvsaga.policy.base import Action, EvictionPolicy
from kvsaga.sim.cost import PRESETS, StepCostModel
from kvsaga.sim.simulator import SimConfig, Simulator
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
    """

    name = "scripted"

    def __init__(self, script: Sequence[int], bound: float = math.inf,
                 cost: StepCostModel | None = None) -> None:
        super().__init__()
        self.script = list(script)
        self.bound = bound
        self.cost = cost
        self.taken: list[int] = []
        self.branching: list[int] = []
        self.cached: set[int] = set()
        self.simulator: Simulator | None = None

    def block_cached(self, block_id: int) -> None:
        self.cached.add(block_id)

    def block_uncached(self, block_id: int) -> None:
        self.cached.discard(block_id)

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


@dataclass(frozen=True)
class Optimum:
    """The result of `exhaustive_optimum`.

    Attributes:
        recomputed_tokens: the least recomputed prompt tokens any eviction choices give.
        script: the choices that reach it (replay with `ScriptedPolicy(script,
            cost=config.cost)`).
        num_runs: simulations run (complete or pruned).
        num_decisions: eviction decisions along the optimal run.
    """

    recomputed_tokens: int
    script: tuple[int, ...]
    num_runs: int
    num_decisions: int


def exhaustive_optimum(sessions: Sequence[Session], config: SimConfig,
                       max_runs: int = 200_000) -> Optimum:
    """Search every sequence of eviction choices for the least recomputation.

    Args:
        sessions: a tiny trace.
        config: capacity and preset (its policy and host tier are ignored: the search
            chooses every victim, and discards them).
        max_runs: give up (RuntimeError) after this many simulations.

    Returns:
        The optimum and how it was found.
    """
    best, best_script, best_depth = math.inf, (), 0
    stack: list[list[int]] = [[]]
    runs = 0
    while stack:
        runs += 1
        if runs > max_runs:
            raise RuntimeError(f"exhaustive search exceeded {max_runs} runs; shrink the trace")
        script = stack.pop()
        policy = ScriptedPolicy(script, bound=best, cost=config.cost)
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
